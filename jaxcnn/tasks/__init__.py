"""The textbook's experiments that are not "train a classifier": each a ``run(config, workdir) -> dict``.

``config.task`` picks one: ``kernel_recovery`` (learn a 3x3 kernel by gradient descent),
``filters`` (classical kernels and conv -> ReLU -> pool on real images), ``report`` (run
the offline textbook tasks and write REPORT.md). ``train_and_evaluate`` hands such
configs here, so ``launch.py --config experiments/NAME.py`` runs them all.
"""

from __future__ import annotations

import importlib

TASKS = ("kernel_recovery", "filters", "report")


def run(config, workdir: str) -> dict:
    task = config.get("task")
    if task not in TASKS:
        raise ValueError(f"config.task must be 'train' or one of {TASKS}, got {task!r}")
    return importlib.import_module(f"jaxcnn.tasks.{task}").run(config, workdir)


def sample_image(name: str, downsample: int = 1, grayscale: bool = False):
    """One of scikit-learn's bundled photographs ("china.jpg", "flower.jpg") as float32 in [0, 1].

    ``(H, W, 3)``, or ``(H, W)`` luminance with ``grayscale``; every ``downsample``-th pixel.
    """
    import numpy as np
    from sklearn.datasets import load_sample_image

    image = load_sample_image(name).astype(np.float32)[::downsample, ::downsample] / 255.0
    return image @ np.asarray([0.299, 0.587, 0.114], np.float32) if grayscale else image
