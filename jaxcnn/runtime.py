"""Settings that make XLA's CPU backend faster, used by the training loop, autotuning and benchmarks.

A leaf module (it imports only JAX), so every layer of jaxcnn, ``ops`` included, may use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import jax
import numpy as np

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


def dispatch_cpu_inline() -> None:
    """Run single-device CPU computations on the calling thread; call before JAX's first computation.

    With JAX's default asynchronous dispatch the CPU client runs each computation
    on one of its own threads, and glibc serves that thread from a secondary
    arena, whose heaps hold at most 64 MB: every larger temporary (a ResNet step's
    activations and im2col matrices) is a fresh ``mmap``, page-faulted in and
    unmapped on every step whatever :func:`tune_cpu_malloc` set. Run inline, the
    computation allocates from the calling thread's main heap, which
    :func:`tune_cpu_malloc` keeps mapped. ResNet-20's training step (batch 128):
    74,566 -> 439 minor page faults and 237 -> 4 ms of system time per step. The
    cost is that Python waits for each step instead of queueing the next, which
    small models feel: the default experiment (LeNet-5 on digits, batch 64) trained
    at 4,740-4,860 images/s inline against 4,970-5,150 asynchronously. Multi-device
    computations keep JAX's asynchronous dispatch (the flag does not apply to
    them), and it has no effect once JAX's CPU backend exists, which is why
    ``train_and_evaluate`` calls it first thing.
    """
    jax.config.update("jax_cpu_enable_async_dispatch", False)


# XLA's CPU backend hands convolutions and matmuls to YNNPACK by default. Its own (Eigen)
# convolutions train faster, while YNNPACK's matmuls are faster than Eigen's, so jaxcnn keeps
# YNNPACK for dots only (benchmarks/RESULTS.md, "Third session of 2026-11-23").
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def cpu_compiler_options() -> dict[str, str]:
    """XLA options jaxcnn compiles with on CPU: :data:`CPU_COMPILER_OPTIONS`, or ``{}``.

    Empty where the default backend is not the CPU or where this XLA does not know
    the options (they are experimental; probed once by compiling a trivial function).
    Per layer, forward + backward at batch 128 (``benchmarks/ops.py``, ms, YNNPACK ->
    XLA's own): ResNet-20's 3x3 16->32/2 29.1 -> 20.4, 32->32 27.8 -> 17.8, 64->64
    29.0 -> 13.2, LeNet-5's C3 9.6 -> 6.7; its 16-channel first stage is the one
    layer where YNNPACK's is ahead (29.7 vs 33.3). Whole ResNet-20 steps: 1.16x.
    """
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda v: v + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError:
        return {}
    return dict(CPU_COMPILER_OPTIONS)


def jit(fun, *, compiler_options: dict | None = None, **kwargs):
    """``jax.jit(fun, **kwargs)`` compiled with :func:`cpu_compiler_options` (and ``compiler_options``, which win).

    How jaxcnn compiles its steps and what autotuning measures, so that the
    convolution formulations ``conv_backend="auto"`` chooses between are timed as
    they will run; use it for your own steps over jaxcnn models too.
    """
    options = {**cpu_compiler_options(), **(compiler_options or {})}
    return jax.jit(fun, compiler_options=options or None, **kwargs)
