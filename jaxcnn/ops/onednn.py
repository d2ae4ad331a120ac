"""Convolutions on oneDNN, the library PyTorch's CPU convolutions run on, as XLA FFI kernels.

On this project's 2-core AVX-512 machine oneDNN's kernels run LeNet-5's and
ResNet-20's convolutions at PyTorch's speed: the forward 1.4-9x, the input
gradient 1.4-3x and the weight gradient 1.7-7x faster than XLA:CPU's
convolutions (``benchmarks/ops.py --only passes``, ``benchmarks/RESULTS.md``).
This module brings all three passes to JAX: ``onednn_kernels.cc``, beside it,
defines one XLA FFI handler per pass over jaxcnn's layouts (NHWC activations,
HWIO kernels, float32 or bfloat16, any stride, padding, dilation and group
count; a bfloat16 weight gradient is accumulated in float32 and rounded once), and
:func:`available` compiles it once per machine and software with the system's
C++ compiler against oneDNN from PyPI (``onednn-cpu-gomp`` and its headers,
``onednn-devel-cpu-gomp``: dependencies of jaxcnn on x86-64 Linux) and XLA's
FFI headers from jaxlib, keeps the library in jaxcnn's cache directory, and
registers the handlers. One more handler, :func:`stored`, returns its input
as it is (aliased): a value XLA cannot fuse into its consumers; two more run
a 2-D max pool and its gradient (:func:`max_pool`, plain loops over channels-last
rows, for ``max_pool2d_auto``); and two more BatchNorm's per-channel sums
(:func:`channel_moments`, :func:`channel_grad_sums`, for ``jaxcnn.ops.norm``).

``conv2d_auto`` measures the ``"onednn"`` formulation of each pass beside the
others where :func:`usable` says so: float32 on the CPU, the kernels built, and
bfloat16 too where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX: a
bfloat16 ResNet-20 step 2.6x faster than on XLA's bfloat16 convolutions, at
PyTorch's autocast speed, ``benchmarks/RESULTS.md``).
Anywhere else (no compiler, no oneDNN wheel for this platform, another backend
or dtype) a plan naming ``"onednn"`` computes lax's values instead, and the
reason is given once, as a warning. Differentiating a pass (a second derivative
through ``conv2d_auto``) uses lax convolutions for its tangents: each pass is
linear in each of its arrays, so every derivative stays exact. Under ``vmap``
the kernels run once per example; under a jit whose batch is sharded over
devices, each device runs them on its own examples.

Threads: each call splits its batch into one chunk per thread of XLA's intra-op
pool and runs oneDNN single-threaded on each chunk, on the calling thread and on
helpers it schedules on that pool; a chunk no idle thread has claimed, the caller
runs itself. oneDNN's own OpenMP team competed for the two cores with the XLA
thunks running beside a call: GoogLeNet's step took 1.19-1.25x longer, ResNet-50's
1.04-1.08x (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import importlib.metadata
import math
import os
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.custom_batching
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import runtime
from jaxcnn.ops import lax_passes
from jaxcnn.ops.im2col import Window
from jaxcnn.ops.pool import pick_taps

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_kernels.cc")
ONEDNN_LIBRARY, ONEDNN_HEADERS = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"  # PyPI distributions
# FFI target name -> the handler symbol onednn_kernels.cc exports.
FORWARD_TARGET, GRAD_INPUT_TARGET, GRAD_WEIGHT_TARGET = (
    "jaxcnn_onednn_forward", "jaxcnn_onednn_grad_input", "jaxcnn_onednn_grad_weight")
STORED_TARGET = "jaxcnn_stored"
MAX_POOL_TARGET, MAX_POOL_GRAD_TARGET = "jaxcnn_max_pool", "jaxcnn_max_pool_grad"
CHANNEL_MOMENTS_TARGET, CHANNEL_GRAD_SUMS_TARGET = "jaxcnn_channel_moments", "jaxcnn_channel_grad_sums"
CHANNEL_RELU_GRAD_SUMS_TARGET = "jaxcnn_channel_relu_grad_sums"
HANDLERS = {FORWARD_TARGET: "JaxcnnOnednnForward", GRAD_INPUT_TARGET: "JaxcnnOnednnGradInput",
            GRAD_WEIGHT_TARGET: "JaxcnnOnednnGradWeight", STORED_TARGET: "JaxcnnStored",
            MAX_POOL_TARGET: "JaxcnnMaxPool", MAX_POOL_GRAD_TARGET: "JaxcnnMaxPoolGrad",
            CHANNEL_MOMENTS_TARGET: "JaxcnnChannelMoments", CHANNEL_GRAD_SUMS_TARGET: "JaxcnnChannelGradSums",
            CHANNEL_RELU_GRAD_SUMS_TARGET: "JaxcnnChannelReluGradSums"}


class BuildError(RuntimeError):
    """The oneDNN kernels could not be compiled or loaded here; the message says why."""


# --- building the kernels ------------------------------------------------------------------------


def _distribution_dir(distribution: str, marker: str) -> str:
    """The directory holding ``marker`` (a path suffix) among the files ``distribution`` installed."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise BuildError(f"the Python package {distribution!r} is not installed (jaxcnn depends on it on "
                         "x86-64 Linux; elsewhere oneDNN's kernels are not built)") from None
    for file in files:
        path = str(file).replace(os.sep, "/")
        if path.endswith(marker):
            return str(file.locate())[: -len(marker)].rstrip("/" + os.sep)
    raise BuildError(f"the Python package {distribution!r} has no file {marker!r}")


