"""Losses and metrics. Per-example values, reduced with a mask, so padded evaluation rows count for nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def _targets(labels, num_classes: int, label_smoothing: float):
    """Integer labels or (mixed) one-hot rows as probability rows, smoothed."""
    probs = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        probs = probs * (1 - label_smoothing) + label_smoothing / num_classes
    return probs


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Softmax cross-entropy per example; ``labels``: ``(N,)`` ints or ``(N, C)`` probabilities."""
    return optax.softmax_cross_entropy(logits, _targets(labels, logits.shape[-1], label_smoothing))


def mse(predictions, targets):
    """Squared error per example, summed over outputs; ``targets`` ``(N,)`` for one output."""
    targets = targets.reshape(predictions.shape).astype(predictions.dtype)
    return jnp.sum((predictions - targets) ** 2, axis=tuple(range(1, predictions.ndim)))


def binary_cross_entropy(logits, labels):
    """Sigmoid cross-entropy per example, summed over outputs; ``labels`` in {0, 1} (or probabilities)."""
    labels = labels.reshape(logits.shape).astype(logits.dtype)
    return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, labels), axis=tuple(range(1, logits.ndim)))


def per_example_loss(name: str, logits, labels, label_smoothing: float = 0.0):
    if name == "cross_entropy":
        return cross_entropy(logits, labels, label_smoothing)
    if name == "mse":
        return mse(logits, labels)
    return binary_cross_entropy(logits, labels)


def metric_sums(loss_name: str, logits, labels, per_example, mask=None) -> dict:
    """Sums over the (masked) batch: ``loss``, ``count`` and, for classification, ``correct`` and ``top5``."""
    mask = jnp.ones(per_example.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    sums = {"loss": jnp.sum(per_example * mask), "count": jnp.sum(mask)}
    if loss_name == "cross_entropy":
        truth = labels if labels.ndim == 1 else jnp.argmax(labels, axis=-1)
        sums["correct"] = jnp.sum((jnp.argmax(logits, axis=-1) == truth) * mask)
        if logits.shape[-1] >= 5:
            # In the top 5 when fewer than 5 classes score higher. Per example and elementwise, so a
            # batch-sharded step needs no all-gather (lax.top_k would gather the logits, and a second
            # collective beside the gradient all-reduce can deadlock XLA's CPU devices).
            true_logit = jnp.take_along_axis(logits, truth[:, None].astype(jnp.int32), axis=-1)
            sums["top5"] = jnp.sum((jnp.sum(logits > true_logit, axis=-1) < 5) * mask)
    return sums


def finalize(sums: dict) -> dict:
    """Means from summed metrics: ``loss``, ``accuracy``, ``top5_accuracy``."""
    count = max(float(sums["count"]), 1.0)
    out = {"loss": float(sums["loss"]) / count}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / count
    if "top5" in sums:
        out["top5_accuracy"] = float(sums["top5"]) / count
    return out
