"""Argument checks shared by the ops.

Every public op validates its arguments here, in Python, from static shapes
and dtypes, so a bad call fails before tracing with a message that names the
argument, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

CHANNELS_LAST = {1: "NWC", 2: "NHWC", 3: "NDHWC"}
CHANNELS_FIRST = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
SPATIAL_NAMES = {1: "W", 2: "HW", 3: "DHW"}


def is_channels_last(data_format: Any, ndim: int, fn: str) -> bool:
    """True for the channels-last layout of ``ndim`` spatial dims, False for channels-first."""
    if data_format == CHANNELS_LAST[ndim]:
        return True
    if data_format == CHANNELS_FIRST[ndim]:
        return False
    raise ValueError(
        f"{fn}: data_format must be {CHANNELS_LAST[ndim]!r} or {CHANNELS_FIRST[ndim]!r}, "
        f"got {data_format!r}"
    )


def data_format_of(x_ndim: int, channels_last: bool) -> str:
    return (CHANNELS_LAST if channels_last else CHANNELS_FIRST)[x_ndim - 2]


def float_array(x: Any, name: str, fn: str):
    """``x`` as a jax/numpy array with a floating dtype, else TypeError."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = np.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{fn}: {name} must have a floating-point dtype, got {x.dtype}")
    return x


def check_rank(x: Any, rank: int, name: str, fn: str, layout: str) -> None:
    if x.ndim != rank:
        raise ValueError(
            f"{fn}: {name} must be a {rank}-D array ({layout}), got shape {tuple(x.shape)} "
            f"({x.ndim}-D)"
        )


def int_tuple(value: Any, ndim: int, name: str, fn: str, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a length-``ndim`` sequence of ints, each >= ``minimum``, as a tuple."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * ndim
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != ndim or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(
                f"{fn}: {name} must be an int or a sequence of {ndim} ints, got {value!r}"
            )
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{fn}: {name} must be an int or a sequence of {ndim} ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return values


def positive_int(value: Any, name: str, fn: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}")
    return int(value)
