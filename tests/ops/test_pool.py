"""Pooling against the float64 loop reference (PyTorch's definitions), forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from tests.ops import reference as ref
from tests.ops.helpers import assert_close, nchw_to, randn, to_nchw

# (id, x NCHW, kwargs); kernel/stride/padding/dilation given per dim for the reference
MAX_CASES = [
    ("2x2", (2, 3, 6, 6), dict(kernel_size=2)),
    ("3x3-s1", (1, 2, 5, 5), dict(kernel_size=3, stride=1)),
    ("resnet-stem", (2, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1)),
    ("ceil", (1, 2, 5, 5), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ("ceil-drops-window-in-padding", (1, 1, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("ceil-googlenet", (1, 2, 8, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("dilated", (1, 2, 7, 7), dict(kernel_size=2, stride=1, padding=1, dilation=2)),
    ("dilated-ceil", (1, 1, 8, 7), dict(kernel_size=3, stride=2, dilation=(2, 1), ceil_mode=True)),
    ("nonsquare", (1, 2, 5, 7), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1))),
    ("stride-gt-kernel", (1, 1, 7, 7), dict(kernel_size=2, stride=3)),
]
AVG_CASES = [
    ("2x2", (2, 3, 6, 6), dict(kernel_size=2)),
    ("s2-p1-include", (1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1)),
    ("s2-p1-exclude", (1, 2, 7, 7), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("ceil-include", (1, 2, 5, 5), dict(kernel_size=2, stride=2, ceil_mode=True)),
    ("ceil-pad-include", (1, 1, 6, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("ceil-pad-exclude", (1, 1, 6, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                            count_include_pad=False)),
    ("ceil-drops-window-in-padding", (1, 1, 5, 5), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ("nonsquare", (2, 2, 5, 8), dict(kernel_size=(3, 2), stride=(1, 3), padding=(1, 0))),
]


def _per_dim(v, ndim):
    return (v,) * ndim if isinstance(v, int) else tuple(v)


def _reference(kind, x, dy, kw):
    ndim = x.ndim - 2
    k = _per_dim(kw["kernel_size"], ndim)
    s = _per_dim(kw.get("stride") or k, ndim)
    p = _per_dim(kw.get("padding", 0), ndim)
    if kind == "max":
        return ref.max_pool_loops(x, k, s, p, _per_dim(kw.get("dilation", 1), ndim), kw.get("ceil_mode", False), dy)
    return ref.avg_pool_loops(x, k, s, p, kw.get("ceil_mode", False), kw.get("count_include_pad", True), dy)


def _forward_and_grad(fn, x, dy, kw, data_format):
    def run(x_, dy_):
        y, vjp = jax.vjp(lambda v: fn(v, data_format=data_format, **kw), x_)
        return y, vjp(dy_)[0]

    y, dx = jax.jit(run)(nchw_to(x, data_format), nchw_to(dy, data_format))
    return to_nchw(y, data_format), to_nchw(dx, data_format)


POOLS_2D = {"max": (ops.max_pool2d, ops.max_pool2d_im2col), "avg": (ops.avg_pool2d, ops.avg_pool2d_im2col)}


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kind,case", [("max", c) for c in MAX_CASES] + [("avg", c) for c in AVG_CASES],
                         ids=[f"max-{c[0]}" for c in MAX_CASES] + [f"avg-{c[0]}" for c in AVG_CASES])
def test_pool2d_and_im2col_match_loop_reference(kind, case, data_format):
    _, shape, kw = case
    x = randn(np.random.default_rng(0), shape)
    dy = randn(np.random.default_rng(1), _reference(kind, x, None, kw).shape)
    y_ref, dx_ref = _reference(kind, x, dy, kw)
    for fn in POOLS_2D[kind]:
        y, dx = _forward_and_grad(fn, x, dy, kw, data_format)
        assert_close(y, y_ref, err_msg=f"{fn.__name__} y")
        assert_close(dx, dx_ref, err_msg=f"{fn.__name__} dx")


ND_CASES = [
    ("max", ops.max_pool1d, "NWC", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max", ops.max_pool1d, "NCW", (1, 2, 10), dict(kernel_size=2, dilation=3)),
    ("avg", ops.avg_pool1d, "NCW", (2, 2, 9), dict(kernel_size=4, stride=3, padding=2, count_include_pad=False,
                                                   ceil_mode=True)),
    ("max", ops.max_pool3d, "NDHWC", (1, 2, 5, 6, 5), dict(kernel_size=(2, 3, 2), stride=2, padding=(1, 1, 0))),
    ("max", ops.max_pool3d, "NCDHW", (1, 1, 5, 5, 6), dict(kernel_size=2, dilation=2, ceil_mode=True, stride=2)),
    ("avg", ops.avg_pool3d, "NCDHW", (1, 2, 5, 4, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("avg", ops.avg_pool3d, "NDHWC", (1, 1, 4, 5, 6), dict(kernel_size=2, count_include_pad=False, padding=1)),
]


@pytest.mark.parametrize("kind,fn,data_format,shape,kw", ND_CASES,
                         ids=[f"{c[1].__name__}-{c[2]}-{i}" for i, c in enumerate(ND_CASES)])
def test_pool1d_pool3d_match_loop_reference(kind, fn, data_format, shape, kw):
    x = randn(np.random.default_rng(0), shape)
    dy = randn(np.random.default_rng(1), _reference(kind, x, None, kw).shape)
    y_ref, dx_ref = _reference(kind, x, dy, kw)
    y, dx = _forward_and_grad(fn, x, dy, kw, data_format)
    assert_close(y, y_ref)
    assert_close(dx, dx_ref)


def _spec(shape_nchw, kw, data_format, ndim=2):
    from jaxcnn.ops.pool import resolve_pool

    x = nchw_to(randn(np.random.default_rng(2), shape_nchw), data_format)
    kw = {"padding": 0, "dilation": 1, "ceil_mode": False, "stride": None, **kw}
    kw.pop("count_include_pad", None)
    return resolve_pool(x, ndim, kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"], kw["ceil_mode"],
                        data_format, "test")


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", MAX_CASES + AVG_CASES, ids=[f"max-{c[0]}" for c in MAX_CASES] +
                         [f"avg-{c[0]}" for c in AVG_CASES])
def test_the_cpu_tap_fold_equals_reduce_window(case, data_format):
    """Both forms of every window reduction (the CPU's fold over tap slices, lax.reduce_window elsewhere)
    agree: max exactly (also on -inf padding and NaN), sum to rounding. Either may serve a backend."""
    from jaxcnn.ops import pool

    _, shape, kw = case
    x, spec = _spec(shape, kw, data_format)
    x = jnp.asarray(x).at[(0,) * x.ndim].set(np.nan)
    for init, op in ((-jnp.inf, jax.lax.max), (0.0, jax.lax.add)):
        fold = jax.jit(lambda v, init=init, op=op: pool._tap_fold(v, spec, init, op))(x)
        window = jax.jit(lambda v, init=init, op=op: pool._reduce_window(v, spec, init, op))(x)
        if op is jax.lax.max:
            np.testing.assert_array_equal(fold, window)
        else:
            np.testing.assert_allclose(fold, window, rtol=1e-6, atol=1e-6)


def test_on_the_cpu_only_overlapping_windows_leave_reduce_window():
    """The fold where windows overlap (XLA:CPU's reduce_window was 1.7-10x slower there), reduce_window
    over disjoint windows (where the fold did not make a training step faster)."""
    x = jnp.ones((2, 9, 9, 4))

    def forward(**kw):
        return jax.jit(lambda v: ops.max_pool2d(v, **kw)).lower(x).as_text()

    assert "reduce_window" in forward(kernel_size=2) and "reduce_window" in forward(kernel_size=2, stride=3)
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=1),
               dict(kernel_size=2, stride=2, dilation=2)):
        assert "reduce_window" not in forward(**kw), kw


def test_textbook_max_pool_5x5_f3_s1():
    a = np.array([[1, 3, 2, 1, 3], [2, 9, 1, 1, 5], [1, 3, 2, 3, 2], [8, 3, 5, 1, 0], [5, 6, 1, 2, 9]], np.float32)
    x = a[None, :, :, None]
    expected = [[9, 9, 5], [9, 9, 5], [8, 6, 9]]
    for pool in (ops.max_pool2d, ops.max_pool2d_im2col):
        np.testing.assert_array_equal(pool(x, 3, 1)[0, :, :, 0], expected)
    avg = np.asarray(ops.avg_pool2d(x, 3, 1))[0, :, :, 0]
    np.testing.assert_allclose(avg[0, 0], (1 + 3 + 2 + 2 + 9 + 1 + 1 + 3 + 2) / 9, rtol=1e-6)
    np.testing.assert_allclose(avg, ref.avg_pool_loops(a[None, None], (3, 3), (1, 1), (0, 0))[0, 0], rtol=1e-6)


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.max_pool2d_im2col])
def test_max_pool_ties_send_the_gradient_to_the_first_maximum(pool):
    """Documented tie rule (PyTorch's): the first maximum in row-major window order wins."""
    x = np.zeros((1, 3, 3, 1), np.float32)
    dx = jax.grad(lambda v: pool(v, 2, 1).sum())(x)[0, :, :, 0]
    # windows start at (0,0), (0,1), (1,0), (1,1): each picks its top-left cell
    np.testing.assert_array_equal(dx, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_max_pool_gradient_goes_to_a_nan_as_in_pytorch():
    x = np.array([[1.0, np.nan], [3.0, 2.0]], np.float32)[None, :, :, None]
    y, vjp = jax.vjp(lambda v: ops.max_pool2d(v, 2), x)
    (dx,) = vjp(jnp.ones_like(y))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 1], [0, 0]])


@pytest.mark.parametrize("compile_with", ["eager", "jax.jit"])
def test_every_window_holding_a_nan_pools_to_nan_under_xlas_default_options(compile_with):
    """Expected: the loops with each NaN read as +inf. XLA:CPU compiled with its defaults (eager ops,
    plain jax.jit) hands a windowed ``max`` to YNNPACK, whose max drops NaN: before max_pool2d's
    reduce-window spelled its max as a select, these 2x2 pools came back with none of their NaNs."""
    rng = np.random.default_rng(0)
    x = np.maximum(randn(rng, (4, 8, 8, 16)), 0)
    x[rng.random(x.shape) < 0.05] = np.nan
    pool = (lambda v: ops.max_pool2d(v, 2))
    y, vjp = jax.vjp(pool if compile_with == "eager" else jax.jit(pool), x)
    dy = randn(rng, y.shape)
    y_ref, dx_ref = ref.max_pool_loops(np.moveaxis(np.nan_to_num(x, nan=np.inf), -1, 1), (2, 2), (2, 2), (0, 0),
                                       dy=np.moveaxis(dy, -1, 1))
    y_ref[np.isinf(y_ref)] = np.nan
    assert np.isnan(y_ref).sum() > 100
    np.testing.assert_array_equal(y, np.moveaxis(y_ref, 1, -1).astype(np.float32))
    assert_close(vjp(dy)[0], np.moveaxis(dx_ref, 1, -1))


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("pool_fn", [ops.max_pool2d, ops.avg_pool2d], ids=["max", "avg"])
def test_pool_forward_mode_is_the_adjoint_of_its_gradient(pool_fn, data_format):
    """jvp and vjp of the windowed max, and of the windowed sum (on the CPU each with its own JVP rule
    where windows overlap), are one linear map: <J t, c> == <t, J^T c>."""
    rng = np.random.default_rng(0)
    x = np.maximum(randn(rng, (2, 7, 7, 3)), 0)  # ReLU zeros make ties
    x = nchw_to(np.moveaxis(x, -1, 1), data_format)
    t = randn(rng, x.shape)

    def pool(v):
        return pool_fn(v, 3, 2, padding=1, data_format=data_format)

    y, jt = jax.jvp(pool, (x,), (t,))
    c = randn(rng, y.shape)
    (jtc,) = jax.vjp(pool, x)[1](c)
    scale = np.vdot(np.abs(jt), np.abs(c))  # the terms' size: the float32 sums round to it, not to the total
    np.testing.assert_allclose(np.vdot(jt, c), np.vdot(t, jtc), rtol=1e-5, atol=1e-6 * scale)


def test_max_pool_gradient_is_not_a_scatter():
    """The gradient is slices, selects and pads; XLA's select_and_scatter took 1.5-8.4x longer on CPU."""
    x = jnp.ones((2, 8, 8, 4))
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, dilation=2)):
        hlo = jax.jit(jax.grad(lambda v, kw=kw: ops.max_pool2d(v, **kw).sum())).lower(x).as_text()
        assert "scatter" not in hlo and "select_and" not in hlo, kw


