"""jaxcnn.ops.onednn: oneDNN's convolution through XLA:CPU, every pass against the float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import runtime
from jaxcnn.ops import autotune, onednn
from jaxcnn.ops.im2col import Window
from tests.ops.helpers import assert_close, loop_reference_case, nchw_to, oihw_to, to_nchw, to_oihw
from tests.ops.test_autotune import GEOMETRIES

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this jaxlib's XLA:CPU runs no oneDNN convolution")


def _case(geometry):
    _, _, stride, pads, dilation, groups = geometry
    (x, w, dy), refs = loop_reference_case(geometry)
    xl, wl, dyl = nchw_to(x, "NHWC"), oihw_to(w, "NHWC"), nchw_to(dy, "NHWC")
    return xl, wl, dyl, Window(wl.shape[:2], stride, dilation, pads, xl.shape[1:3]), groups, refs


def test_the_jaxlib_of_this_project_runs_onednn_convolutions():
    """The CI machine's jaxlib (x86-64) links oneDNN; a failed probe there is a regression to see."""
    assert jax.default_backend() != "cpu" or onednn.available()


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
def test_the_custom_call_is_what_runs():
    """The compiled program calls oneDNN (not a lax fallback) for all three passes."""
    x, w, dy, window, groups, _ = _case(GEOMETRIES[1])
    programs = [
        jax.jit(onednn.onednn_forward, static_argnums=(2, 3)).lower(x, w, window, groups),
        jax.jit(onednn.onednn_grad_input, static_argnums=(2, 3)).lower(dy, w, window, groups),
        jax.jit(onednn.onednn_grad_weight, static_argnums=(2, 3, 4)).lower(x, dy, w.shape, window, groups),
    ]
    for lowered in programs:
        text = lowered.compile().as_text()
        assert onednn.TARGET in text and "convolution(" not in text


@needs_onednn
def test_second_derivatives_and_vmap_equal_lax():
    """conv_general's tangents are lax convolutions, and vmap runs lax: both exact."""
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


def test_a_config_xla_reads_differently_fails_the_probe_without_killing_the_caller():
    """Padding off by one aborts the compiling process (an uncaught oneDNN error): the child's, not ours."""
    shifted = ("from jaxcnn.ops import onednn as o; right = o._config; "
               "o._config = lambda s, p, d, sp, g: right(s, tuple((a + 1, b + 1) for a, b in p), d, sp, g); "
               "import sys; sys.exit(0 if o.probe() else 1)")
    assert onednn.probe_in_subprocess(shifted) is False
    assert onednn.probe_in_subprocess() is onednn.available()


def test_the_verdict_is_kept_in_the_machine_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runtime.CACHE_DIR_ENV, str(tmp_path))
    calls = []
    monkeypatch.setattr(onednn, "probe_in_subprocess", lambda: calls.append(1) or True)
    assert onednn.available.__wrapped__() and onednn.available.__wrapped__()
    assert calls == [1]
    assert runtime.read_machine_table(onednn.MACHINE_TABLE)["probe"] == {"passed": True}


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.bfloat16])
def test_other_dtypes_take_the_lax_formulation(dtype):
    """oneDNN is used for float32 only: a plan naming it computes lax's values, bit for bit, otherwise."""
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


def test_float32_off_the_probe_takes_the_lax_formulation(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    x, w, _, window, groups, _ = _case(GEOMETRIES[3])
    text = jax.jit(autotune.FORWARD["onednn"], static_argnums=(2, 3)).lower(x, w, window, groups).as_text()
    assert onednn.TARGET not in text
    np.testing.assert_array_equal(autotune.FORWARD["onednn"](x, w, window, groups),
                                  autotune.FORWARD["xla"](x, w, window, groups))
