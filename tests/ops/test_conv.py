"""conv2d (lax) and conv2d_im2col against the float64 seven-loop reference, forward and gradients.

Each case gives the explicit (lo, hi) pads the reference uses, derived by hand
from the case's padding argument, so "SAME" and the per-dim forms are checked
against an independent reading of the spec.
"""

import jax
import numpy as np
import pytest

from jaxcnn import ops
from tests.ops import reference as ref
from tests.ops.helpers import assert_close, nchw_to, oihw_to, randn, to_nchw, to_oihw

# (id, x NCHW, w OIHW, kwargs, reference pads)
CASES_2D = [
    ("3x3", (2, 3, 6, 6), (4, 3, 3, 3), {}, ((0, 0), (0, 0))),
    ("stride2-pad1", (2, 3, 7, 7), (4, 3, 3, 3), dict(stride=2, padding=1), ((1, 1), (1, 1))),
    ("stride3-perdim", (1, 2, 9, 8), (3, 2, 3, 2), dict(stride=3, padding=(1, 2)), ((1, 1), (2, 2))),
    ("asymmetric", (2, 2, 5, 6), (3, 2, 3, 3), dict(stride=(1, 2), padding=((0, 2), (1, 0))), ((0, 2), (1, 0))),
    ("same-stride2", (1, 2, 6, 6), (2, 2, 3, 3), dict(stride=2, padding="SAME"), ((0, 1), (0, 1))),
    ("same-even-kernel", (1, 2, 5, 5), (2, 2, 4, 4), dict(padding="same"), ((1, 2), (1, 2))),
    ("valid", (1, 2, 5, 4), (2, 2, 2, 2), dict(padding="VALID"), ((0, 0), (0, 0))),
    ("dilation2", (2, 2, 7, 7), (3, 2, 3, 3), dict(dilation=2, padding=2), ((2, 2), (2, 2))),
    ("dilation-stride-mixed", (1, 2, 8, 7), (2, 2, 2, 3), dict(dilation=(2, 1), stride=(2, 1)), ((0, 0), (0, 0))),
    ("groups2", (2, 4, 5, 5), (6, 2, 3, 3), dict(groups=2, padding=1), ((1, 1), (1, 1))),
    ("depthwise-x2", (1, 3, 5, 5), (6, 1, 3, 3), dict(groups=3, padding=1), ((1, 1), (1, 1))),
    ("1x1-stride2", (2, 3, 5, 5), (4, 3, 1, 1), dict(stride=2), ((0, 0), (0, 0))),
    ("nonsquare-batch1", (1, 2, 5, 9), (3, 2, 2, 3), dict(padding=(0, 1)), ((0, 0), (1, 1))),
    ("kernel-equals-input", (2, 2, 3, 3), (2, 2, 3, 3), {}, ((0, 0), (0, 0))),
    ("reflect", (2, 2, 5, 5), (3, 2, 3, 3), dict(padding=1, padding_mode="reflect"), ((1, 1), (1, 1))),
    ("reflect-asym-stride2", (1, 2, 6, 5), (2, 2, 3, 3),
     dict(padding=((2, 1), (0, 3)), padding_mode="reflect", stride=2), ((2, 1), (0, 3))),
    ("replicate", (1, 2, 4, 5), (2, 2, 3, 3), dict(padding=((2, 1), (0, 2)), padding_mode="replicate"),
     ((2, 1), (0, 2))),
    ("circular", (2, 2, 4, 4), (2, 2, 3, 3), dict(padding=2, padding_mode="circular", stride=2), ((2, 2), (2, 2))),
    ("circular-groups-dilated", (1, 4, 5, 5), (4, 2, 2, 2),
     dict(padding=1, padding_mode="circular", groups=2, dilation=2), ((1, 1), (1, 1))),
]


