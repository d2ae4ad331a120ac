"""Finite differences (jax.test_util.check_grads), random configurations, and the gradcheck CLI."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxcnn import gradcheck, ops
from tests.ops.helpers import assert_close


def _f64(rng, *shapes):
    return [jnp.asarray(rng.standard_normal(s)) for s in shapes]


CHECK_CASES = [
    ("zeros-stride2", dict(stride=2, padding=1)),
    ("reflect-dilated", dict(padding=((2, 1), (1, 0)), padding_mode="reflect", dilation=2)),
    ("circular-groups", dict(padding=1, padding_mode="circular", groups=2)),
    ("replicate-same", dict(padding="SAME", padding_mode="replicate", stride=(2, 1))),
]


@pytest.mark.parametrize("kw", [c[1] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_conv_gradients_match_finite_differences_to_second_order(kw):
    """Orders 1 and 2 of a nonlinear loss through each conv, in float64.

    lax's conv is checked in forward and reverse mode; the im2col conv has a
    custom VJP, so reverse mode only (JAX cannot take the JVP of a custom_vjp).
    """
    with jax.enable_x64(True):
        groups = kw.get("groups", 1)
        x, w, b = _f64(np.random.default_rng(0), (1, 6, 5, 4), (3, 2, 4 // groups, 2), (2,))
        for fn, modes in ((ops.conv2d, ("fwd", "rev")), (ops.conv2d_im2col, ("rev",))):
            loss = jax.jit(lambda x_, w_, b_: jnp.sum(jnp.tanh(fn(x_, w_, b_, **kw))))
            check_grads(loss, (x, w, b), order=2, modes=modes)


@pytest.mark.parametrize("fn,kw", [
    (ops.max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
    (ops.max_pool2d_im2col, dict(kernel_size=2, stride=1, dilation=2, ceil_mode=True)),
    (ops.avg_pool2d, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    (ops.avg_pool2d_im2col, dict(kernel_size=2, padding=1)),
    (ops.lp_pool2d, dict(p=2, kernel_size=2)),
], ids=lambda v: getattr(v, "__name__", ""))
def test_pool_gradients_match_finite_differences(fn, kw):
    with jax.enable_x64(True):
        # distinct, well separated values: no max-pool ties for the differences to straddle
        x = jnp.asarray(np.random.default_rng(0).permutation(60).reshape(1, 6, 5, 2) / 10.0 + 0.5)
        check_grads(jax.jit(lambda v: jnp.sum(jnp.sin(fn(v, **kw)))), (x,), order=2, modes=("rev",),
                    eps=1e-4)


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    size = [draw(st.integers(max(1, d * (k - 1) + 1 - lo - hi, max(lo, hi) + 1), 7))
            for k, d, (lo, hi) in zip(kernel, dilation, pads)]
    channels_last = draw(st.booleans())
    n = draw(st.integers(1, 2))
    x_shape = (n, *size, c_in) if channels_last else (n, c_in, *size)
    w_shape = (*kernel, c_in // groups, c_out) if channels_last else (c_out, c_in // groups, *kernel)
    kw = dict(stride=stride, dilation=dilation, groups=groups, padding=pads, padding_mode=mode,
              data_format="NHWC" if channels_last else "NCHW")
    return x_shape, w_shape, c_out, kw


@given(conv_configs(), st.integers(0, 2**31 - 1))
def test_im2col_equals_lax_on_random_configurations(config, seed):
    x_shape, w_shape, c_out, kw = config
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, (c_out,)))

    def value_and_grads(fn):
        loss = lambda *a: jnp.sum(jnp.sin(fn(*a, **kw)))
        return jax.jit(lambda *a: (fn(*a, **kw), jax.grad(loss, (0, 1, 2))(*a)))(x, w, b)

    y_lax, g_lax = value_and_grads(ops.conv2d)
    y_im2col, g_im2col = value_and_grads(ops.conv2d_im2col)
    assert_close(y_im2col, y_lax, rtol=1e-5, atol=1e-6)
    for name, a, c in zip("xwb", g_im2col, g_lax):
        assert_close(a, c, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_gradcheck_random_cases_are_valid():
    rng = np.random.default_rng(0)
    for _ in range(200):
        case = gradcheck.random_conv_case(rng)
        jax.eval_shape(lambda x, w: ops.conv2d(x, w, **case.kwargs),
                       jax.ShapeDtypeStruct(case.x_shape, jnp.float32), jax.ShapeDtypeStruct(case.w_shape, jnp.float32))
        pool = gradcheck.random_pool_case(rng)
        fn = ops.max_pool2d if pool.kind == "max" else ops.avg_pool2d
        jax.eval_shape(lambda x: fn(x, **pool.kwargs), jax.ShapeDtypeStruct(pool.x_shape, jnp.float32))


def test_gradcheck_cli_prints_a_table_and_passes(capsys):
    assert gradcheck.main(["--num", "2", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "fd im2col" in out and "3 cases, 0 failed" in out


def test_gradcheck_cli_fails_on_a_wrong_gradient(monkeypatch, capsys):
    """A primitive whose backward is off by 0.1% must turn the check red."""

    @jax.custom_vjp
    def scaled_grad(x):
        return x

    scaled_grad.defvjp(lambda x: (x, None), lambda _, g: (g * 1.001,))
    real = ops.conv2d_im2col
    monkeypatch.setattr(gradcheck.ops, "conv2d_im2col", lambda x, *a, **k: real(scaled_grad(x), *a, **k))
    assert gradcheck.main(["--num", "1", "--seed", "0"]) == 1
    assert "FAIL" in capsys.readouterr().out
