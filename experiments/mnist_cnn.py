"""MNIST with the textbook's small CNN: 8@5x5 -> pool -> 16@5x5 -> pool -> 32 -> BatchNorm -> 10.

    python launch.py --config experiments/mnist_cnn.py

The textbook reports 98.65% test accuracy. Expected here: about 99% after 10 epochs
(a network of this size reaches 98.7-99.2% on MNIST with Adam; not measured on the
development machine, which cannot download MNIST - prepare it as the error message
says). About a minute per epoch on a 2-core CPU.
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "mnist_cnn"
    c.dataset.name = "mnist"
    c.batch_size = 128
    c.num_epochs = 10
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-3
    c.schedule.name = "warmup_cosine"
    c.schedule.warmup_epochs = 0.5
    return c