def _case_arrays(case, seed=0):
    _, x_shape, w_shape, _, _ = case
    rng = np.random.default_rng(seed)
    x, w, b = randn(rng, x_shape), randn(rng, w_shape), randn(rng, w_shape[:1])
    return x, w, b


def _forward_and_vjp(fn, x, w, b, dy, kwargs, data_format):
    """One jitted call: fn's output and its VJP of dy, on NCHW/OIHW arrays shown in data_format."""

    def run(x_, w_, b_, dy_):
        y, vjp = jax.vjp(lambda *a: fn(*a, data_format=data_format, **kwargs), x_, w_, b_)
        return (y, *vjp(dy_))

    y, dx, dw, db = jax.jit(run)(nchw_to(x, data_format), oihw_to(w, data_format), b,
                                 nchw_to(dy, data_format))
    return to_nchw(y, data_format), to_nchw(dx, data_format), to_oihw(dw, data_format), db


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", CASES_2D, ids=[c[0] for c in CASES_2D])
def test_conv2d_and_im2col_match_loop_reference_and_each_other(case, data_format):
    _, _, _, kwargs, pads = case
    x, w, b = _case_arrays(case)
    stride = kwargs.get("stride", 1)
    stride = (stride, stride) if isinstance(stride, int) else stride
    dilation = kwargs.get("dilation", 1)
    dilation = (dilation, dilation) if isinstance(dilation, int) else dilation
    groups, mode = kwargs.get("groups", 1), kwargs.get("padding_mode", "zeros")

    y_ref = ref.conv2d_loops(x, w, b, stride, pads, dilation, groups, mode)
    dy = randn(np.random.default_rng(1), y_ref.shape)
    expected = (y_ref, *ref.conv2d_loops_grad(x, w, dy, stride, pads, dilation, groups, mode))
    lax_out = _forward_and_vjp(ops.conv2d, x, w, b, dy, kwargs, data_format)
    im2col_out = _forward_and_vjp(ops.conv2d_im2col, x, w, b, dy, kwargs, data_format)
    for name, want, got_lax, got_im2col in zip(("y", "dx", "dw", "db"), expected, lax_out, im2col_out):
        assert_close(got_lax, want, err_msg=f"lax {name}")
        assert_close(got_im2col, want, err_msg=f"im2col {name}")
        # the two backends agree more tightly than either agrees with float64
        assert_close(got_im2col, got_lax, rtol=1e-5, atol=1e-6, err_msg=f"im2col vs lax {name}")


def test_conv2d_without_bias_and_grad_of_bias_free_im2col():
    rng = np.random.default_rng(0)
    x, w = randn(rng, (2, 5, 5, 3)), randn(rng, (3, 3, 3, 2))
    loss = lambda fn: lambda x_, w_: (fn(x_, w_, padding=1) ** 2).sum()
    g_lax = jax.jit(jax.grad(loss(ops.conv2d), (0, 1)))(x, w)
    g_im2col = jax.jit(jax.grad(loss(ops.conv2d_im2col), (0, 1)))(x, w)
    for a, c in zip(g_lax, g_im2col):
        assert_close(c, a, rtol=1e-5, atol=1e-6)


