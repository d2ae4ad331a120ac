"""Settings that make XLA's CPU backend faster, used by the training loop, autotuning and benchmarks,
and the per-machine cache where jaxcnn keeps what it measured and compiled across processes.

A leaf module (it imports only JAX), so every layer of jaxcnn, ``ops`` included, may use it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import platform
import warnings

import jax
import jaxlib
import numpy as np

_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_MAX = -4


def tune_cpu_malloc() -> bool:
    """Serve the calling thread's allocations, however large, from glibc's heap, and never shrink it.

    XLA's CPU runtime allocates a step's temporaries (im2col matrices, activations)
    and outputs afresh on every call. glibc serves blocks above its mmap threshold
    (at most 32 MB by default) with a fresh ``mmap`` and unmaps them on free, so
    every step pays a page fault per 4 KiB touched: a 19 MB im2col matrix costs
    about 10 ms of faults, more than the matmul that reads it. With ``mmap`` off
    (``M_MMAP_MAX`` 0) and trimming off (``M_TRIM_THRESHOLD`` -1) the memory is
    reused from step to step. Raising both thresholds instead stops at 2 GiB (they
    are C ints), and DenseNet-BC-100's step at batch 64 holds its 2.1 GiB of
    temporaries in one block: 544,000 faults and 1.40 s a step that way, ~100 and
    0.90 s this way. The process keeps its peak heap mapped. glibc's secondary
    arenas (JAX's asynchronous dispatch threads) still map blocks above 64 MB:
    see :func:`dispatch_cpu_inline`. Returns False (and changes nothing) where the
    C library is not glibc.
    """
    mallopt = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))


def release_free_memory() -> bool:
    """Hand the free memory of glibc's main heap back to the system (``malloc_trim``); call after compiling.

    Compiling a step takes far more memory than running it, and glibc keeps what
    was freed mapped (with :func:`tune_cpu_malloc`, by design; without it, whenever a
    live block sits above the freed ones): a cold GoogLeNet process held 1.6 GiB above
    its imports after its first step, 1.3 GiB of it free, and 0.6 GiB once released. The next
    step faults its temporaries back in once (~50 ms there); later steps keep them,
    at the same speed. Returns False (and does nothing) where the C library is not glibc.
    """
    malloc_trim = _libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def _libc_function(name: str, argtypes: list, restype):
    """The C library's function ``name``, typed; None where it has none (glibc's ``mallopt`` and ``malloc_trim``
    are not in every C library)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


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


# A model's initialiser is a few hundred small kernels (a random draw per parameter), run once
# and compiled once per configuration, so its compile time is all that counts. At LLVM's -O1
# instead of -O2, XLA:CPU compiles every zoo model's to the same values in 0.4-0.9x the time.
ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def jit_once(fun, **kwargs):
    """``jax.jit(fun, **kwargs)`` for a program a process runs once, such as a model's initialiser.

    On the CPU it is compiled with :data:`ONCE_COMPILER_OPTIONS`, less optimisation
    for less compile time: ResNet-50's ``create_train_state`` (SGD with momentum) in
    3.5 s instead of 6.2 s, GoogLeNet's in 6.4 s instead of 12.3 s, to identical
    values (checked bit for bit on every zoo model; ``tests/test_runtime.py`` keeps
    checking two). Elsewhere it is plain ``jax.jit``.
    """
    options = ONCE_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fun, compiler_options=options, **kwargs)


# --- the per-machine cache ------------------------------------------------------------------

CACHE_DIR_ENV = "JAXCNN_CACHE_DIR"


def cache_dir() -> str | None:
    """The directory of jaxcnn's per-machine cache, or None where it is turned off.

    ``$JAXCNN_CACHE_DIR`` if set (set but empty turns the cache off), else
    ``$XDG_CACHE_HOME/jaxcnn``, else ``~/.cache/jaxcnn``. It holds the convolution
    plans ``conv_backend="auto"`` measured (:func:`read_machine_table`) and, once
    :func:`enable_compilation_cache` ran, JAX's compiled programs. Deleting it is
    always safe: what was in it is measured or compiled again.
    """
    if CACHE_DIR_ENV in os.environ:
        return os.environ[CACHE_DIR_ENV] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxcnn")


def enable_compilation_cache() -> str | None:
    """Keep compiled programs in ``cache_dir()/xla`` (JAX's persistent compilation cache); return the path.

    A directory the user already gave JAX (``jax_compilation_cache_dir``) is kept
    as is; with the cache turned off nothing changes and None is returned. With
    it and the plans cache, a fresh process goes from ResNet-20's initialised
    state to its first ``auto`` step in 2.8 s instead of 33 s (``benchmarks/startup.py``).
    """
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    root = cache_dir()
    if root is None:
        return None
    path = os.path.join(root, "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` field of ``/proc/cpuinfo`` (e.g. ``"model name"``, ``"flags"``), or None
    where there is no such field or file. The name must match whole: ``"model"`` is not ``"model name"``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                field, colon, value = line.partition(":")
                if colon and field.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def machine_fingerprint() -> dict:
    """What a measured speed depends on besides the problem: processor, cores, software, XLA options."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return {
        "cpu": cpu_model(), "cores": cores, "platform": device.platform, "device": device.device_kind,
        "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "compiler_options": cpu_compiler_options(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _table_path(name: str) -> str | None:
    root = cache_dir()
    if root is None:
        return None
    digest = hashlib.sha256(json.dumps(machine_fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(root, f"{name}-{digest}.json")


def write_json_atomically(path: str, payload) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file and a rename: a reader sees
    the old file or the new one, never half of one (a killed run, two processes writing)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _read_table(path: str | None) -> dict:
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
        if not isinstance(table, dict):
            raise ValueError(f"expected a JSON object, got {type(table).__name__}")
        return table
    except (OSError, ValueError) as error:
        warnings.warn(f"jaxcnn: ignoring the unreadable cache file {path}: {error}", RuntimeWarning, stacklevel=3)
        return {}


def read_machine_table(name: str) -> dict:
    """The JSON table ``name`` this machine (:func:`machine_fingerprint`) stored, or ``{}``.

    ``{}`` too where the cache is off, the file is missing, or it cannot be read
    (a warning says which file and why; the next write replaces it).
    """
    return _read_table(_table_path(name))


def update_machine_table(name: str, section: str, key: str, value) -> None:
    """Set ``table[section][key] = value`` in the table ``name`` of this machine, atomically.

    The file is re-read first, so entries other processes wrote meanwhile are kept,
    and replaced whole by a rename (:func:`write_json_atomically`). A cache that
    cannot be written (a read-only home) only warns: the value stays unsaved.
    """
    path = _table_path(name)
    if path is None:
        return
    table = _read_table(path)
    table["machine"] = machine_fingerprint()
    section_table = table.get(section)
    table[section] = {**(section_table if isinstance(section_table, dict) else {}), key: value}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json_atomically(path, table)
    except OSError as error:
        warnings.warn(f"jaxcnn: could not write the cache file {path}: {error}", RuntimeWarning, stacklevel=2)
