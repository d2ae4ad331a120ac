"""The classical kernels (textbook 17.0.3-17.0.4) on real photographs.

    python launch.py --config experiments/filters.py

filters_gallery.png: identity aside, the nine kernels of jaxcnn.ops.filters applied to
scikit-learn's china.jpg in grey; conv_relu_pool.png: sobel_x as a 3-channel filter on
flower.jpg, then ReLU, then 2x2 max pooling. Expected: the two figures in a few
seconds (no training involved).
"""

from jaxcnn.tasks.filters import default_config


def get_config():
    return default_config()
