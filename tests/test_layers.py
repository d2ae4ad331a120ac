"""jaxcnn.layers: the Conv layer is the op with its parameters; the shared pieces (BatchNorm, pools) match their references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import layers, ops
from tests.ops.helpers import assert_close, randn


@pytest.mark.parametrize("backend", ["xla", "im2col", "auto"])
@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(groups=2, padding="SAME", dilation=2),
                                dict(padding=(1, 2), padding_mode="reflect", use_bias=False)])
def test_conv_layer_is_the_op_with_its_parameters(backend, kw):
    x = randn(np.random.default_rng(0), (2, 7, 6, 4))
    layer = layers.Conv(6, (3, 2), backend=backend, **kw)
    variables = layer.init(jax.random.key(0), x)
    params = variables["params"]
    assert params["kernel"].shape == (3, 2, 4 // kw.get("groups", 1), 6)
    assert ("bias" in params) == kw.get("use_bias", True)
    op_kw = {k: v for k, v in kw.items() if k != "use_bias"}
    expected = ops.conv2d(x, params["kernel"], params.get("bias"), **op_kw)
    assert_close(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_conv_layer_computes_in_its_dtype_and_keeps_float32_params():
    x = randn(np.random.default_rng(0), (1, 5, 5, 3))
    layer = layers.Conv(4, 3, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    assert variables["params"]["kernel"].dtype == jnp.float32
    assert layer.apply(variables, x).dtype == jnp.bfloat16


def test_conv_layer_errors():
    x = jnp.zeros((1, 5, 5, 3))
    with pytest.raises(ValueError, match=r"backend must be one of \('xla', 'im2col', 'auto'\), got 'fft'"):
        layers.Conv(4, 3, backend="fft").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"groups=2 must divide the 3 input channels"):
        layers.Conv(4, 3, groups=2).init(jax.random.key(0), x)


def _adaptive_reference(x, out):
    """PyTorch's adaptive average pooling bins, by loops. x: (N, H, W, C)."""
    n, h, w, c = x.shape
    y = np.zeros((n, out, out, c))
    for i in range(out):
        h0, h1 = (i * h) // out, -(-((i + 1) * h) // out)
        for j in range(out):
            w0, w1 = (j * w) // out, -(-((j + 1) * w) // out)
            y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return y


@pytest.mark.parametrize("in_size,out", [(1, 7), (5, 3), (7, 7), (10, 4), (3, 2)])
def test_adaptive_avg_pool_bins(in_size, out):
    x = randn(np.random.default_rng(0), (2, in_size, in_size, 3))
    assert_close(layers.AdaptiveAvgPool(out).apply({}, x), _adaptive_reference(x, out))


