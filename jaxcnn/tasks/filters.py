"""What the classical kernels do to a picture, and conv -> ReLU -> max-pool on a colour image (17.0.3-17.0.4).

Two figures: ``filters_gallery.png``, the nine kernels of :mod:`jaxcnn.ops.filters`
(all but the identity) applied to a grey photograph, as a 3x3 gallery; and
``conv_relu_pool.png``, one kernel (sobel_x by default) stacked into a 3-channel
filter and applied to a colour photograph, then ReLU, then 2x2 max pooling - the
four stages side by side.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import ops
from jaxcnn.tasks import sample_image


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "filters"
    c.image = "china.jpg"
    c.colour_image = "flower.jpg"
    c.downsample = 2
    c.filter = "sobel_x"  # the kernel of the conv -> ReLU -> pool figure
    c.pool = 2
    return c


def apply_filters(image, names):
    """``{name: filtered image}`` for a 2-D image, 'SAME' zero padding."""
    x = jnp.asarray(image)[None, :, :, None]
    return {n: np.asarray(ops.conv2d(x, jnp.asarray(ops.filters.get(n))[:, :, None, None], padding="SAME")[0, :, :, 0])
            for n in names}


def conv_relu_pool(image_rgb, name: str, pool: int):
    """The 3-channel version of kernel ``name`` on an RGB image, then ReLU, then max pooling."""
    kernel = np.repeat(ops.filters.get(name)[:, :, None, None], 3, axis=2)  # (3, 3, 3, 1): sums the channels
    conv = ops.conv2d(jnp.asarray(image_rgb)[None], jnp.asarray(kernel), padding="SAME")
    relu = jax.nn.relu(conv)
    pooled = ops.max_pool2d(relu, pool)
    return [np.asarray(a[0, :, :, 0]) for a in (conv, relu, pooled)]


def run(config, workdir: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcnn.train.config import check_keys

    check_keys(config, default_config())
    c = default_config()
    c.update(config)
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    grey = sample_image(c.image, c.downsample, grayscale=True)
    names = [n for n in ops.filters.FILTERS if n != "identity"]
    filtered = apply_filters(grey, names)
    fig, axes = plt.subplots(3, 3, figsize=(12, 9))
    for ax, name in zip(axes.flat, names):
        ax.imshow(filtered[name], cmap="gray")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"the classical 3x3 kernels on {c.image}")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "filters_gallery.png"), dpi=70)
    plt.close(fig)

    colour = sample_image(c.colour_image, c.downsample)
    stages = conv_relu_pool(colour, c.filter, c.pool)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    axes[0].imshow(colour)
    axes[0].set_title(f"input {colour.shape[0]}x{colour.shape[1]}x3")
    for ax, title, image in zip(axes[1:], (f"conv ({c.filter}, 3 channels)", "ReLU", f"max pool {c.pool}x{c.pool}"),
                                stages):
        ax.imshow(image, cmap="gray")
        ax.set_title(f"{title}: {image.shape[0]}x{image.shape[1]}")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "conv_relu_pool.png"), dpi=70)
    plt.close(fig)

    results = {
        "filters": {n: {"mean_abs_response": float(np.abs(f).mean())} for n, f in filtered.items()},
        "conv_relu_pool": {"filter": c.filter, "shapes": [list(colour.shape), *[list(s.shape) for s in stages]],
                           "negative_fraction_before_relu": float((stages[0] < 0).mean())},
        "figures": ["filters_gallery.png", "conv_relu_pool.png"], "wall_time_s": time.time() - start,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
