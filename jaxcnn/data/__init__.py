"""Datasets and input pipelines.

``Pipeline(DataConfig(name="digits", batch_size=128), seed=0)`` feeds training and
evaluation batches (see :mod:`jaxcnn.data.pipeline`); ``catalog`` describes the
datasets; ``offline`` generates the ones built here (digits, shapes, colors,
shapes_colors, econ), whose tfds builders :mod:`jaxcnn.data.builders` registers
with tensorflow-datasets when it is installed; ``augment`` holds the JAX
augmentations (random crop, flip, mixup, cutmix).

Importing this package needs neither TensorFlow nor tfds; streaming and the
standard datasets do.
"""

from jaxcnn.data import augment, catalog, offline
from jaxcnn.data.catalog import DATASETS, DatasetInfo
from jaxcnn.data.pipeline import DataConfig, Pipeline
from jaxcnn.data.sources import DatasetUnavailableError, load_arrays

try:  # register the offline datasets with tfds, where it is installed
    from jaxcnn.data import builders  # noqa: F401
except ImportError:  # pragma: no cover - machines without tensorflow-datasets
    pass

__all__ = ["DATASETS", "DataConfig", "DatasetInfo", "DatasetUnavailableError", "Pipeline", "augment", "catalog",
           "load_arrays", "offline"]