def test_local_response_norm_formula():
    x = randn(np.random.default_rng(0), (2, 3, 3, 7))
    size, alpha, beta, k = 5, 1e-2, 0.75, 2.0
    y = layers.LocalResponseNorm(size, alpha, beta, k).apply({}, x)
    x64 = x.astype(np.float64)
    expected = np.zeros_like(x64)
    for c in range(7):
        lo, hi = max(0, c - size // 2), min(7, c + (size - 1) // 2 + 1)
        expected[..., c] = x64[..., c] / (k + alpha / size * (x64[..., lo:hi] ** 2).sum(-1)) ** beta
    assert_close(y, expected)


def test_pool_layers_on_both_backends():
    x = randn(np.random.default_rng(0), (2, 7, 7, 3))
    for pool in (layers.MaxPool(3, 2, padding=1, ceil_mode=True), layers.AvgPool(3, 2, ceil_mode=True)):
        xla = pool.apply({}, x)
        for backend in ("im2col", "auto"):
            assert_close(pool.clone(backend=backend).apply({}, x), xla, rtol=1e-6, atol=1e-6)
    assert layers.GlobalAvgPool().apply({}, x).shape == (2, 3)
    assert layers.Flatten().apply({}, x).shape == (2, 147)


def test_layers_match_torch_where_installed():
    torch = pytest.importorskip("torch")
    x = randn(np.random.default_rng(0), (2, 5, 4, 9))
    xt = torch.tensor(np.moveaxis(x, -1, 1), dtype=torch.float64)
    lrn = torch.nn.functional.local_response_norm(xt, 4, alpha=1e-2, beta=0.75, k=2.0).numpy()
    assert_close(layers.LocalResponseNorm(4, 1e-2, 0.75, 2.0).apply({}, x), np.moveaxis(lrn, 1, -1))
    ada = torch.nn.functional.adaptive_avg_pool2d(xt, (3, 3)).numpy()
    assert_close(layers.AdaptiveAvgPool(3).apply({}, x[:, :4, :4]), np.moveaxis(
        torch.nn.functional.adaptive_avg_pool2d(xt[:, :, :4, :4], (3, 3)).numpy(), 1, -1))
    assert ada.shape == (2, 9, 3, 3)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_of_a_grown_concatenation_is_batch_norm_of_its_array(train, dtype):
    """Given a DenseNet block's features (a ChannelConcat grown piece by piece), BatchNorm normalises the
    array: outputs, running statistics and every gradient (the pieces' too) as for the plain array,
    the statistics only summed per piece."""
    rng = np.random.default_rng(0)
    pieces = [jnp.asarray(rng.standard_normal((8, 4, 4, c)) * (i + 1) + i, dtype)
              for i, c in enumerate((24, 12, 12, 140))]
    module = layers.BatchNorm(use_running_average=not train, momentum=0.9)
    variables = module.init(jax.random.key(0), jnp.concatenate(pieces, -1))
    assert (jax.tree.map(jnp.shape, module.init(jax.random.key(0), ops.concat_channels(*pieces)))
            == jax.tree.map(jnp.shape, variables))
    variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.key(1), v.shape), variables)

    def grown(ps):
        features = ops.concat_channels(ps[0])
        for p in ps[1:]:
            features = ops.concat_channels(features, p)
        return features

    def loss(v, ps, concat):
        y, updates = module.apply(v, concat(ps), mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, (y, updates)), (g_vars, g_pieces) = grad(variables, pieces, grown)
    (_, (y_ref, updates_ref)), (g_vars_ref, g_ref) = grad(variables, pieces, lambda ps: jnp.concatenate(ps, -1))
    tol = 2e-5 if dtype == jnp.float32 else 2e-2
    close = functools.partial(np.testing.assert_allclose, rtol=tol, atol=tol)
    as32 = functools.partial(jax.tree.map, lambda a: np.asarray(a, np.float32))
    jax.tree.map(close, as32((y, updates, g_vars["params"])), as32((y_ref, updates_ref, g_vars_ref["params"])))
    jax.tree.map(close, as32(g_pieces), as32(g_ref))


@pytest.mark.parametrize("shape, dtype", [((8, 6, 6, 16), None), ((6, 10), None), ((8, 4, 4, 3), jnp.bfloat16)])
def test_batch_norm_is_flax_batch_norm(shape, dtype):
    """Same variables, outputs, running statistics and gradients as flax.linen.BatchNorm, train and eval."""
    x = jax.random.normal(jax.random.key(0), shape) * 3 + 2
    for train in (True, False):
        kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
        ours, theirs = layers.BatchNorm(**kw), nn.BatchNorm(**kw)
        variables = theirs.init(jax.random.key(1), x)
        assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
        variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.key(2), v.shape), variables)

        def loss(v, module):
            y, updates = module.apply(v, x, mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y.astype(jnp.float32))), (y, updates)

        (_, (y, upd)), g = jax.value_and_grad(loss, has_aux=True)(variables, ours)
        (_, (y_ref, upd_ref)), g_ref = jax.value_and_grad(loss, has_aux=True)(variables, theirs)
        assert y.dtype == y_ref.dtype
        tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
        close = lambda a, b, tol=tol: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                                 rtol=tol, atol=tol)
        jax.tree.map(close, (y, upd, g["params"]), (y_ref, upd_ref, g_ref["params"]))


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_with_relu_is_relu_of_batch_norm(train):
    """BatchNorm(relu=True): the same variables, outputs, running statistics and gradients as ops.relu of
    BatchNorm, train and eval."""
    x = jax.random.normal(jax.random.key(0), (8, 4, 4, 16)) * 2 + 0.5
    fused, plain = (layers.BatchNorm(use_running_average=not train, momentum=0.9, relu=r) for r in (True, False))
    variables = plain.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, fused.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, variables)
    variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.key(2), v.shape), variables)

    def loss(v, x, module, act):
        y, updates = module.apply(v, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(act(y))), (act(y), updates)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=(2, 3))
    ours = grad(variables, x, fused, lambda y: y)
    theirs = grad(variables, x, plain, ops.relu)
    assert np.count_nonzero(ours[0][1][0]) < ours[0][1][0].size
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=2e-5), ours, theirs)
