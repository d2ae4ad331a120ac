"""ResNet-20 on CIFAR-10, He et al. 2015 section 4.2.

    python launch.py --config experiments/resnet20_cifar10.py

SGD with momentum 0.9, learning rate 0.1, weight decay 1e-4, batch 128, 164 epochs
(64k iterations) with the rate divided by 10 at epochs 82 and 123 (32k and 48k
iterations); 4-pixel zero padding + random 32x32 crops and horizontal flips.
Expected: 91.25% test accuracy (the paper's 8.75% error); not measured on the
development machine, which cannot download CIFAR-10. The train step runs at about
176 images/s on a 2-core CPU (benchmarks/RESULTS.md): about 5 minutes per epoch.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet20"
    c.dataset.name = "cifar10"
    c.dataset.crop_padding = 4
    c.dataset.flip = True
    c.batch_size = 128
    c.num_epochs = 164
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.optimizer.weight_decay_mode = "l2"
    c.schedule.name = "step"
    c.schedule.milestones = (82, 123)
    c.schedule.decay_factor = 0.1
    c.checkpoint_every_steps = 1000
    return c
