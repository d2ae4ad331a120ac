"""Process settings that make XLA's CPU backend faster; called by the training loop and benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_cpu_malloc(mmap_threshold: int = 1 << 30) -> bool:
    """Serve allocations below ``mmap_threshold`` bytes from glibc's heap and keep it mapped.

    XLA's CPU runtime allocates a step's temporaries (im2col matrices, activations)
    afresh on every call. glibc serves blocks above its mmap threshold (at most
    32 MB by default) with a fresh ``mmap`` and unmaps them on free, so every step
    pays a page fault per 4 KiB touched: a 19 MB im2col matrix costs about 10 ms
    of faults, more than the matmul that reads it. With both thresholds raised the
    memory is reused from step to step. Returns False (and changes nothing) where
    the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    threshold = min(int(mmap_threshold), 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
