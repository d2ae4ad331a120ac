"""What jaxcnn knows about each dataset: its tfds name, splits, image shape, classes, statistics."""

from __future__ import annotations

import dataclasses
import difflib

from jaxcnn.data import offline as _offline


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One dataset. ``num_classes == 0`` marks a regression task (float ``label`` targets).

    ``mean`` / ``std`` are per-channel statistics of the training images scaled to
    [0, 1] (pixel / ``max_value``), used for normalisation.
    """

    name: str
    tfds_name: str
    image_shape: tuple[int, int, int] | None  # None: variable-size images (decoded and cropped by the pipeline)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_split: str = "train"
    eval_split: str = "test"
    max_value: float = 255.0
    offline: bool = False  # generated locally by jaxcnn, never downloaded
    class_names: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.num_classes == 0


_DATASETS = [
    DatasetInfo("digits", "jaxcnn_digits", (8, 8, 1), 10, (0.3054,), (0.3761,), max_value=16.0, offline=True,
                class_names=tuple(str(d) for d in range(10))),
    DatasetInfo("shapes", "jaxcnn_shapes", (28, 28, 1), 5, (0.1322,), (0.2616,), offline=True,
                class_names=_offline.SHAPES),
    DatasetInfo("colors", "jaxcnn_colors", (28, 28, 3), 6, (0.0887, 0.0970, 0.0795), (0.2415, 0.2434, 0.2169),
                offline=True, class_names=tuple(_offline.COLORS)),
    DatasetInfo("shapes_colors", "jaxcnn_shapes_colors", (28, 28, 3), 9, (0.0750, 0.0753, 0.0737),
                (0.2193, 0.2204, 0.2176), offline=True,
                class_names=tuple(f"{c} {s}" for s in _offline.SHAPES_COLORS_SHAPES
                                  for c in _offline.SHAPES_COLORS_COLORS)),
    DatasetInfo("econ", "jaxcnn_econ", (32, 32, 4), 0, (0.1658, 0.1661, 0.1654, 0.1660),
                (0.1843, 0.1848, 0.1835, 0.1844), offline=True),
    DatasetInfo("mnist", "mnist", (28, 28, 1), 10, (0.1307,), (0.3081,)),
    DatasetInfo("fashion_mnist", "fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,)),
    DatasetInfo("cifar10", "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    DatasetInfo("cifar100", "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    DatasetInfo("imagenet2012", "imagenet2012", None, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                eval_split="validation"),
]
DATASETS = {d.name: d for d in _DATASETS}


def get(name: str) -> DatasetInfo:
    """The catalogue entry of ``name``; ValueError naming the known ones otherwise."""
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(DATASETS)}")
    return DATASETS[name]