def onednn_dirs() -> tuple[str, str]:
    """``(include_dir, lib_dir)`` of the oneDNN that jaxcnn compiles its kernels against."""
    return (_distribution_dir(ONEDNN_HEADERS, "oneapi/dnnl/dnnl.hpp"),
            _distribution_dir(ONEDNN_LIBRARY, "libdnnl.so"))


def _compiler() -> str:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise BuildError(f"no C++ compiler {compiler!r} on PATH (set $CXX to one)")
    return compiler


def _compile_command(compiler: str, include_dir: str, lib_dir: str, output: str) -> list[str]:
    # -O3: GCC 12 vectorizes the max pool's channel loops only there (at -O2 they ran 9-20x slower)
    return [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-w", "-I", jax.ffi.include_dir(), "-I", include_dir,
            SOURCE, "-o", output, f"-L{lib_dir}", "-ldnnl", f"-Wl,-rpath,{lib_dir}"]


def _library_path(command: list[str]) -> str:
    """Where the kernels compiled by ``command`` live: named by a digest of what they are built from.

    In ``jaxcnn.runtime.cache_dir()``, or a per-process temporary directory where
    that cache is turned off.
    """
    with open(SOURCE, "rb") as f:
        source = f.read()
    recipe = repr((command, jaxlib.__version__, importlib.metadata.version(ONEDNN_LIBRARY))).encode()
    digest = hashlib.sha256(source + recipe).hexdigest()[:16]
    root = runtime.cache_dir() or _process_temp_dir()
    return os.path.join(root, f"onednn-kernels-{digest}.so")


