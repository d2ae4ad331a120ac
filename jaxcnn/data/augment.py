"""Batch preprocessing and augmentation in JAX: pure functions of (key, batch), jit-able.

Images are NHWC. Every random function takes an explicit key, so a pipeline that
derives the key from ``(seed, step)`` produces the same augmented batch at step k
in an uninterrupted and in a resumed run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as tf.image.rgb_to_grayscale


def to_float(images, max_value: float = 255.0):
    """Integer pixels to float32 in [0, 1]."""
    return images.astype(jnp.float32) / max_value


def grayscale(images):
    """``(N, H, W, 3) -> (N, H, W, 1)`` luminance; one-channel images pass through."""
    if images.shape[-1] == 1:
        return images
    if images.shape[-1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got images of shape {tuple(images.shape)}")
    return jnp.tensordot(images, jnp.asarray(_LUMA, images.dtype), axes=([-1], [0]))[..., None]


def resize(images, size: int | tuple[int, int]):
    """Bilinear resize of the spatial dims to ``size`` (int: square)."""
    h, w = (size, size) if isinstance(size, int) else size
    if images.shape[1:3] == (h, w):
        return images
    return jax.image.resize(images, (images.shape[0], h, w, images.shape[3]), method="bilinear")


def normalize(images, mean, std):
    """Per-channel ``(x - mean) / std``."""
    return (images - jnp.asarray(mean, images.dtype)) / jnp.asarray(std, images.dtype)


def random_crop(key, images, padding: int, mode: str = "zeros"):
    """Pad by ``padding`` on every side (``"zeros"`` or ``"reflect"``) and crop back at a random offset.

    With zero padding this is a random translation by up to ``padding`` pixels.
    Each image gets its own offset.
    """
    if padding == 0:
        return images
    if mode not in ("zeros", "reflect"):
        raise ValueError(f"random_crop: mode must be 'zeros' or 'reflect', got {mode!r}")
    n, h, w, c = images.shape
    widths = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    padded = jnp.pad(images, widths, mode="constant" if mode == "zeros" else "reflect")
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key, images):
    """Mirror each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def _partner_and_lambda(key, n: int, alpha: float):
    k_lam, k_perm = jax.random.split(key)
    return jax.random.permutation(k_perm, n), jax.random.beta(k_lam, alpha, alpha)


def mixup(key, images, labels, alpha: float):
    """Mixup (Zhang et al. 2017): ``lam * x + (1 - lam) * x[perm]``, labels (one-hot) likewise.

    One ``lam ~ Beta(alpha, alpha)`` per batch, each example paired with a random other.
    """
    perm, lam = _partner_and_lambda(key, images.shape[0], alpha)
    mixed = lam * images + (1 - lam) * images[perm]
    return mixed.astype(images.dtype), lam * labels + (1 - lam) * labels[perm]


def cutmix(key, images, labels, alpha: float):
    """CutMix (Yun et al. 2019): paste a box from a paired image; labels mixed by the box's area.

    The box covers ``1 - lam`` of the image (``lam ~ Beta(alpha, alpha)``) at a
    uniformly random centre, clipped to the image; the label weight is the
    actual pasted fraction.
    """
    k_pair, k_box = jax.random.split(key)
    n, h, w, _ = images.shape
    perm, lam = _partner_and_lambda(k_pair, n, alpha)
    cut = jnp.sqrt(1.0 - lam)
    cy, cx = jax.random.uniform(k_box, (2,)) * jnp.array([h, w])
    y0, y1 = jnp.clip(jnp.round(cy - cut * h / 2), 0, h), jnp.clip(jnp.round(cy + cut * h / 2), 0, h)
    x0, x1 = jnp.clip(jnp.round(cx - cut * w / 2), 0, w), jnp.clip(jnp.round(cx + cut * w / 2), 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
    pasted = jnp.where(box, images[perm], images)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return pasted, kept * labels + (1 - kept) * labels[perm]


def mix(key, images, labels, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """Mixup and/or CutMix on one-hot ``labels``; with both on, one of the two per batch, at random."""
    if mixup_alpha and cutmix_alpha:
        k_choice, k_mix = jax.random.split(key)
        a = mixup(k_mix, images, labels, mixup_alpha)
        b = cutmix(k_mix, images, labels, cutmix_alpha)
        use_cutmix = jax.random.bernoulli(k_choice)
        return jax.tree_util.tree_map(lambda u, v: jnp.where(use_cutmix, v, u), a, b)
    if mixup_alpha:
        return mixup(key, images, labels, mixup_alpha)
    if cutmix_alpha:
        return cutmix(key, images, labels, cutmix_alpha)
    return images, labels
