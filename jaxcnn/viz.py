"""Figures of a trained network (matplotlib, PNG files): what the textbook draws.

* :func:`plot_kernels`: the first convolution's kernels as an image grid;
* :func:`plot_feature_maps`: one input through a conv layer, as rows conv, activation
  (ReLU), pool (2x2 max) - textbook 18.4.4;
* :func:`plot_predictions`: a grid of test images with predicted labels, mistakes marked;
* :func:`plot_confusion`: the confusion matrix;
* :func:`visualize_run`: all four for a finished run's workdir (the training loop calls
  :func:`write_run_figures` itself at the end of a classification run).
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image, cmap=None):
    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image[..., 0]  # more than 3 bands: show the first
    lo, hi = image.min(), image.max()
    ax.imshow((image - lo) / (hi - lo) if hi > lo else np.zeros_like(image), cmap=cmap or "gray",
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def first_conv_kernel(params) -> tuple[str, np.ndarray] | None:
    """``(name, HWIO kernel)`` of the first 4-D kernel in parameter order (the first conv of the models)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if getattr(path[-1], "key", None) == "kernel" and leaf.ndim == 4:
            return "/".join(str(getattr(p, "key", p)) for p in path[:-1]), np.asarray(leaf)
    return None


def plot_kernels(kernel, path: str, title: str = "first-layer kernels") -> str:
    """One panel per output channel of an HWIO ``kernel``: RGB for 3 input channels, grey otherwise."""
    plt = _pyplot()
    kernel = np.asarray(kernel)
    n = kernel.shape[-1]
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            k = kernel[..., i]
            _show(ax, k if k.shape[-1] == 3 else k[..., 0], cmap=None if k.shape[-1] == 3 else "gray")
        else:
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def feature_map_rows(conv_output) -> list[tuple[str, np.ndarray]]:
    """The textbook's rows for one conv output ``(H, W, C)``: conv, ReLU, 2x2 max pool."""
    conv_output = jnp.asarray(conv_output)
    relu = jax.nn.relu(conv_output)
    pooled = ops.max_pool2d(relu[None], 2)[0] if min(relu.shape[:2]) >= 2 else relu
    return [("conv", np.asarray(conv_output)), ("activation", np.asarray(relu)), ("pool", np.asarray(pooled))]


def plot_feature_maps(image, conv_output, path: str, max_channels: int = 8, title: str = "") -> str:
    """Input image, then one row each for conv, activation, pool of up to ``max_channels`` channels."""
    plt = _pyplot()
    rows = feature_map_rows(conv_output)
    channels = min(conv_output.shape[-1], max_channels)
    fig, axes = plt.subplots(len(rows), channels + 1, figsize=(1.4 * (channels + 1), 1.5 * len(rows) + 0.4),
                             squeeze=False)
    for r, (name, maps) in enumerate(rows):
        if r == 0:
            _show(axes[0, 0], image)
            axes[0, 0].set_title("input", fontsize=8)
        else:
            axes[r, 0].axis("off")
        axes[r, 1].set_ylabel(name, fontsize=9)
        for c in range(channels):
            _show(axes[r, c + 1], maps[..., c], cmap="viridis")
            if r == 0:
                axes[r, c + 1].set_title(f"ch {c}", fontsize=8)
    fig.suptitle(title or "feature maps: conv -> activation -> pool")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_predictions(images, labels, predictions, path: str, class_names=None, columns: int = 8) -> str:
    """A grid of images titled with their predicted class; mistakes in red with the true class."""
    plt = _pyplot()
    n = len(images)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), squeeze=False)
    name = (lambda i: class_names[i]) if class_names else str
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _show(ax, images[i])
        wrong = int(predictions[i]) != int(labels[i])
        text = f"{name(int(predictions[i]))}" + (f"\n(true {name(int(labels[i]))})" if wrong else "")
        ax.set_title(text, fontsize=7, color="red" if wrong else "black")
    errors = int(np.sum(np.asarray(predictions) != np.asarray(labels)))
    fig.suptitle(f"predictions on {n} test images: {errors} mistakes (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return m


def plot_confusion(labels, predictions, num_classes: int, path: str, class_names=None) -> str:
    plt = _pyplot()
    m = confusion_matrix(labels, predictions, num_classes)
    size = max(3.5, 0.45 * num_classes + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    names = class_names or [str(i) for i in range(num_classes)]
    ax.set_xticks(range(num_classes), names, rotation=90, fontsize=7)
    ax.set_yticks(range(num_classes), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= 20:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black")
    ax.set_title(f"confusion matrix ({np.trace(m)} / {m.sum()} correct)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def write_run_figures(model, variables, eval_batches, workdir: str, num_classes: int, class_names=None) -> list[str]:
    """The four figures of a classification run, from its model, variables and evaluation batches."""
    images, labels, predictions = [], [], []
    apply = jax.jit(lambda v, x: model.apply(v, x))
    for batch in eval_batches:
        mask = np.asarray(batch["mask"])
        logits = apply(variables, batch["image"])
        images.append(np.asarray(batch["image"])[mask])
        labels.append(np.asarray(batch["label"])[mask])
        predictions.append(np.asarray(jnp.argmax(logits, -1))[mask])
    images, labels, predictions = (np.concatenate(a) for a in (images, labels, predictions))
    paths = [plot_predictions(images[:64], labels[:64], predictions[:64], os.path.join(workdir, "predictions.png"),
                              class_names),
             plot_confusion(labels, predictions, num_classes, os.path.join(workdir, "confusion.png"), class_names)]
    found = first_conv_kernel(variables["params"])
    if found is not None:
        name, kernel = found
        paths.append(plot_kernels(kernel, os.path.join(workdir, "kernels.png"), f"{name}: first-layer kernels"))
        _, inter = model.apply(variables, images[:1], capture_intermediates=True)
        conv_out = _module_output(inter["intermediates"], name.split("/"))
        if conv_out is not None:
            paths.append(plot_feature_maps(images[0], conv_out[0], os.path.join(workdir, "feature_maps.png"),
                                           title=f"{name}: conv -> ReLU -> 2x2 max pool"))
    return paths


def _module_output(intermediates, path):
    node = intermediates
    for key in path:
        if key not in node:
            return None
        node = node[key]
    out = node.get("__call__")
    return None if out is None else np.asarray(out[0])


def visualize_run(workdir: str) -> list[str]:
    """Rebuild a finished run from ``workdir`` (its config.json and latest checkpoint) and draw its figures."""
    import ml_collections

    from jaxcnn import models
    from jaxcnn.data import DataConfig, Pipeline
    from jaxcnn.train.checkpoint import Checkpoints
    from jaxcnn.train.config import validate
    from jaxcnn.train.loop import DTYPES

    with open(os.path.join(workdir, "config.json")) as f:
        config = validate(ml_collections.ConfigDict(json.load(f)))
    pipeline = Pipeline(DataConfig.from_dict({**config.dataset.to_dict(), "batch_size": config.batch_size}),
                        seed=config.seed)
    model = models.create(config.model.name, num_classes=pipeline.num_classes or 1,
                          conv_backend=config.model.conv_backend, dtype=DTYPES[config.dtype], **config.model.kwargs)
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints, meta={})
    step = checkpoints.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')} to visualise")
    state = checkpoints.read_state(step)
    variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}
    return write_run_figures(model, variables, pipeline.eval_batches(), workdir, pipeline.num_classes)