@functools.cache
def _process_temp_dir() -> str:
    path = tempfile.mkdtemp(prefix="jaxcnn-onednn-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def build() -> str:
    """Compile ``onednn_kernels.cc`` unless this compiler, oneDNN and jaxlib built it already; return the library.

    The compiler writes to a temporary name, renamed into place when done, so
    processes building at once, or one killed while building, leave either no
    library or a whole one. Raises :class:`BuildError` with the compiler's output.
    """
    compiler, (include_dir, lib_dir) = _compiler(), onednn_dirs()
    path = _library_path(_compile_command(compiler, include_dir, lib_dir, "-"))
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    result = subprocess.run(_compile_command(compiler, include_dir, lib_dir, tmp), capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"compiling {SOURCE} failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, path)
    return path


def _register(path: str) -> None:
    try:
        library = ctypes.CDLL(path)
    except OSError as error:
        raise BuildError(f"loading {path} failed: {error}") from None
    for target, symbol in HANDLERS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


@functools.cache
def available() -> bool:
    """Whether this process runs oneDNN's kernels: on the CPU backend, built (:func:`build`) and registered.

    Where they cannot be built or loaded, a ``RuntimeWarning`` says why, once per process.
    """
    if jax.default_backend() != "cpu":
        return False
    try:
        _register(build())
    except (BuildError, OSError) as error:
        warnings.warn(f"jaxcnn: its FFI kernels (oneDNN's convolutions, the stored-value barrier) are not used: "
                      f"{error}", RuntimeWarning, stacklevel=2)
        return False
    return True


# CPU features with which oneDNN computes bfloat16 convolutions natively (without them it emulates them).
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 products natively (:data:`BFLOAT16_CPU_FLAGS`, read from
    ``/proc/cpuinfo``; False where that file is missing)."""
    flags = (runtime.cpuinfo_field("flags") or "").split()
    return any(flag in flags for flag in BFLOAT16_CPU_FLAGS)


def usable(dtype) -> bool:
    """Whether ``conv2d_auto`` may compute ``dtype`` convolutions here with oneDNN: float32, or bfloat16 on
    a CPU with native bfloat16 products (:func:`native_bfloat16`), once :func:`available`."""
    dtype = jnp.dtype(dtype)
    return (dtype == jnp.float32 or (dtype == jnp.bfloat16 and native_bfloat16())) and available()


def takes(x) -> bool:
    """Whether jaxcnn's FFI kernels run here on ``x``: the CPU backend, the kernels built (:func:`available`),
    and ``x`` not varying over ``shard_map`` axes (an FFI call's result would not be typed as varying)."""
    return jax.default_backend() == "cpu" and not jax.typeof(x).manual_axis_type.varying and available()


# --- the three passes ---------------------------------------------------------------------------


KERNEL_DTYPES = (jnp.float32, jnp.bfloat16)


def _kernel(target: str, out_shape, a, b, window: Window, groups: int, names: tuple[str, str]):
    for name, array in zip(names, (a, b)):
        if jnp.dtype(array.dtype) not in KERNEL_DTYPES:
            raise TypeError(f"{target}: {name} must be float32 or bfloat16 (oneDNN's kernels here), got {array.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"{target}: {names[0]} and {names[1]} must have one dtype, got {a.dtype} and {b.dtype}")
    if not available():
        where = ("the CPU backend only" if jax.default_backend() != "cpu"
                 else "this process only once built (see the warning above)")
        raise BuildError(f"{target}: oneDNN's kernels run on {where}; jaxcnn.ops.onednn.usable(dtype) says where")
    return _batch_partitioned(target, tuple(out_shape), window, groups)(a, b)


def _ffi(target: str, out_shape, a, b, window: Window, groups: int):
    (lo_h, hi_h), (lo_w, hi_w) = window.padding
    attribute = np.array([*window.stride, lo_h, hi_h, lo_w, hi_w, *window.dilation, groups], np.int64)
    out = jax.ShapeDtypeStruct(tuple(out_shape), a.dtype)
    return jax.ffi.ffi_call(target, out)(a, b, window=attribute)


# Each kernel's operands are batch-first; Shardy factors: the batch ``b`` only is shared, so a
# sharding propagates along the batch and nowhere else.
_SHARDING_RULES = {FORWARD_TARGET: "b h w c, k l i o -> b p q n", GRAD_INPUT_TARGET: "b p q o, k l i n -> b h w c",
                   GRAD_WEIGHT_TARGET: "b h w c, b p q o -> k l i n"}


def _batch_axes(sharding):
    """The mesh axes sharding an operand's batch (first) dimension, or None."""
    spec = getattr(sharding, "spec", ())
    return spec[0] if len(spec) else None


@functools.cache
def _batch_partitioned(target: str, out_shape, window: Window, groups: int):
    """A convolution pass as one XLA program partitions it over a batch-sharded mesh (jit data parallelism):
    each device runs it on its slice of the batch; the weight gradient, a sum over the batch, is then
    summed over the batch's devices."""
    reduces_batch = target == GRAD_WEIGHT_TARGET

    def local(a, b):
        return _ffi(target, out_shape if reduces_batch else (a.shape[0], *out_shape[1:]), a, b, window, groups)

    return _batch_sharded(local, (True, reduces_batch), _SHARDING_RULES[target], reduces_batch)


def _batch_sharded(local, batched_args: tuple[bool, ...], sharding_rule: str, reduces_batch: bool = False):
    """``local`` (FFI calls over batch-first arrays), run by each device on its slice of the batch.

    The operands flagged in ``batched_args`` are sharded as the first operand's
    batch, the others replicated; every result is sharded so too, or, where
    ``reduces_batch``, replicated and summed over the batch's devices. Without
    this XLA would gather the whole batch onto every device before the call.
    Under ``vmap`` the call runs once per mapped element.
    """

    def result_shardings(mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding)
        return jax.tree.map(lambda _: NamedSharding(mesh, P() if reduces_batch else P(axes)), result_shape)

    def partition(mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding)
        summed = reduces_batch and axes is not None
        arg_shardings = tuple(NamedSharding(mesh, P(axes) if batched else P()) for batched in batched_args)
        fn = (lambda *args: lax.psum(local(*args), axes)) if summed else local
        return mesh, fn, result_shardings(mesh, arg_shapes, result_shape), arg_shardings

    kernel = custom_partitioning(local)
    kernel.def_partition(infer_sharding_from_operands=result_shardings, partition=partition,
                         sharding_rule=sharding_rule)
    return jax.custom_batching.sequential_vmap(kernel)  # custom_partitioning has no batching rule


def _with_lax_tangents(kernel, reference, num_static: int):
    """``kernel(a, b, *static)``, differentiable: a pass linear in ``a`` and in ``b``, whose tangent is
    ``reference(da, b, *static) + reference(a, db, *static)`` with ``reference`` the same pass on lax
    (transposable, so second derivatives are exact)."""
    fn = jax.custom_jvp(kernel, nondiff_argnums=tuple(range(2, 2 + num_static)))

    def jvp(*args):
        *static, (a, b), (da, db) = args
        return fn(a, b, *static), reference(da, b, *static) + reference(a, db, *static)

    fn.defjvp(jvp)
    return fn


def _forward_kernel(x, w, window: Window, groups: int):
    """NHWC ``x`` convolved with HWIO ``w`` over ``window`` (zero padding): ``(N, OH, OW, O)``, both float32
    or both bfloat16."""
    return _kernel(FORWARD_TARGET, (x.shape[0], *window.out_size, w.shape[3]), x, w, window, groups, ("x", "w"))


def _grad_input_kernel(dy, w, window: Window, groups: int):
    """``dx`` of :func:`onednn_forward` for the cotangent ``dy`` ``(N, OH, OW, O)``: ``(N, H, W, C)``."""
    shape = lax_passes.input_shape(dy, w, window, groups)
    return _kernel(GRAD_INPUT_TARGET, shape, dy, w, window, groups, ("dy", "w"))


def _grad_weight_kernel(x, dy, w_shape, window: Window, groups: int):
    """``dW`` of :func:`onednn_forward` for the cotangent ``dy``: ``w_shape``, ``(KH, KW, C/G, O)``."""
    return _kernel(GRAD_WEIGHT_TARGET, w_shape, x, dy, window, groups, ("x", "dy"))


onednn_forward = _with_lax_tangents(_forward_kernel, lax_passes.forward, 2)
onednn_grad_input = _with_lax_tangents(_grad_input_kernel, lax_passes.grad_input, 2)
onednn_grad_weight = _with_lax_tangents(_grad_weight_kernel, lax_passes.grad_weight, 3)


# --- a value stored as it is --------------------------------------------------------------------


@jax.custom_jvp
def stored(x):
    """``x`` itself, as the output of an FFI call that aliases its input: exact for every value, and free.

    XLA never fuses a custom call, so the elementwise chain that produces ``x``
    runs once, into ``x``'s buffer, instead of again inside each consumer that
    reads ``x``; and the producer's loop runs over ``x``'s shape (see
    ``jaxcnn.ops._fusion``). Any dtype and shape. Its tangent is the input's
    tangent as is; it has no transpose, so it is not for values autodiff
    transposes (a tangent inside a JVP rule). Under ``vmap`` the batched array is
    stored whole; under a jit that shards ``x``, each device stores its own shard.
    Not under ``shard_map`` for an ``x`` that varies over its axes (the call's
    result would not). Requires :func:`available`.
    """
    if not available():
        raise BuildError(f"{STORED_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, once built")
    return _stored_batched(x)


@stored.defjvp
def _stored_jvp(primals, tangents):
    return stored(primals[0]), tangents[0]


@jax.custom_batching.custom_vmap
def _stored_batched(x):
    return _stored_partitioned(x.ndim)(x)


@_stored_batched.def_vmap
def _stored_vmap(axis_size, in_batched, x):
    return _stored_batched(x), in_batched[0]  # elementwise: the batched array is stored whole


@functools.cache
def _stored_partitioned(ndim: int):
    """The aliased FFI call, partitioned as its operand is (each device stores its own shard)."""

    def local(x):
        return jax.ffi.ffi_call(STORED_TARGET, jax.ShapeDtypeStruct(x.shape, x.dtype), input_output_aliases={0: 0})(x)

    def infer_sharding(mesh, arg_shapes, result_shape):
        return arg_shapes[0].sharding

    def partition(mesh, arg_shapes, result_shape):
        sharding = arg_shapes[0].sharding
        return mesh, local, sharding, (sharding,)

    factors = " ".join(f"d{i}" for i in range(ndim))
    kernel = custom_partitioning(local)
    kernel.def_partition(infer_sharding_from_operands=infer_sharding, partition=partition,
                         sharding_rule=f"{factors} -> {factors}")
    return kernel


# --- max pooling --------------------------------------------------------------------------------

MAX_POOL_TAPS = 256  # the tap index is stored as one byte
# The fewest float32 channels from which the FFI pool beats the lax formulation (benchmarks/RESULTS.md):
# below 16 channels (one AVX-512 vector of floats) the kernels' channel loops run scalar and the call per
# output and tap costs more than the work: 1.3-3.4x the lax formulation's time alone (LeNet-5's 6-channel
# S2: 2.8x). At 16 they ran 0.49-1.08x alone, but LeNet-5's step with its 16-channel S4 on them ran slower
# in two rounds of three (2.96, 3.00, 3.17 against 2.79, 2.69, 4.19 ms); from 32, 0.38-0.82x.
MAX_POOL_MIN_CHANNELS = 32


def max_pool_usable(x, window: Window) -> bool:
    """Whether ``max_pool2d_auto`` runs :func:`max_pool` on the channels-last 4-D ``x``: float32, at least
    :data:`MAX_POOL_MIN_CHANNELS` channels, at most ``MAX_POOL_TAPS`` taps per window, and :func:`takes`
    ``x``. (``max_pool2d_auto`` pools bfloat16 on the CPU as float32: faster than :func:`max_pool`'s
    bfloat16 kernels.)"""
    return (x.ndim == 4 and x.dtype == jnp.float32 and x.shape[-1] >= MAX_POOL_MIN_CHANNELS
            and math.prod(window.kernel_size) <= MAX_POOL_TAPS and takes(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, window: Window):
    """NHWC ``x`` (float32 or bfloat16) max-pooled over the 2-D ``window`` (padding reads as ``-inf``):
    ``(N, OH, OW, C)``.

    Equal to ``jaxcnn.ops.max_pool2d`` with that window, gradient included: each
    output's cotangent goes to its window's first maximum in row-major window
    order, or to its first NaN (NaN is the maximum, as in PyTorch). The forward
    stores that tap's index (one byte per output) and the gradient adds each
    cotangent to it, in two FFI calls that split the batch over XLA's CPU threads,
    instead of XLA's strided slices, selects and pads: forward + backward 2.4-4.2x
    faster on GoogLeNet's pools (``benchmarks/RESULTS.md``). Reverse mode only
    (a ``custom_vjp``, as ``conv2d_auto``); the gradient's own derivative is
    exact. A bfloat16 gradient sums each input's cotangents in float32 and rounds
    once. Requires :func:`max_pool_usable`.
    """
    return _max_pool_with_index(x, window)[0]


def _max_pool_bwd(window: Window, index, dy):
    return (max_pool_grad(dy, index, window),)


max_pool.defvjp(lambda x, window: _max_pool_with_index(x, window), _max_pool_bwd)


def _pool_attribute(window: Window):
    (top, bottom), (left, right) = window.padding
    return np.array([*window.kernel_size, *window.stride, top, bottom, left, right, *window.dilation], np.int64)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_with_index(x, window: Window):
    """:func:`max_pool`'s output and, per output, the index of the tap it came from (uint8)."""
    if not available():
        raise BuildError(f"{MAX_POOL_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, once built")
    return _max_pool_call(window)(x)


@_max_pool_with_index.defjvp
def _max_pool_with_index_jvp(window: Window, primals, tangents):
    y, index = _max_pool_with_index(primals[0], window)
    return (y, index), (pick_taps(tangents[0], index, window), np.zeros(index.shape, jax.dtypes.float0))


@functools.cache
def _max_pool_call(window: Window):
    def local(x):
        shape = (x.shape[0], *window.out_size, x.shape[3])
        results = (jax.ShapeDtypeStruct(shape, x.dtype), jax.ShapeDtypeStruct(shape, jnp.uint8))
        return tuple(jax.ffi.ffi_call(MAX_POOL_TARGET, results)(x, window=_pool_attribute(window)))

    return _batch_sharded(local, (True,), "b h w c -> b p q n, b p q n")


@functools.cache
def _max_pool_grad_call(window: Window):
    def local(dy, index):
        shape = (dy.shape[0], *window.in_size, dy.shape[3])
        return jax.ffi.ffi_call(MAX_POOL_GRAD_TARGET, jax.ShapeDtypeStruct(shape, dy.dtype))(
            dy, index, window=_pool_attribute(window))

    return _batch_sharded(local, (True, True), "b p q c, b p q d -> b h w n")


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def max_pool_grad(dy, index, window: Window):
    """The gradient of :func:`max_pool` for the cotangent ``dy`` and the forward's tap ``index``: ``(N, H, W, C)``.

    Linear in ``dy``; its tangent is computed by lax (the same sums as slices,
    selects and pads), so a second derivative is exact too.
    """
    if not available():
        raise BuildError(f"{MAX_POOL_GRAD_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, once built")
    return _max_pool_grad_call(window)(dy, index)


@max_pool_grad.defjvp
def _max_pool_grad_jvp(window: Window, primals, tangents):
    dy, index = primals
    return max_pool_grad(dy, index, window), _max_pool_grad_lax(tangents[0], index, window)


def _max_pool_grad_lax(dy, index, window: Window):
    """:func:`max_pool_grad` by lax: the transpose of picking each window's tap ``index``."""
    x_shape = jax.ShapeDtypeStruct((dy.shape[0], *window.in_size, dy.shape[3]), dy.dtype)
    return jax.linear_transpose(lambda x: pick_taps(x, index, window), x_shape)(dy)[0]


# --- per-channel sums for BatchNorm -------------------------------------------------------------


def sums_usable(*arrays) -> bool:
    """Whether :func:`channel_moments` / :func:`channel_grad_sums` run here on these channels-last arrays:
    at least 2-D, all float32 or all bfloat16, and :func:`takes` each."""
    dtypes = {jnp.dtype(a.dtype) for a in arrays}
    return (len(dtypes) == 1 and dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)}
            and all(a.ndim >= 2 for a in arrays) and all(takes(a) for a in arrays))


def _moments_reference(x):
    rows = x.astype(jnp.float32).reshape(-1, x.shape[-1])
    return jnp.stack([rows.sum(axis=0), jnp.square(rows).sum(axis=0)])


def _grad_sums_reference(dy, x, mean):
    dy, x = (a.astype(jnp.float32).reshape(-1, a.shape[-1]) for a in (dy, x))
    return jnp.stack([dy.sum(axis=0), (dy * (x - mean)).sum(axis=0)])


def _relu_grad_sums_reference(g, x, params):
    mean, mul, bias = params
    passed = (x.astype(jnp.float32) - mean) * mul + bias > 0
    return _grad_sums_reference(jnp.where(passed, g.astype(jnp.float32), 0.0), x, mean)


def _channels_rule(num_arrays: int, ndim: int, extra: str = "") -> str:
    """A Shardy rule for sums over ``num_arrays`` batch-first arrays of ``ndim`` dims (sharing the batch
    ``b`` only), ``extra`` operands after them, and one ``(2, C)`` result."""
    arrays = ", ".join("b " + " ".join(f"a{i}_{d}" for d in range(1, ndim)) for i in range(num_arrays))
    return f"{arrays}{extra} -> s n"


@functools.cache
def _moments_call(ndim: int):
    def local(x):
        return jax.ffi.ffi_call(CHANNEL_MOMENTS_TARGET, jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32))(x)

    return _batch_sharded(local, (True,), _channels_rule(1, ndim), reduces_batch=True)


@functools.cache
def _backward_sums_call(target: str, ndim: int, per_channel: str):
    """The backward's sums: ``target`` over a cotangent and ``x`` (batch-first, ``ndim`` dims) and one
    replicated per-channel operand (``per_channel``: its factors in the sharding rule)."""

    def local(dy, x, operand):
        return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((2, x.shape[-1]), jnp.float32))(dy, x, operand)

    return _batch_sharded(local, (True, True, False), _channels_rule(2, ndim, ", " + per_channel), reduces_batch=True)


@jax.custom_jvp
def channel_moments(x):
    """``(2, C)`` float32: the per-channel sums of channels-last ``x`` ``(N, ..., C)`` and of ``x²``.

    One FFI pass over ``x`` (float32 or bfloat16, read as it is), blocks of rows summed
    in float32 and added into float64 totals (see ``onednn_kernels.cc``): XLA:CPU's own
    sums first write a float32 copy of the summand (``x`` converted, ``x²``). Under a jit that shards the batch,
    each device sums its examples and the sums are added. Its tangent is lax's.
    Requires :func:`sums_usable`.
    """
    if not available():
        raise BuildError(f"{CHANNEL_MOMENTS_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, once built")
    return _moments_call(x.ndim)(x)


@channel_moments.defjvp
def _channel_moments_jvp(primals, tangents):
    return channel_moments(*primals), jax.jvp(_moments_reference, primals, tangents)[1]


@jax.custom_jvp
def channel_grad_sums(dy, x, mean):
    """``(2, C)`` float32: the per-channel sums of ``dy`` and of ``dy * (x - mean)``, BatchNorm's backward.

    ``dy``, ``x``: channels-last ``(N, ..., C)``, one shape, float32 or bfloat16;
    ``mean``: float32 ``(C,)``. One FFI pass, as :func:`channel_moments`.
    """
    if not available():
        raise BuildError(f"{CHANNEL_GRAD_SUMS_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, once built")
    return _backward_sums_call(CHANNEL_GRAD_SUMS_TARGET, x.ndim, "m")(dy, x, mean)


@channel_grad_sums.defjvp
def _channel_grad_sums_jvp(primals, tangents):
    return channel_grad_sums(*primals), jax.jvp(_grad_sums_reference, primals, tangents)[1]


@jax.custom_jvp
def channel_relu_grad_sums(g, x, params):
    """:func:`channel_grad_sums` for a BatchNorm followed by a ReLU, its ``dy`` never stored.

    ``g``: the ReLU's output cotangent; ``dy`` is ``g`` where ``(x - mean) * mul + bias > 0``
    (the ReLU's input, recomputed from ``x``), else 0. ``params``: float32 ``(3, C)``, the rows
    ``mean``, ``mul``, ``bias``. Returns ``(2, C)``: the sums of ``dy`` and of ``dy * (x - mean)``.
    """
    if not available():
        raise BuildError(f"{CHANNEL_RELU_GRAD_SUMS_TARGET}: jaxcnn's FFI kernels run on the CPU backend only, "
                         "once built")
    return _backward_sums_call(CHANNEL_RELU_GRAD_SUMS_TARGET, x.ndim, "p m")(g, x, params)


@channel_relu_grad_sums.defjvp
def _channel_relu_grad_sums_jvp(primals, tangents):
    return channel_relu_grad_sums(*primals), jax.jvp(_relu_grad_sums_reference, primals, tangents)[1]
