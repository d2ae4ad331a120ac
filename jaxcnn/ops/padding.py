"""Padding specifications and padding modes.

A padding spec is resolved once, in Python, into one ``(lo, hi)`` pair per
spatial dim. The modes follow PyTorch's ``padding_mode``:

=========  ==============================  ==========  =========================
mode       value beyond the edge           numpy mode  constraint per side
=========  ==============================  ==========  =========================
zeros      0                               constant    none
reflect    mirror, edge not repeated       reflect     pad < input size
replicate  the edge value                  edge        none
circular   wrap around                     wrap        pad <= input size
=========  ==============================  ==========  =========================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_NUMPY_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}

Pairs = tuple[tuple[int, int], ...]


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def same_padding(n: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """``(lo, hi)`` for "SAME": output size ``ceil(n / stride)``, extra pixel on the high side.

    This is TensorFlow's and ``lax``'s rule; for stride 1 it equals PyTorch's
    ``padding="same"``.
    """
    out = -(-n // stride)
    total = max((out - 1) * stride + dilation * (kernel_size - 1) + 1 - n, 0)
    return total // 2, total - total // 2


def normalize_padding(
    padding: Any,
    ndim: int,
    *,
    fn: str = "padding",
    spatial_shape: Sequence[int] | None = None,
    kernel_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    dilation: Sequence[int] | None = None,
) -> Pairs:
    """Resolve a padding spec into ``ndim`` pairs ``(lo, hi)`` of non-negative ints.

    Args:
      padding: an int (all sides), ``ndim`` ints (both sides of each dim),
        ``ndim`` pairs ``(lo, hi)``, or the strings ``"SAME"`` / ``"VALID"``
        (either case). ``"SAME"`` needs ``spatial_shape``, ``kernel_size``,
        ``stride`` and ``dilation``.
      ndim: number of spatial dims.
    """
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0),) * ndim
        if padding.upper() == "SAME":
            assert spatial_shape is not None and kernel_size is not None
            stride = stride or (1,) * ndim
            dilation = dilation or (1,) * ndim
            return tuple(
                same_padding(n, k, s, d)
                for n, k, s, d in zip(spatial_shape, kernel_size, stride, dilation)
            )
        raise ValueError(f"{fn}: padding string must be 'SAME' or 'VALID', got {padding!r}")
    if _is_int(padding):
        pairs = ((int(padding), int(padding)),) * ndim
    elif isinstance(padding, Sequence) and len(padding) == ndim:
        pairs = []
        for p in padding:
            if _is_int(p):
                pairs.append((int(p), int(p)))
            elif isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                raise ValueError(
                    f"{fn}: padding entries must be ints or (lo, hi) pairs of ints, got {padding!r}"
                )
        pairs = tuple(pairs)
    else:
        raise ValueError(
            f"{fn}: padding must be an int, {ndim} ints, {ndim} (lo, hi) pairs, 'SAME' or "
            f"'VALID', got {padding!r}"
        )
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"{fn}: padding must be >= 0, got {padding!r}")
    return pairs


def check_padding_mode(padding_mode: Any, pairs: Pairs, spatial_shape: Sequence[int], fn: str) -> None:
    """Raise ValueError for an unknown mode or pads the mode cannot produce."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{fn}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    for n, (lo, hi) in zip(spatial_shape, pairs):
        if padding_mode == "reflect" and max(lo, hi) >= n:
            raise ValueError(
                f"{fn}: reflect padding must be smaller than the input size, got padding "
                f"{(lo, hi)} for a spatial dim of size {n}"
            )
        if padding_mode == "circular" and max(lo, hi) > n:
            raise ValueError(
                f"{fn}: circular padding must be at most the input size, got padding "
                f"{(lo, hi)} for a spatial dim of size {n}"
            )


def pad_spatial(x, pairs: Pairs, mode: str, spatial_axes: Sequence[int], value: float = 0.0):
    """Pad the ``spatial_axes`` of ``x`` by ``pairs`` in ``mode`` (``value`` for "zeros")."""
    if not any(lo or hi for lo, hi in pairs):
        return x
    widths = [(0, 0)] * x.ndim
    for axis, pair in zip(spatial_axes, pairs):
        widths[axis] = pair
    if mode == "zeros":
        return jnp.pad(x, widths, mode="constant", constant_values=value)
    return jnp.pad(x, widths, mode=_NUMPY_MODE[mode])
