"""jaxcnn.ops.onednn: oneDNN's convolution passes as XLA FFI kernels, every pass against the float64 loops."""

import os
import platform
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import runtime
from jaxcnn.ops import autotune, onednn
from jaxcnn.ops.im2col import Window
from tests.ops.helpers import assert_close, loop_reference_case, nchw_to, oihw_to, to_nchw, to_oihw
from tests.ops.test_autotune import GEOMETRIES

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN's kernels could not be built here")


def _case(geometry):
    _, _, stride, pads, dilation, groups = geometry
    (x, w, dy), refs = loop_reference_case(geometry)
    xl, wl, dyl = nchw_to(x, "NHWC"), oihw_to(w, "NHWC"), nchw_to(dy, "NHWC")
    return xl, wl, dyl, Window(wl.shape[:2], stride, dilation, pads, xl.shape[1:3]), groups, refs


def test_the_kernels_build_on_this_projects_machines():
    """x86-64 Linux with a C++ compiler (CI's machine) builds them; a failure there is a regression to see."""
    if jax.default_backend() == "cpu" and platform.system() == "Linux" and platform.machine() == "x86_64" \
            and shutil.which(os.environ.get("CXX", "g++")):
        assert onednn.available()


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"x{g[0]}w{g[1]}s{g[2]}d{g[4]}g{g[5]}")
def test_every_pass_matches_the_loop_reference(geometry):
    x, w, dy, window, groups, (y_ref, dx_ref, dw_ref) = _case(geometry)
    assert_close(to_nchw(jax.jit(onednn.onednn_forward, static_argnums=(2, 3))(x, w, window, groups), "NHWC"), y_ref)
    dx = jax.jit(onednn.onednn_grad_input, static_argnums=(2, 3))(dy, w, window, groups)
    assert_close(to_nchw(dx, "NHWC"), dx_ref)
    dw = jax.jit(onednn.onednn_grad_weight, static_argnums=(2, 3, 4))(x, dy, w.shape, window, groups)
    assert_close(to_oihw(dw, "NHWC"), dw_ref)


