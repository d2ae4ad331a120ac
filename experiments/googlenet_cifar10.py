"""GoogLeNet (torchvision's Inception v1, with its auxiliary classifiers) on CIFAR-10, upscaled to 96x96.

    python launch.py --config experiments/googlenet_cifar10.py

The ImageNet stem divides the input by 32, so CIFAR's 32x32 images are resized to
96x96 (a 3x3 final map). SGD momentum 0.9, learning rate 0.05 with warmup and cosine
decay over 100 epochs, weight decay 5e-4, label smoothing 0.1, auxiliary losses
weighted 0.3 (the paper's). Expected: around 92-93% test accuracy; this is an
estimate (no published figure for exactly this setup), not a measurement - the
development machine cannot download CIFAR-10.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "googlenet"
    c.model.kwargs.aux_logits = True
    c.dataset.name = "cifar10"
    c.dataset.image_size = 96
    c.dataset.crop_padding = 12
    c.dataset.flip = True
    c.batch_size = 128
    c.num_epochs = 100
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_epochs = 2
    c.loss.label_smoothing = 0.1
    c.loss.aux_weight = 0.3
    c.checkpoint_every_steps = 1000
    return c
