"""DenseNet-BC (L=100, k=12) on CIFAR-10, Huang et al. 2016.

    python launch.py --config experiments/densenet_bc_cifar10.py

SGD with Nesterov momentum 0.9, learning rate 0.1 divided by 10 at 50% and 75% of
300 epochs, weight decay 1e-4, batch 64, crop + flip. Expected: 95.49% test accuracy
(the paper's 4.51% error with augmentation); not measured on the development machine,
which cannot download CIFAR-10.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "densenet_bc_100_12"
    c.dataset.name = "cifar10"
    c.dataset.crop_padding = 4
    c.dataset.flip = True
    c.batch_size = 64
    c.num_epochs = 300
    c.optimizer.name = "nesterov"
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "step"
    c.schedule.milestones = (150, 225)
    c.checkpoint_every_steps = 2000
    return c
