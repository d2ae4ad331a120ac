"""ResNet-56 on CIFAR-10, He et al. 2015 section 4.2: the ResNet-20 recipe at depth 56.

    python launch.py --config experiments/resnet56_cifar10.py

Expected: 93.03% test accuracy (the paper's 6.97% error); not measured on the
development machine, which cannot download CIFAR-10.
"""

from experiments import resnet20_cifar10


def get_config():
    c = resnet20_cifar10.get_config()
    c.model.name = "resnet56"
    return c
