"""Fashion-MNIST with the TensorFlow tutorial's network: 32@3x3 -> pool -> 128 -> 10.

    python launch.py --config experiments/fashion_cnn.py

Expected: about 91-92% test accuracy after 10 epochs (what this architecture reaches in
the Keras/TensorFlow tutorials; not measured on the development machine, which cannot
download Fashion-MNIST).
"""

from jaxcnn.train import default_config


def get_config():
    c = default_config()
    c.model.name = "fashion_cnn"
    c.dataset.name = "fashion_mnist"
    c.batch_size = 128
    c.num_epochs = 10
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    return c
