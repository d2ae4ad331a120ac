"""VGG-16 with BatchNorm on CIFAR-10, with the CIFAR head (one linear layer on the 512 pooled features).

    python launch.py --config experiments/vgg16_cifar10.py

SGD momentum 0.9, learning rate 0.05 with cosine decay over 200 epochs, weight decay
5e-4, batch 128, crop + flip. Expected: about 93.5% test accuracy (what this recipe
reaches in the common PyTorch CIFAR-10 reproductions, e.g. kuangliu/pytorch-cifar
reports 92.64% for VGG-16); not measured on the development machine, which cannot
download CIFAR-10.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "vgg16_bn"
    c.model.kwargs.head = "cifar"
    c.dataset.name = "cifar10"
    c.dataset.crop_padding = 4
    c.dataset.flip = True
    c.batch_size = 128
    c.num_epochs = 200
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.05
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "warmup_cosine"
    c.checkpoint_every_steps = 1000
    return c
