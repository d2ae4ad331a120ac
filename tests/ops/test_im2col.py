"""im2col / col2im: the textbook's worked examples, the adjoint identity, and the custom VJP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxcnn import ops
from tests.ops import reference as ref
from tests.ops.helpers import assert_close, loop_reference_case, randn

X54 = np.arange(54, dtype=np.float32).reshape(2, 3, 3, 3)  # (N, C, H, W)

# The 8x12 im2col matrix of X54 for a 2x2 kernel, written out: one row per output
# pixel (n, i, j), Caffe's column order (channel, kernel row, kernel column).
IM2COL_X54 = np.array([
    [0, 1, 3, 4, 9, 10, 12, 13, 18, 19, 21, 22],
    [1, 2, 4, 5, 10, 11, 13, 14, 19, 20, 22, 23],
    [3, 4, 6, 7, 12, 13, 15, 16, 21, 22, 24, 25],
    [4, 5, 7, 8, 13, 14, 16, 17, 22, 23, 25, 26],
    [27, 28, 30, 31, 36, 37, 39, 40, 45, 46, 48, 49],
    [28, 29, 31, 32, 37, 38, 40, 41, 46, 47, 49, 50],
    [30, 31, 33, 34, 39, 40, 42, 43, 48, 49, 51, 52],
    [31, 32, 34, 35, 40, 41, 43, 44, 49, 50, 52, 53],
], np.float32)


def test_textbook_im2col_matrix_of_arange54():
    cols = ops.im2col(X54, 2, data_format="NCHW")
    np.testing.assert_array_equal(cols, IM2COL_X54)
    np.testing.assert_array_equal(cols, ref.im2col_loops(X54, 2, 2))


def test_textbook_im2col_nhwc_column_order_is_kh_kw_c():
    cols = ops.im2col(np.moveaxis(X54, 1, -1), 2)
    # same receptive fields, columns reordered from (C, KH, KW) to (KH, KW, C)
    expected = IM2COL_X54.reshape(8, 3, 2, 2).transpose(0, 2, 3, 1).reshape(8, 12)
    np.testing.assert_array_equal(cols, expected)


def test_textbook_conv_of_arange54_with_arange24_weights():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)  # (O, C, KH, KW)
    y = np.asarray(ops.conv2d(X54, w, data_format="NCHW"))
    # conv as one matmul: rows of the im2col matrix times the flattened filters
    np.testing.assert_array_equal(y, (IM2COL_X54 @ w.reshape(2, 12).T).reshape(2, 2, 2, 2).transpose(0, 3, 1, 2))
    # the first image's two output maps, worked by hand
    np.testing.assert_array_equal(y[0], [[[1035, 1101], [1233, 1299]], [[2619, 2829], [3249, 3459]]])
    np.testing.assert_array_equal(ops.conv2d_im2col(X54, w, data_format="NCHW"), y)


def test_textbook_col2im_counts_overlaps():
    counts = ops.col2im(np.ones((8, 12), np.float32), (2, 3, 3, 3), 2, data_format="NCHW")
    np.testing.assert_array_equal(counts, np.broadcast_to([[1, 2, 1], [2, 4, 2], [1, 2, 1]], (2, 3, 3, 3)))
    # col2im(im2col(x)) multiplies every pixel by the number of windows that read it
    np.testing.assert_array_equal(ops.col2im(IM2COL_X54, X54.shape, 2, data_format="NCHW"), X54 * counts)


def test_textbook_backward_pass_of_a_2x2_kernel():
    x = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    w = np.array([[1, 2], [3, 4]], np.float32).reshape(2, 2, 1, 1)
    b = np.zeros(1, np.float32)
    y, vjp = jax.vjp(ops.conv2d_im2col, x, w, b)
    dx, dw, db = vjp(jnp.ones_like(y))
    # dX = col2im(dY . W^T): every input pixel collects the kernel entries that touched it
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])
    # dW = cols^T . dY: each kernel entry collects the pixels it touched
    np.testing.assert_array_equal(dw[:, :, 0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(db, [4])


def test_textbook_vertical_edge_detection():
    image = np.zeros((1, 6, 6, 1), np.float32)
    image[:, :, :3] = 10.0
    kernel = np.array([[1, 0, -1]] * 3, np.float32)[:, :, None, None]
    expected = np.tile([0, 30, 30, 0], (4, 1))
    for conv in (ops.conv2d, ops.conv2d_im2col):
        np.testing.assert_array_equal(conv(image, kernel)[0, :, :, 0], expected)


@st.composite
def window_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - sum(pads[0])), 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - sum(pads[1])), 7))
    shape = (draw(st.integers(1, 2)), h, w, draw(st.sampled_from([1, 3, 5, 12])))  # every patches() path
    data_format = draw(st.sampled_from(["NHWC", "NCHW"]))
    if data_format == "NCHW":
        shape = (shape[0], shape[3], shape[1], shape[2])
    return shape, dict(kernel_size=(kh, kw), stride=(sh, sw), dilation=(dh, dw), padding=pads,
                       data_format=data_format)


@given(window_cases(), st.integers(0, 2**31 - 1))
def test_col2im_is_the_adjoint_of_im2col(case, seed):
    """<im2col(x), c> == <x, col2im(c)>, checked in float64."""
    shape, kw = case
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        x = rng.standard_normal(shape)
        cols = jax.jit(lambda x_: ops.im2col(x_, **kw))(x)
        c = rng.standard_normal(cols.shape)
        lhs = float(jnp.vdot(cols, c))
        rhs = float(jnp.vdot(x, jax.jit(lambda c_: ops.col2im(c_, shape, **kw))(c)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


@given(window_cases(), st.integers(0, 2**31 - 1))
def test_im2col_matches_loop_reference(case, seed):
    shape, kw = case
    x = randn(np.random.default_rng(seed), shape)
    x_nchw = x if kw["data_format"] == "NCHW" else np.moveaxis(x, -1, 1)
    expected = ref.im2col_loops(x_nchw, *kw["kernel_size"], kw["stride"], kw["padding"], kw["dilation"])
    cols = np.asarray(jax.jit(lambda x_: ops.im2col(x_, **kw))(x))
    if kw["data_format"] == "NHWC":  # reorder (KH, KW, C) columns to (C, KH, KW)
        c = x.shape[-1]
        cols = cols.reshape(len(cols), *kw["kernel_size"], c).transpose(0, 3, 1, 2).reshape(len(cols), -1)
    np.testing.assert_array_equal(cols, expected)


# (x NCHW, w OIHW, stride, padding pairs, dilation, groups): the gradient's products take each of
# their two orders. Many rows, few filters: dW as (dyᵀ·cols)ᵀ, dx as dy·Wᵀ. Few rows, many filters
# (ResNet's late layers): dW as colsᵀ·dy, dx as (W·dyᵀ)ᵀ.
BOTH_PRODUCT_ORDERS = [
    ((2, 3, 6, 6), (4, 3, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((1, 16, 2, 2), (32, 16, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    ((1, 16, 3, 3), (32, 8, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 2),
]


@pytest.mark.parametrize("geometry", BOTH_PRODUCT_ORDERS)
def test_gradient_in_either_product_order_matches_loop_reference(geometry):
    (x, w, dy), (_, dx_ref, dw_ref) = loop_reference_case(geometry)
    stride, pads, _, groups = geometry[2:]
    conv = lambda x_, w_: ops.conv2d_im2col(x_, w_, stride=stride, padding=pads, groups=groups, data_format="NCHW")
    _, vjp = jax.vjp(conv, x, w)
    dx, dw = jax.jit(vjp)(dy)
    assert_close(dx, dx_ref, err_msg="dx")
    assert_close(dw, dw_ref, err_msg="dw")


def _plain_im2col_conv(x, w, b, padding, stride):
    """Convolution as im2col + matmul with no custom VJP: what autodiff makes of it."""
    cols = ops.im2col(x, w.shape[:2], stride=stride, padding=padding)
    n, h, wd = x.shape[0], *(ops.conv_output_size(s, k, stride, padding) for s, k in zip(x.shape[1:3], w.shape[:2]))
    return (cols @ w.reshape(-1, w.shape[-1]) + b).reshape(n, h, wd, -1)


def test_custom_vjp_is_used_and_equals_autodiff_of_plain_im2col():
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, (2, 6, 5, 3)), randn(rng, (3, 3, 3, 4)), randn(rng, (4,))
    assert "custom_vjp_call" in str(jax.make_jaxpr(ops.conv2d_im2col)(x, w, b))
    loss = lambda f: lambda *a: jnp.sum(jnp.tanh(f(*a)))
    g_custom = jax.jit(jax.grad(loss(lambda x_, w_, b_: ops.conv2d_im2col(x_, w_, b_, stride=2, padding=1)),
                                (0, 1, 2)))(x, w, b)
    g_plain = jax.jit(jax.grad(loss(lambda x_, w_, b_: _plain_im2col_conv(x_, w_, b_, 1, 2)), (0, 1, 2)))(x, w, b)
    for name, a, c in zip("xwb", g_custom, g_plain):
        assert_close(a, c, rtol=1e-5, atol=1e-6, err_msg=name)


def test_custom_vjp_supports_second_order_and_bf16():
    rng = np.random.default_rng(0)
    x, w = randn(rng, (1, 5, 5, 2)), randn(rng, (3, 3, 2, 2))
    hvp = lambda f: jax.jit(jax.grad(lambda w_: jnp.vdot(jax.grad(lambda v: jnp.sum(f(x, v) ** 2))(w_), w)))
    assert_close(hvp(ops.conv2d_im2col)(w), hvp(ops.conv2d)(w), rtol=1e-5, atol=1e-5)
    y16 = ops.conv2d_im2col(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert y16.dtype == jnp.bfloat16
    g16 = jax.grad(lambda w_: jnp.sum(ops.conv2d_im2col(x.astype(jnp.bfloat16), w_).astype(jnp.float32)))(
        w.astype(jnp.bfloat16))
    assert g16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), ops.conv2d(x, w), rtol=0.05, atol=0.1)