def test_max_pool_same_padding_pads_with_minus_infinity():
    x = randn(np.random.default_rng(0), (1, 6, 7, 2))
    y = ops.max_pool2d(x, 3, 2, padding="SAME")  # ceil(6/2)=3, ceil(7/2)=4; pads (0,1) and (1,1)
    xp = np.pad(x, [(0, 0), (0, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    expected = ref.max_pool_loops(np.moveaxis(xp, -1, 1), (3, 3), (2, 2), (0, 0))
    assert_close(y, np.moveaxis(expected, 1, -1))
    assert_close(ops.max_pool2d_im2col(x, 3, 2, padding="SAME"), y)


def test_lp_pool2d_is_the_p_norm_of_each_window():
    x = np.abs(randn(np.random.default_rng(0), (2, 6, 6, 3))) + 0.1
    y = ops.lp_pool2d(x, 3, 2)
    windows = x.reshape(2, 3, 2, 3, 2, 3).astype(np.float64)
    assert_close(y, (windows**3).sum(axis=(2, 4)) ** (1 / 3))
    assert_close(ops.lp_pool2d(x, 1, 3, 1), ref.avg_pool_loops(np.moveaxis(x, -1, 1), (3, 3), (1, 1), (0, 0)).transpose(0, 2, 3, 1) * 9)


def test_global_avg_pool_all_layouts():
    x = randn(np.random.default_rng(0), (2, 3, 4, 5, 6))
    x64 = x.astype(np.float64)
    assert_close(ops.global_avg_pool(x, "NDHWC"), x64.mean(axis=(1, 2, 3)))
    assert_close(ops.global_avg_pool(x, "NCDHW"), x64.mean(axis=(2, 3, 4)))
    assert_close(ops.global_avg_pool(x[:, 0]), x64[:, 0].mean(axis=(1, 2)))
    assert_close(ops.global_avg_pool(x[:, 0, 0], "NCW"), x64[:, 0, 0].mean(axis=2))
    assert ops.global_avg_pool(x[:, 0]).shape == (2, 6)


def test_pools_are_jittable_and_keep_bfloat16():
    x = randn(np.random.default_rng(0), (1, 6, 6, 2)).astype(jnp.bfloat16)
    for pool in (ops.max_pool2d, ops.avg_pool2d, ops.max_pool2d_im2col, ops.avg_pool2d_im2col):
        y = jax.jit(lambda v: pool(v, 2))(x)
        assert y.dtype == jnp.bfloat16 and y.shape == (1, 3, 3, 2)
