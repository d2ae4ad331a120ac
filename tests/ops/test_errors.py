"""Bad input fails in Python, before tracing, naming the argument, what was expected and what came."""

import jax
import numpy as np
import pytest

from jaxcnn import ops

X = np.zeros((2, 6, 6, 4), np.float32)  # NHWC
W = np.zeros((3, 3, 4, 8), np.float32)  # HWIO
CONVS = [ops.conv2d, ops.conv2d_im2col]

CONV_ERRORS = [
    # (id, args, kwargs, exception, regex that must appear in the message)
    ("rank-x", (X[0], W), {}, ValueError, r"x must be a 4-D array \(NHWC\), got shape \(6, 6, 4\)"),
    ("rank-w", (X, W[0]), {}, ValueError, r"w must be a 4-D array \(HWIO\), got shape \(3, 4, 8\)"),
    ("channels", (X, np.zeros((3, 3, 3, 8), np.float32)), {}, ValueError,
     r"x has 4 channels .* but w expects 3"),
    ("groups-divide-in", (X, np.zeros((3, 3, 1, 6), np.float32)), dict(groups=3), ValueError,
     r"groups=3 must divide the 4 input channels"),
    ("groups-divide-out", (X, np.zeros((3, 3, 2, 5), np.float32)), dict(groups=2), ValueError,
     r"groups=2 must divide the 5 output channels"),
    ("groups-zero", (X, W), dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    ("kernel-too-large", (X, np.zeros((7, 3, 4, 8), np.float32)), {}, ValueError,
     r"the kernel \(size 7, dilation 1, effective size 7\) is larger than the padded input along H \(6 \+ padding 0\+0 = 6\)"),
    ("dilated-kernel-too-large", (X, W), dict(dilation=(1, 3)), ValueError,
     r"the kernel \(size 3, dilation 3, effective size 7\) is larger than the padded input along W"),
    ("stride-zero", (X, W), dict(stride=0), ValueError, r"stride must be >= 1, got 0"),
    ("dilation-negative", (X, W), dict(dilation=(1, -1)), ValueError, r"dilation must be >= 1, got \(1, -1\)"),
    ("stride-wrong-length", (X, W), dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a sequence of 2"),
    ("stride-float", (X, W), dict(stride=1.5), TypeError, r"stride must be an int or a sequence of 2 ints, got 1.5"),
    ("reflect-too-wide", (X, W), dict(padding=6, padding_mode="reflect"), ValueError,
     r"reflect padding must be smaller than the input size, got padding \(6, 6\) for a spatial dim of size 6"),
    ("circular-too-wide", (X, W), dict(padding=7, padding_mode="circular"), ValueError,
     r"circular padding must be at most the input size"),
    ("padding-mode", (X, W), dict(padding_mode="mirror"), ValueError,
     r"padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\), got 'mirror'"),
    ("padding-negative", (X, W), dict(padding=-1), ValueError, r"padding must be >= 0, got -1"),
    ("padding-string", (X, W), dict(padding="FULL"), ValueError, r"padding string must be 'SAME' or 'VALID', got 'FULL'"),
    ("padding-shape", (X, W), dict(padding=(1, 2, 3)), ValueError, r"padding must be an int, 2 ints, 2 \(lo, hi\) pairs"),
    ("data-format", (X, W), dict(data_format="HWC"), ValueError,
     r"data_format must be 'NHWC' or 'NCHW', got 'HWC'"),
    ("int-input", (X.astype(np.int32), W), {}, TypeError, r"x must have a floating-point dtype, got int32"),
    ("int-weight", (X, W.astype(np.int8)), {}, TypeError, r"w must have a floating-point dtype, got int8"),
    ("bias-shape", (X, W, np.zeros(4, np.float32)), {}, ValueError, r"b must have shape \(8,\) .* got \(4,\)"),
]


@pytest.mark.parametrize("fn", CONVS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("args,kwargs,exc,pattern", [c[1:] for c in CONV_ERRORS], ids=[c[0] for c in CONV_ERRORS])
def test_conv2d_bad_input(fn, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=rf"{fn.__name__}: {pattern}"):
        fn(*args, **kwargs)


@pytest.mark.parametrize("fn", CONVS, ids=lambda f: f.__name__)
def test_errors_are_raised_in_python_under_jit(fn):
    """Shapes are static, so the same clear error comes while tracing, not from XLA."""
    with pytest.raises(ValueError, match="x has 4 channels"):
        jax.jit(lambda x, w: fn(x, w))(X, np.zeros((3, 3, 3, 8), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        jax.jit(jax.grad(lambda x: fn(x, np.zeros((7, 7, 4, 8), np.float32)).sum()))(X)


def test_conv1d_conv3d_name_their_layouts():
    with pytest.raises(ValueError, match=r"conv1d: x must be a 3-D array \(NCW\)"):
        ops.conv1d(X, np.zeros((8, 4, 3), np.float32), data_format="NCW")
    with pytest.raises(ValueError, match=r"conv3d: data_format must be 'NDHWC' or 'NCDHW', got 'NHWC'"):
        ops.conv3d(X, W, data_format="NHWC")
    with pytest.raises(ValueError, match=r"conv3d: w must be a 5-D array \(DHWIO\)"):
        ops.conv3d(X[:, None], W)


POOL_ERRORS = [
    ("rank", (X[0], 2), {}, ValueError, r"x must be a 4-D array \(NHWC\), got shape \(6, 6, 4\)"),
    ("int-input", (X.astype(np.int64), 2), {}, TypeError, r"x must have a floating-point dtype, got int64"),
    ("kernel-zero", (X, 0), {}, ValueError, r"kernel_size must be >= 1, got 0"),
    ("kernel-too-large", (X, 7), {}, ValueError, r"kernel_size 7 \(dilation 1\) is larger than the padded input along H"),
    ("stride-zero", (X, 2, 0), {}, ValueError, r"stride must be >= 1, got 0"),
    ("padding-over-half", (X, 2), dict(padding=2), ValueError,
     r"padding must be at most half the window \(kernel_size 2, dilation 1\) along H, got \(2, 2\)"),
    ("data-format", (X, 2), dict(data_format="NWC"), ValueError, r"data_format must be 'NHWC' or 'NCHW', got 'NWC'"),
]
POOLS = [ops.max_pool2d, ops.avg_pool2d, ops.max_pool2d_im2col, ops.avg_pool2d_im2col]


@pytest.mark.parametrize("fn", POOLS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("args,kwargs,exc,pattern", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pool2d_bad_input(fn, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=rf"{fn.__name__}: {pattern}"):
        fn(*args, **kwargs)


def test_other_pool_errors():
    with pytest.raises(ValueError, match=r"max_pool2d: dilation must be >= 1, got 0"):
        ops.max_pool2d(X, 2, dilation=0)
    with pytest.raises(ValueError, match=r"lp_pool2d: p must be a positive number, got 0"):
        ops.lp_pool2d(X, 0, 2)
    with pytest.raises(ValueError, match=r"global_avg_pool: x must be a 5-D array \(NDHWC\), got shape \(2, 6, 6, 4\)"):
        ops.global_avg_pool(X, "NDHWC")
    with pytest.raises(ValueError, match=r"global_avg_pool: data_format must be one of"):
        ops.global_avg_pool(X, "HWC")
    with pytest.raises(ValueError, match=r"max_pool3d: x must be a 5-D array"):
        ops.max_pool3d(X, 2)


def test_im2col_col2im_errors():
    with pytest.raises(ValueError, match=r"im2col: kernel_size must be an int or a sequence of 2 ints"):
        ops.im2col(X, (2, 2, 2))
    with pytest.raises(TypeError, match=r"im2col: x must have a floating-point dtype, got int32"):
        ops.im2col(X.astype(np.int32), 2)
    with pytest.raises(ValueError, match=r"col2im: cols must have shape \(32, 36\) for input_shape \(2, 6, 6, 4\), got \(49, 36\)"):
        ops.col2im(np.zeros((49, 36), np.float32), X.shape, 3)
    with pytest.raises(ValueError, match=r"col2im: input_shape must have 4 entries"):
        ops.col2im(np.zeros((32, 36), np.float32), (6, 6, 4), 3)


def test_filters_get_names_the_known_ones():
    np.testing.assert_array_equal(ops.filters.get("sobel_x"), ops.filters.SOBEL_X)
    with pytest.raises(ValueError, match=r"unknown filter 'sobel'; known filters: identity, sharpen"):
        ops.filters.get("sobel")
