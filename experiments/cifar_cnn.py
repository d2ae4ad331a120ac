"""CIFAR-10 with Keras's classic example network (cifar10_cnn.py), trained as the textbook does.

    python launch.py --config experiments/cifar_cnn.py

RMSprop at 1e-4, batch 32, horizontal flips and small translations, 50 epochs.
Expected: about 79% test accuracy (the Keras example's own figure: "75% validation
accuracy in 25 epochs, and 79% after 50 epochs"); not measured on the development
machine, which cannot download CIFAR-10.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "cifar_cnn"
    c.dataset.name = "cifar10"
    c.dataset.flip = True
    c.dataset.crop_padding = 3  # Keras's width/height_shift_range=0.1 of 32 pixels
    c.batch_size = 32
    c.num_epochs = 50
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.momentum = 0.0
    c.optimizer.eps = 1e-7
    return c