@needs_onednn
@pytest.mark.parametrize("batch", [3, 5])
def test_a_batch_split_unevenly_over_xlas_threads_matches_the_loop_reference(batch):
    """Each call splits its batch into one chunk per thread of XLA's pool (here 1 and 2, or 2 and 3
    examples); 16 -> 32 channels get a kernel in oneDNN's blocked layout, reordered once for all
    chunks, and dW is the sum of the chunks' partial gradients."""
    geometry = ((batch, 16, 6, 5), (32, 16, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    test_every_pass_matches_the_loop_reference(geometry)


# Runs the three passes on the calling thread (inline dispatch) after setting that thread's OpenMP
# team size to 3 through libgomp, the OpenMP runtime libdnnl loads, and prints the size after.
_OMP_PROBE = textwrap.dedent("""
    import ctypes
    import jax, jax.numpy as jnp
    from jaxcnn import runtime
    runtime.dispatch_cpu_inline()
    from jaxcnn.ops import onednn
    from jaxcnn.ops.im2col import Window
    assert onednn.available()
    gomp = ctypes.CDLL("libgomp.so.1")
    gomp.omp_set_num_threads(3)
    window = Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (8, 8))
    x, w, dy = jnp.ones((4, 8, 8, 16)), jnp.ones((3, 3, 16, 32)), jnp.ones((4, 8, 8, 32))
    jax.jit(lambda a, b: onednn.onednn_forward(a, b, window, 1))(x, w).block_until_ready()
    jax.jit(lambda d, b: onednn.onednn_grad_input(d, b, window, 1))(dy, w).block_until_ready()
    jax.jit(lambda a, d: onednn.onednn_grad_weight(a, d, w.shape, window, 1))(x, dy).block_until_ready()
    print(gomp.omp_get_max_threads())
""")


@needs_onednn
def test_the_kernels_leave_the_calling_threads_openmp_setting_as_it_was():
    """The kernels run oneDNN single-threaded per chunk, but JAX may run them on the user's thread,
    where other OpenMP code (PyTorch's) reads the team size: it must come back as it was."""
    out = subprocess.run([sys.executable, "-c", _OMP_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.stdout.split()[-1] == "3"


# With XLA's pool at 4 threads (XLA reads NPROC), a batch of 10 is cut into chunks of 2 and 3
# examples, run by the caller and up to three helpers. Prints the pool's size, then each pass's
# largest difference from lax's convolution (highest precision), relative to its largest value.
_FOUR_THREADS_PROBE = textwrap.dedent("""
    import os
    import jax, jax.numpy as jnp
    from jax import lax
    from jaxcnn.ops import onednn
    from jaxcnn.ops.im2col import Window
    assert onednn.available()
    window = Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (6, 5))
    keys = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(keys[0], (10, 6, 5, 16)), jax.random.normal(keys[1], (3, 3, 16, 32))
    dy = jax.random.normal(keys[2], (10, 6, 5, 32))
    conv = lambda a, b: lax.conv_general_dilated(a, b, (1, 1), ((1, 1), (1, 1)), precision="highest",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(conv, x, w)
    dx, dw = vjp(dy)
    got = [jax.jit(lambda a, b: onednn.onednn_forward(a, b, window, 1))(x, w),
           jax.jit(lambda d, b: onednn.onednn_grad_input(d, b, window, 1))(dy, w),
           jax.jit(lambda a, d: onednn.onednn_grad_weight(a, d, w.shape, window, 1))(x, dy)]
    threads = sum("Eigen" in open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task"))
    print(threads, *(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(got, (y, dx, dw))))
""")


@needs_onednn
def test_a_batch_split_over_four_threads_matches_lax():
    out = subprocess.run([sys.executable, "-c", _FOUR_THREADS_PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "NPROC": "4"})
    threads, *errors = out.stdout.split()[-4:]
    if threads == "0":
        pytest.skip("XLA's pool threads are not named as this test expects")
    assert threads == "4"
    assert max(map(float, errors)) < 1e-5, errors


@needs_onednn
def test_the_kernels_are_what_runs():
    """The compiled programs call oneDNN's handlers, not a lax convolution."""
    x, w, dy, window, groups, _ = _case(GEOMETRIES[1])
    programs = {
        onednn.FORWARD_TARGET: jax.jit(onednn.onednn_forward, static_argnums=(2, 3)).lower(x, w, window, groups),
        onednn.GRAD_INPUT_TARGET: jax.jit(onednn.onednn_grad_input, static_argnums=(2, 3)).lower(dy, w, window, groups),
        onednn.GRAD_WEIGHT_TARGET: jax.jit(onednn.onednn_grad_weight, static_argnums=(2, 3, 4)).lower(
            x, dy, w.shape, window, groups),
    }
    for target, lowered in programs.items():
        text = lowered.compile().as_text()
        assert target in text and "convolution(" not in text


@needs_onednn
def test_second_derivatives_and_vmap_equal_lax():
    """Each pass's tangents are lax convolutions, and vmap runs the kernels per example: both exact."""
    x, w, dy, window, groups, _ = _case(GEOMETRIES[2])

    def lax_forward(a, b):
        return autotune._xla_forward(a, b, window, groups)

    def loss(fn):
        return lambda a, b: jnp.sum(jnp.sin(fn(a, b)) * dy)

    def curvature(fn):
        return jax.grad(lambda a: jnp.sum(jax.grad(loss(fn), 1)(a, w) ** 2))(x)

    ours = lambda a, b: onednn.onednn_forward(a, b, window, groups)  # noqa: E731
    np.testing.assert_allclose(curvature(ours), curvature(lax_forward), rtol=1e-5, atol=1e-5)
    batched = jax.vmap(lambda a: ours(a[None], w)[0])(x)
    np.testing.assert_allclose(batched, lax_forward(x, w), rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES[1:4], ids=["strided", "dilated", "grouped"])
def test_the_gradient_passes_have_lax_tangents(geometry):
    """jvp of dx and dW (what a second derivative of a conv2d_auto loss differentiates) equals lax's."""
    x, w, dy, window, groups, _ = _case(geometry)
    rng = np.random.default_rng(1)
    tx, tw, tdy = (rng.standard_normal(a.shape).astype(np.float32) for a in (x, w, dy))
    pairs = [
        (lambda d, k: onednn.onednn_grad_input(d, k, window, groups),
         lambda d, k: autotune._xla_grad_input(x, k, d, window, groups), (dy, w), (tdy, tw)),
        (lambda a, d: onednn.onednn_grad_weight(a, d, w.shape, window, groups),
         lambda a, d: autotune._xla_grad_weight(a, w, d, window, groups), (x, dy), (tx, tdy)),
    ]
    for ours, lax_, primals, tangents in pairs:
        for got, want in zip(jax.jvp(ours, primals, tangents), jax.jvp(lax_, primals, tangents)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_missing_compiler_or_package_is_one_clear_message(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(onednn.BuildError, match="no C\\+\\+ compiler 'no-such-compiler-xyz' on PATH"):
        onednn.build()
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(onednn, "ONEDNN_HEADERS", "no-such-onednn-headers")
    with pytest.raises(onednn.BuildError, match="'no-such-onednn-headers' is not installed"):
        onednn.build()


def test_a_failed_build_warns_once_and_leaves_no_library(tmp_path, monkeypatch):
    """A compiler that fails: BuildError with its output, no half-written library, and available() is False."""
    monkeypatch.setenv(runtime.CACHE_DIR_ENV, str(tmp_path))
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'error: the compiler broke' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    with pytest.raises(onednn.BuildError, match="the compiler broke"):
        onednn.build()
    assert list(tmp_path.iterdir()) == [compiler]
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with pytest.warns(RuntimeWarning, match="FFI kernels .* are not used: compiling"):
        assert onednn.available.__wrapped__() is False


@needs_onednn
def test_the_library_is_built_once_per_machine_and_software(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_DIR_ENV, str(tmp_path))
    path = onednn.build()
    assert path.startswith(str(tmp_path)) and os.path.exists(path)
    monkeypatch.setattr(onednn.subprocess, "run", lambda *a, **k: pytest.fail("compiled again"))
    assert onednn.build() == path


@needs_onednn
@pytest.mark.skipif(not onednn.native_bfloat16(), reason="this CPU has no native bfloat16 products")
@pytest.mark.parametrize("geometry", [*GEOMETRIES, ((5, 16, 6, 5), (32, 16, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1)],
                         ids=lambda g: f"x{g[0]}w{g[1]}s{g[2]}d{g[4]}g{g[5]}")
def test_bfloat16_passes_match_float32_lax_on_the_same_values(geometry):
    """bfloat16 in, bfloat16 out, products accumulated in float32: each pass equals lax's float32 pass on
    the bfloat16-rounded operands to within one bfloat16 rounding (the weight gradient's chunks are summed
    in float32 and rounded once)."""
    x, w, dy, window, groups, _ = _case(geometry)
    xb, wb, dyb = (jnp.asarray(a, jnp.bfloat16) for a in (x, w, dy))
    x32, w32, dy32 = (jnp.asarray(a, jnp.float32) for a in (xb, wb, dyb))
    assert onednn.usable(jnp.bfloat16)
    for got, want in [
        (jax.jit(onednn.onednn_forward, static_argnums=(2, 3))(xb, wb, window, groups),
         autotune._xla_forward(x32, w32, window, groups)),
        (jax.jit(onednn.onednn_grad_input, static_argnums=(2, 3))(dyb, wb, window, groups),
         autotune._xla_grad_input(x32, w32, dy32, window, groups)),
        (jax.jit(onednn.onednn_grad_weight, static_argnums=(2, 3, 4))(xb, dyb, w.shape, window, groups),
         autotune._xla_grad_weight(x32, w32, dy32, window, groups)),
    ]:
        assert got.dtype == jnp.bfloat16
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0, atol=2 ** -8 * scale)


def test_bfloat16_takes_the_lax_formulation_without_native_bfloat16_products(monkeypatch):
    monkeypatch.setattr(onednn, "native_bfloat16", lambda: False)
    assert not onednn.usable(jnp.bfloat16)
    assert onednn.usable(jnp.float32) == onednn.available()
    assert "onednn" not in autotune.candidates(Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (8, 8)),
                                               (3, 3, 16, 16), jnp.bfloat16, 1)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float16])
def test_other_dtypes_take_the_lax_formulation(dtype):
    """oneDNN is used for float32 and bfloat16 only: a plan naming it computes lax's values, bit for bit,
    otherwise."""
    x, w, dy, window, groups, _ = _case(GEOMETRIES[0])
    with jax.enable_x64(dtype == jnp.float64):
        x, w, dy = (jnp.asarray(a, dtype) for a in (x, w, dy))
        assert not onednn.usable(dtype)
        for table in (autotune.FORWARD, autotune.GRAD_WEIGHT, autotune.GRAD_INPUT):
            args = (x, w) if table is autotune.FORWARD else (x, w, dy)
            ours, lax_ = (jax.jit(table[name], static_argnums=(len(args), len(args) + 1))(*args, window, groups)
                          for name in ("onednn", "xla"))
            assert ours.dtype == dtype
            np.testing.assert_array_equal(np.asarray(ours, np.float64), np.asarray(lax_, np.float64))


def test_float32_without_the_kernels_takes_the_lax_formulation(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    x, w, _, window, groups, _ = _case(GEOMETRIES[3])
    text = jax.jit(autotune.FORWARD["onednn"], static_argnums=(2, 3)).lower(x, w, window, groups).as_text()
    assert onednn.FORWARD_TARGET not in text
    np.testing.assert_array_equal(autotune.FORWARD["onednn"](x, w, window, groups),
                                  autotune.FORWARD["xla"](x, w, window, groups))


@needs_onednn
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
def test_a_batch_sharded_jit_runs_each_kernel_on_its_shard():
    """Under jit data parallelism each device convolves its own examples: no gather of the batch,
    and the weight gradient is summed across devices (one all-reduce)."""
    x, w, dy, window, groups, _ = _case(GEOMETRIES[3])
    devices = np.array(jax.devices()[:2])
    mesh = jax.sharding.Mesh(devices, ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    xs, dys = jax.device_put(x, batch), jax.device_put(dy, batch)
    passes = [
        (lambda a, d: onednn.onednn_forward(a, w, window, groups), autotune._xla_forward(x, w, window, groups)),
        (lambda a, d: onednn.onednn_grad_input(d, w, window, groups),
         autotune._xla_grad_input(x, w, dy, window, groups)),
        (lambda a, d: onednn.onednn_grad_weight(a, d, w.shape, window, groups),
         autotune._xla_grad_weight(x, w, dy, window, groups)),
    ]
    for i, (fn, want) in enumerate(passes):
        compiled = jax.jit(fn).lower(xs, dys).compile()
        text = compiled.as_text()
        assert "all-gather" not in text and ("all-reduce" in text) == (i == 2)
        got = compiled(xs, dys)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert tuple(got.sharding.spec) == (() if i == 2 else ("data",))


def test_a_wrong_dtype_or_missing_kernels_is_a_clear_error(monkeypatch):
    x, w, dy, window, groups, _ = _case(GEOMETRIES[0])
    with pytest.raises(TypeError, match="jaxcnn_onednn_grad_input: dy must be float32 or bfloat16 .* got float16"):
        onednn.onednn_grad_input(dy.astype(np.float16), w, window, groups)
    with pytest.raises(TypeError, match="jaxcnn_onednn_forward: x and w must have one dtype, got bfloat16 and float32"):
        onednn.onednn_forward(jnp.asarray(x, jnp.bfloat16), w, window, groups)
    monkeypatch.setattr(onednn, "available", lambda: False)
    with pytest.raises(onednn.BuildError, match="jaxcnn_onednn_forward: oneDNN's kernels run on"):
        onednn.onednn_forward(x, w, window, groups)
