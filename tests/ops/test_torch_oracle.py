"""PyTorch as an independent oracle, where it is installed (it is never a dependency).

``pip install torch==2.13.0`` (CPU) makes these run; without it they skip. The
loop references in reference.py cover the same ground in every environment.
"""

import jax
import numpy as np
import pytest

from jaxcnn import ops
from tests.ops.helpers import assert_close, randn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("stride,dilation,groups,padding", [
    (1, 1, 1, 1), (2, 1, 2, 2), ((2, 1), (1, 2), 3, (1, 2)), (3, 2, 1, 2),
])
def test_conv2d_matches_torch_nn_conv2d(mode, stride, dilation, groups, padding):
    rng = np.random.default_rng(0)
    x, w, b = randn(rng, (2, 6, 7, 8)), randn(rng, (6, 6 // groups, 3, 3)), randn(rng, (6,))
    conv = torch.nn.Conv2d(6, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
                           padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w, dtype=torch.float64))
        conv.bias.copy_(torch.tensor(b, dtype=torch.float64))
    xt = _t(x)
    yt = conv(xt)
    dy = randn(np.random.default_rng(1), tuple(yt.shape))
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    for fn in (ops.conv2d, ops.conv2d_im2col):
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode,
                  data_format="NCHW")
        y, vjp = jax.vjp(jax.jit(lambda *a: fn(*a, **kw)), x, w, b)
        dx, dw, db = vjp(dy)
        assert_close(y, yt.detach().numpy(), err_msg=fn.__name__)
        assert_close(dx, xt.grad.numpy(), err_msg=f"{fn.__name__} dx")
        assert_close(dw, conv.weight.grad.numpy(), err_msg=f"{fn.__name__} dw")
        assert_close(db, conv.bias.grad.numpy(), err_msg=f"{fn.__name__} db")


def test_conv1d_conv3d_match_torch():
    rng = np.random.default_rng(0)
    x1, w1 = randn(rng, (2, 4, 11)), randn(rng, (6, 2, 3))
    y1 = F.conv1d(torch.tensor(x1), torch.tensor(w1), stride=2, padding=2, dilation=2, groups=2)
    assert_close(ops.conv1d(x1, w1, stride=2, padding=2, dilation=2, groups=2, data_format="NCW"), y1.numpy())
    x3, w3 = randn(rng, (1, 2, 5, 6, 4)), randn(rng, (3, 2, 2, 3, 2))
    y3 = F.conv3d(torch.tensor(x3), torch.tensor(w3), stride=(1, 2, 1), padding=1)
    assert_close(ops.conv3d(x3, w3, stride=(1, 2, 1), padding=1, data_format="NCDHW"), y3.numpy())


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(2, 1)),
    dict(kernel_size=3, stride=1, dilation=2, ceil_mode=True),
])
def test_max_pool2d_matches_torch_including_ties(kw):
    # integer-valued input: many ties, so the tie rule is exercised
    x = np.random.default_rng(0).integers(0, 3, (2, 3, 9, 8)).astype(np.float32)
    xt = _t(x)
    yt = F.max_pool2d(xt, **kw)
    dy = randn(np.random.default_rng(1), tuple(yt.shape))
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    for fn in (ops.max_pool2d, ops.max_pool2d_im2col):
        y, vjp = jax.vjp(jax.jit(lambda v: fn(v, data_format="NCHW", **kw)), x)
        assert_close(y, yt.detach().numpy(), err_msg=fn.__name__)
        assert_close(vjp(dy)[0], xt.grad.numpy(), err_msg=f"{fn.__name__} dx")


@pytest.mark.parametrize("include", [True, False])
@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=2, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(3, 2), stride=(1, 3), padding=(1, 0), ceil_mode=True),
])
def test_avg_pool2d_matches_torch(kw, include):
    x = randn(np.random.default_rng(0), (2, 3, 7, 8))
    xt = _t(x)
    yt = F.avg_pool2d(xt, count_include_pad=include, **kw)
    dy = randn(np.random.default_rng(1), tuple(yt.shape))
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    for fn in (ops.avg_pool2d, ops.avg_pool2d_im2col):
        y, vjp = jax.vjp(jax.jit(lambda v: fn(v, data_format="NCHW", count_include_pad=include, **kw)), x)
        assert_close(y, yt.detach().numpy(), err_msg=fn.__name__)
        assert_close(vjp(dy)[0], xt.grad.numpy(), err_msg=f"{fn.__name__} dx")


@pytest.mark.parametrize("p,kw", [(2, dict(kernel_size=2)), (3, dict(kernel_size=3, stride=2, ceil_mode=True)),
                                  (1.5, dict(kernel_size=(2, 3), stride=1))])
def test_lp_pool2d_matches_torch(p, kw):
    x = np.abs(randn(np.random.default_rng(0), (1, 2, 7, 7))) + 0.1
    expected = F.lp_pool2d(torch.tensor(x, dtype=torch.float64), p, **kw).numpy()
    assert_close(ops.lp_pool2d(x, p, data_format="NCHW", **kw), expected)


def test_pool1d_pool3d_match_torch():
    rng = np.random.default_rng(0)
    x1, x3 = randn(rng, (2, 3, 11)), randn(rng, (1, 2, 5, 6, 7))
    assert_close(ops.max_pool1d(x1, 3, 2, padding=1, ceil_mode=True, data_format="NCW"),
                 F.max_pool1d(torch.tensor(x1), 3, 2, padding=1, ceil_mode=True).numpy())
    assert_close(ops.avg_pool1d(x1, 4, 3, padding=2, count_include_pad=False, data_format="NCW"),
                 F.avg_pool1d(torch.tensor(x1), 4, 3, padding=2, count_include_pad=False).numpy())
    assert_close(ops.max_pool3d(x3, 2, padding=1, dilation=(1, 2, 1), data_format="NCDHW"),
                 F.max_pool3d(torch.tensor(x3), 2, padding=1, dilation=(1, 2, 1)).numpy())
    assert_close(ops.avg_pool3d(x3, 3, 2, padding=1, ceil_mode=True, data_format="NCDHW"),
                 F.avg_pool3d(torch.tensor(x3), 3, 2, padding=1, ceil_mode=True).numpy())
