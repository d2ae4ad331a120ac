"""The banded formulation (jaxcnn.ops.banded): every band width against the float64 loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.ops import banded
from jaxcnn.ops.im2col import make_window
from tests.ops.helpers import loop_reference_case, nchw_to, oihw_to, to_nchw, to_oihw

# (x NCHW, w OIHW, stride, padding pairs, dilation, groups)
GEOMETRIES = [
    ((2, 1, 9, 8), (3, 1, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),  # one input channel, as LeNet's C1
    ((2, 3, 7, 9), (4, 3, 2, 3), (2, 1), ((1, 0), (2, 1)), (1, 1), 1),  # strided, asymmetric padding
    ((1, 2, 9, 12), (2, 2, 3, 3), (1, 2), ((1, 1), (0, 2)), (2, 1), 1),  # strided along W, dilated along H
    ((2, 2, 8, 11), (2, 2, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 2), 1),  # dilated along W
    ((2, 4, 6, 7), (6, 2, 3, 3), (1, 1), ((1, 1), (0, 0)), (1, 1), 2),  # grouped
]


def _out_width(geometry):
    x_shape, w_shape, stride, pads, dilation, _ = geometry
    return (x_shape[3] + sum(pads[1]) - dilation[1] * (w_shape[3] - 1) - 1) // stride[1] + 1


CASES = [(g, b) for g in GEOMETRIES for b in range(1, _out_width(g) + 1)]


@pytest.mark.parametrize("geometry,b", CASES, ids=[f"x{g[0]}w{g[1]}s{g[2]}d{g[4]}g{g[5]}-b{b}" for g, b in CASES])
def test_every_band_width_matches_the_loop_reference(geometry, b):
    """Forward, weight and input gradients for bands that divide the output width and bands that do not."""
    _, _, stride, pads, dilation, groups = geometry
    (x, w, dy), (expected, dx_ref, dw_ref) = loop_reference_case(geometry)
    with jax.enable_x64(True):
        xl, wl, dyl = (jnp.asarray(a, jnp.float64) for a in (nchw_to(x, "NHWC"), oihw_to(w, "NHWC"),
                                                               nchw_to(dy, "NHWC")))
        window = make_window(xl.shape[1:3], wl.shape[:2], stride, pads, dilation, "test")
        y, rows = banded.banded_forward(xl, wl, window, groups, b)
        dw = banded.banded_grad_weight(rows, dyl, wl.shape, window, groups, b)
        dx = banded.banded_grad_input(dyl, wl, window, groups, b)
    np.testing.assert_allclose(to_nchw(y, "NHWC"), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_oihw(dw, "NHWC"), dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_nchw(dx, "NHWC"), dx_ref, rtol=1e-12, atol=1e-12)


def test_band_matrix_rows_hold_b_receptive_fields_and_the_filter_matrix_is_banded():
    """LeNet-5's first layer at b = 4: (N*28*7, 5*8) rows times a (40, 24) block-Toeplitz matrix."""
    window = make_window((32, 32), 5, 1, 0, 1, "test")
    assert banded.band_width(window, 6) == 4
    band = banded.band_window(window, 4)
    assert band.kernel_size == (5, 8) and band.stride == (1, 4) and band.out_size == (28, 7)
    w = np.arange(1, 5 * 5 * 6 + 1, dtype=np.float32).reshape(5, 5, 1, 6)
    t = np.asarray(banded.band_weight(w, window, 1, 4))[0].reshape(5, 8, 4, 6)  # (KH, span, band pos, O)
    for pos in range(4):
        np.testing.assert_array_equal(t[:, pos:pos + 5, pos, :], w[:, :, 0, :])
        outside = np.delete(t[:, :, pos, :], np.s_[pos:pos + 5], axis=1)
        assert not outside.any()


@pytest.mark.parametrize("kernel,stride,dilation,filters,expected", [
    (5, 1, 1, 6, 4),  # LeNet-5's C1: 24 outputs per row
    (5, 1, 1, 16, 2),  # C3
    (3, 1, 1, 24, 1),  # wide enough already: im2col's rows
    (3, 1, 1, 1, 10),  # at most the output width (10 at 12 wide)
    (2, 2, 1, 4, 1),  # windows that share no input along W
    (1, 1, 1, 4, 1),  # 1x1
    (2, 2, 2, 4, 5),  # dilated taps reach across the stride
])
def test_band_width(kernel, stride, dilation, filters, expected):
    window = make_window((12, 12), kernel, stride, 0, dilation, "test")
    assert banded.band_width(window, filters) == expected
