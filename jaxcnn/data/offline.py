"""The offline datasets, generated deterministically with NumPy (and scikit-learn's bundled digits).

Every function returns ``{"image": uint8 (N, H, W, C), "label": int64 (N,)}`` (float32
targets for ``econ``) for ``split`` in ``("train", "test")``. The same arrays back the
tfds builders of :mod:`jaxcnn.data.builders`, and are used directly where TensorFlow
is not installed.

* ``digits``: scikit-learn's 1,797 8x8 handwritten digits, unscaled (values 0-16),
  split 80/20 (1,437 / 360), stratified, with a fixed seed.
* ``shapes`` (textbook 18.2): circle, diamond, line, rectangle, triangle; random size
  and position, grey level 150-255 on black, Gaussian noise; 28x28x1;
  600 train / 100 test per class.
* ``colors`` (18.1): the five shapes in red, green, blue, cyan, yellow or pink; the
  label is the colour; 28x28x3; 600 / 100 per colour.
* ``shapes_colors`` (18.3): circle, rectangle, triangle x red, green, blue;
  label = 3 * shape + colour; 28x28x3; 600 / 100 per class.
* ``econ``: stand-in for the satellite-image regression task: 32x32 tiles of 4 bands
  with a few bright "settlements" (Gaussian blobs) on a dim background; the target
  is the lit area weighted by band, ``sum_b w_b * mean(x_b > 128)`` with
  ``w = (1.0, 0.5, 0.25, 2.0)``; 4,000 / 1,000 tiles.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test")
SHAPES = ("circle", "diamond", "line", "rectangle", "triangle")
COLORS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "cyan": (0, 255, 255), "yellow": (255, 255, 0), "pink": (255, 105, 180),
}
SHAPES_COLORS_SHAPES = ("circle", "rectangle", "triangle")
SHAPES_COLORS_COLORS = ("red", "green", "blue")
ECON_BAND_WEIGHTS = (1.0, 0.5, 0.25, 2.0)
PER_CLASS = {"train": 600, "test": 100}


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _rng(name: str, split: str) -> np.random.Generator:
    # a fixed, distinct stream per dataset and split: deterministic, and the splits never share draws
    return np.random.default_rng([sum(map(ord, name)), SPLITS.index(split), 20261122])


def digits(split: str) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split)
    data = load_digits()
    index = np.arange(len(data.target))
    train, test = train_test_split(index, test_size=0.2, random_state=0, stratify=data.target)
    chosen = np.sort(train if split == "train" else test)
    images = data.images[chosen].astype(np.uint8)[..., None]
    return {"image": images, "label": data.target[chosen].astype(np.int64)}


def _mask(shape: str, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A filled binary mask of one shape with random size and position, fully inside the image."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    if shape == "circle":
        r = rng.uniform(4, 10)
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "diamond":
        a, b = rng.uniform(5, 11, 2)
        cx, cy = rng.uniform(a + 1, size - a - 1), rng.uniform(b + 1, size - b - 1)
        return np.abs(x - cx) / a + np.abs(y - cy) / b <= 1
    if shape == "rectangle":
        w, h = rng.uniform(8, 20, 2)
        cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(h / 2 + 1, size - h / 2 - 1)
        return (np.abs(x - cx) <= w / 2) & (np.abs(y - cy) <= h / 2)
    if shape == "triangle":
        w, h = rng.uniform(10, 22, 2)
        cx, cy = rng.uniform(w / 2 + 1, size - w / 2 - 1), rng.uniform(h / 2 + 1, size - h / 2 - 1)
        top, bottom = cy - h / 2, cy + h / 2
        half_width = (y - top) / h * w / 2  # widens linearly from the apex to the base
        return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half_width)
    if shape == "line":
        length, angle = rng.uniform(12, 24), rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        cx = rng.uniform(abs(dx) + 2, size - abs(dx) - 2)
        cy = rng.uniform(abs(dy) + 2, size - abs(dy) - 2)
        # distance from each pixel to the segment (cx, cy) +- (dx, dy)
        t = np.clip(((x - cx) * dx + (y - cy) * dy) / (dx * dx + dy * dy), -1, 1)
        return (x - cx - t * dx) ** 2 + (y - cy - t * dy) ** 2 <= 1.3**2
    raise ValueError(f"unknown shape {shape!r}")


def _render(mask: np.ndarray, color, rng: np.random.Generator) -> np.ndarray:
    """Paint ``mask`` in ``color`` (one value per channel) at a random brightness, add noise."""
    color = np.asarray(color, np.float64) * rng.uniform(0.75, 1.0)
    image = mask[..., None] * color + rng.normal(0, 10, (*mask.shape, len(color)))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _balanced_labels(num_classes: int, split: str, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), PER_CLASS[split]))


def shapes(split: str) -> dict[str, np.ndarray]:
    _check_split(split)
    rng = _rng("shapes", split)
    labels = _balanced_labels(len(SHAPES), split, rng)
    images = [_render(_mask(SHAPES[k], rng), (rng.uniform(150, 255),), rng) for k in labels]
    return {"image": np.stack(images), "label": labels.astype(np.int64)}


def colors(split: str) -> dict[str, np.ndarray]:
    _check_split(split)
    rng = _rng("colors", split)
    names = list(COLORS)
    labels = _balanced_labels(len(names), split, rng)
    images = [_render(_mask(SHAPES[rng.integers(len(SHAPES))], rng), COLORS[names[k]], rng) for k in labels]
    return {"image": np.stack(images), "label": labels.astype(np.int64)}


def shapes_colors(split: str) -> dict[str, np.ndarray]:
    _check_split(split)
    rng = _rng("shapes_colors", split)
    n_colors = len(SHAPES_COLORS_COLORS)
    labels = _balanced_labels(len(SHAPES_COLORS_SHAPES) * n_colors, split, rng)
    images = [_render(_mask(SHAPES_COLORS_SHAPES[k // n_colors], rng), COLORS[SHAPES_COLORS_COLORS[k % n_colors]], rng)
              for k in labels]
    return {"image": np.stack(images), "label": labels.astype(np.int64)}


def econ_target(images: np.ndarray) -> np.ndarray:
    """The regression target of ``econ`` tiles ``(N, H, W, 4)``: band-weighted lit area."""
    lit = (images > 128).mean(axis=(1, 2))
    return (lit * np.asarray(ECON_BAND_WEIGHTS)).sum(axis=-1).astype(np.float32)


def econ(split: str) -> dict[str, np.ndarray]:
    _check_split(split)
    rng = _rng("econ", split)
    n, size, bands = {"train": 4000, "test": 1000}[split], 32, len(ECON_BAND_WEIGHTS)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n, size, size, bands), np.uint8)
    for i in range(n):
        tile = rng.uniform(0, 40, (size, size, bands))
        for _ in range(rng.integers(1, 6)):
            cx, cy, sigma = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 4.0)
            blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
            tile += blob[..., None] * rng.uniform(100, 255, bands)
        images[i] = np.clip(np.rint(tile), 0, 255).astype(np.uint8)
    return {"image": images, "label": econ_target(images)}


GENERATORS = {"digits": digits, "shapes": shapes, "colors": colors, "shapes_colors": shapes_colors, "econ": econ}
