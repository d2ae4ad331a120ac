"""Shared helpers for the ops tests: layouts, random inputs, tolerant comparison."""

import numpy as np

from tests.ops import reference as ref


def nchw_to(x, data_format):
    """An NCHW-ordered array (any spatial rank) in data_format's layout."""
    if data_format.startswith("NC"):
        return x
    return np.moveaxis(x, 1, -1)


def to_nchw(x, data_format):
    if data_format.startswith("NC"):
        return x
    return np.moveaxis(np.asarray(x), -1, 1)


def oihw_to(w, data_format):
    """An OI*-ordered weight in data_format's weight layout (*IO for channels-last)."""
    if data_format.startswith("NC"):
        return w
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def to_oihw(w, data_format):
    if data_format.startswith("NC"):
        return w
    w = np.asarray(w)
    return np.transpose(w, (w.ndim - 1, w.ndim - 2, *range(w.ndim - 2)))


def randn(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def loop_reference_case(geometry, seed=0):
    """Random float32 ``x``, ``w``, ``dy`` (NCHW / OIHW) for a conv geometry ``(x shape, w shape,
    stride, padding pairs, dilation, groups)``, and the loops' ``y``, ``dx``, ``dw`` for them."""
    x_shape, w_shape, stride, pads, dilation, groups = geometry
    rng = np.random.default_rng(seed)
    x, w = randn(rng, x_shape), randn(rng, w_shape)
    y = ref.conv2d_loops(x, w, None, stride, pads, dilation, groups)
    dy = randn(rng, y.shape)
    dx, dw, _ = ref.conv2d_loops_grad(x, w, dy, stride, pads, dilation, groups)
    return (x, w, dy), (y, dx, dw)


def assert_close(actual, expected, rtol=2e-5, atol=2e-5, err_msg=""):
    """Float32 against float64: relative tolerance plus an absolute one scaled to the values."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=err_msg)
