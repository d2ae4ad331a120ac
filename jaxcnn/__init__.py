"""jaxcnn: a JAX functional training framework for convolutional networks."""

__version__ = "0.1.0"