CASES_ND = [
    # (id, x NC*, w OI*, kwargs, pads)
    ("1d", (2, 3, 9), (4, 3, 3), dict(stride=2, padding=1), ((1, 1),)),
    ("1d-dilated-groups", (1, 4, 10), (4, 2, 3), dict(dilation=2, groups=2, padding=(2,)), ((2, 2),)),
    ("1d-reflect-asym", (1, 2, 6), (2, 2, 3), dict(padding=((2, 1),), padding_mode="reflect"), ((2, 1),)),
    ("1d-same", (1, 2, 7), (3, 2, 4), dict(padding="SAME", stride=2), ((1, 2),)),
    ("3d", (1, 2, 4, 5, 4), (3, 2, 2, 3, 2), dict(padding=1, stride=(1, 2, 1)), ((1, 1),) * 3),
    ("3d-circular-depthwise", (1, 2, 3, 4, 4), (2, 1, 3, 3, 3),
     dict(padding=1, padding_mode="circular", groups=2), ((1, 1),) * 3),
    ("3d-replicate-dilated", (1, 1, 5, 5, 5), (2, 1, 2, 2, 2),
     dict(padding=(1, 0, 2), padding_mode="replicate", dilation=2), ((1, 1), (0, 0), (2, 2))),
]
_FORMATS = {1: ("NWC", "NCW"), 3: ("NDHWC", "NCDHW")}


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("case", CASES_ND, ids=[c[0] for c in CASES_ND])
def test_conv1d_conv3d_match_loop_reference(case, layout):
    _, x_shape, w_shape, kwargs, pads = case
    ndim = len(x_shape) - 2
    data_format = _FORMATS[ndim][layout == "channels_first"]
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, x_shape), randn(rng, w_shape), randn(rng, w_shape[:1])
    as_tuple = lambda v: (v,) * ndim if isinstance(v, int) else tuple(v)
    y_ref = ref.conv_nd_loops(x, w, b, as_tuple(kwargs.get("stride", 1)), pads,
                              as_tuple(kwargs.get("dilation", 1)), kwargs.get("groups", 1),
                              kwargs.get("padding_mode", "zeros"))
    fn = {1: ops.conv1d, 3: ops.conv3d}[ndim]
    y = fn(nchw_to(x, data_format), oihw_to(w, data_format), b, data_format=data_format, **kwargs)
    assert_close(to_nchw(y, data_format), y_ref)


def test_conv_output_size_formula():
    # floor((n + 2p - d(k-1) - 1)/s) + 1, the worked examples of the textbook and the models
    assert ops.conv_output_size(32, 5) == 28  # LeNet C1
    assert ops.conv_output_size(28, 2, 2) == 14  # LeNet S2
    assert ops.conv_output_size(227, 11, 4) == 55  # AlexNet conv1
    assert ops.conv_output_size(224, 7, 2, 3) == 112  # ResNet stem
    assert ops.conv_output_size(7, 3, 2) == 3
    assert ops.conv_output_size(6, 3, 1, 1) == 6
    assert ops.conv_output_size(7, 3, 1, 0, dilation=2) == 3
    assert ops.conv_output_size(6, 3, 2, (0, 1)) == 3
    # ceil_mode: GoogLeNet's 112 -> 56 pool, and the rule that drops a window starting in the padding
    assert ops.conv_output_size(112, 3, 2, ceil_mode=True) == 56
    assert ops.conv_output_size(5, 2, 2, ceil_mode=False) == 2
    assert ops.conv_output_size(5, 2, 2, ceil_mode=True) == 3
    assert ops.conv_output_size(4, 2, 2, padding=1, ceil_mode=True) == 3
    assert ops.conv_output_size(5, 3, 2, padding=1, ceil_mode=True) == 3


def test_padding_modes_on_a_row():
    """PyTorch's modes written out by hand for the row [1, 2, 3, 4] padded by (2, 2)."""
    row = np.array([[[1.0, 2.0, 3.0, 4.0]]])  # (N, C, W) = (1, 1, 4)
    expected = {
        "zeros": [0, 0, 1, 2, 3, 4, 0, 0],
        "reflect": [3, 2, 1, 2, 3, 4, 3, 2],
        "replicate": [1, 1, 1, 2, 3, 4, 4, 4],
        "circular": [3, 4, 1, 2, 3, 4, 1, 2],
    }
    identity = np.ones((1, 1, 1), np.float32)
    for mode, want in expected.items():
        got = ops.conv1d(row.astype(np.float32), identity, padding=2, padding_mode=mode, data_format="NCW")
        np.testing.assert_array_equal(np.asarray(got)[0, 0], want, err_msg=mode)
