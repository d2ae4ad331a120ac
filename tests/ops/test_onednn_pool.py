"""jaxcnn.ops.onednn.max_pool: the FFI max pool that max_pool2d_auto runs on the CPU, against the float64
loops and against jaxcnn.ops.max_pool2d (values, ties, NaN and -inf, derivatives, vmap, sharding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.ops import onednn
from tests.ops import reference as ref
from tests.ops.helpers import assert_close, randn

needs_kernels = pytest.mark.skipif(not onednn.available(), reason="jaxcnn's FFI kernels could not be built here")

# (NHWC shape, max_pool2d keywords): PyTorch's geometries (overlapping, disjoint, dilated, ceil_mode windows
# hanging over the edge, SAME padding) and GoogLeNet's 3x3/1; channels from float32's MAX_POOL_MIN_CHANNELS, 32, up,
# most not a whole number of vectors.
GEOMETRIES = [
    ((3, 9, 11, 33), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((2, 7, 7, 130), dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)),
    ((2, 8, 8, 32), dict(kernel_size=2)),
    ((2, 9, 9, 40), dict(kernel_size=2, stride=1, dilation=2)),
    ((2, 6, 7, 35), dict(kernel_size=3, stride=2, padding="SAME")),
    ((1, 5, 8, 36), dict(kernel_size=(1, 3), stride=(1, 2))),
]
IDS = ["3x3s2p1ceil", "3x3s1c130", "2x2", "dilated", "same", "1x3"]


def _runs_the_kernels(fn, x):
    text = jax.jit(jax.grad(lambda v: jnp.sum(fn(v)))).lower(x).as_text()
    return onednn.MAX_POOL_TARGET in text and onednn.MAX_POOL_GRAD_TARGET in text


def _window(x, kw):
    """The window ``max_pool2d(x, **kw)`` pools channels-last ``x`` over, as :func:`onednn.max_pool` takes it."""
    return ops.pool.resolve_pool(x, 2, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
                                 kw.get("ceil_mode", False), "NHWC", "test")[1].window


def _torch_args(kw):
    """``kw`` as the loops' (kernel, stride, padding, dilation, ceil_mode), for explicit integer padding."""
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    k = pair(kw["kernel_size"])
    return k, pair(kw.get("stride", k)), pair(kw.get("padding", 0)), pair(kw.get("dilation", 1)), kw.get("ceil_mode", False)


@needs_kernels
@pytest.mark.parametrize("shape,kw", [g for g in GEOMETRIES if g[1].get("padding") != "SAME"], ids=[
    i for i, g in zip(IDS, GEOMETRIES) if g[1].get("padding") != "SAME"])
def test_forward_and_gradient_match_the_float64_loops(shape, kw):
    rng = np.random.default_rng(0)
    x = np.maximum(randn(rng, shape), 0)  # ReLU zeros make ties: the gradient goes to the first maximum
    y = ops.max_pool2d_auto(x, **kw)
    dy = randn(rng, y.shape)
    dx = jax.grad(lambda v: jnp.sum(ops.max_pool2d_auto(v, **kw) * dy))(x)
    y_ref, dx_ref = ref.max_pool_loops(np.moveaxis(x, -1, 1), *_torch_args(kw), dy=np.moveaxis(dy, -1, 1))
    assert_close(y, np.moveaxis(y_ref, 1, -1))
    assert_close(dx, np.moveaxis(dx_ref, 1, -1))
    assert _runs_the_kernels(lambda v: ops.max_pool2d_auto(v, **kw), x)


@needs_kernels
@pytest.mark.parametrize("shape,kw", [g for g in GEOMETRIES if g[1].get("padding") != "SAME"], ids=[
    i for i, g in zip(IDS, GEOMETRIES) if g[1].get("padding") != "SAME"])
def test_a_nan_is_its_windows_maximum_and_takes_its_gradient_as_in_pytorch(shape, kw):
    """Expected: the loops with each NaN read as +inf (then the first one of a window wins)."""
    rng = np.random.default_rng(6)
    x = np.maximum(randn(rng, shape), 0)
    x.reshape(-1)[rng.choice(x.size, 5, replace=False)] = np.nan
    y, vjp = jax.vjp(lambda v: ops.max_pool2d_auto(v, **kw), x)
    dy = randn(rng, y.shape)
    y_ref, dx_ref = ref.max_pool_loops(np.moveaxis(np.nan_to_num(x, nan=np.inf), -1, 1), *_torch_args(kw),
                                       dy=np.moveaxis(dy, -1, 1))
    y_ref[np.isinf(y_ref)] = np.nan
    np.testing.assert_array_equal(y, np.moveaxis(y_ref, 1, -1).astype(np.float32))
    assert_close(vjp(dy)[0], np.moveaxis(dx_ref, 1, -1))


@needs_kernels
@pytest.mark.parametrize("shape,kw", GEOMETRIES, ids=IDS)
def test_max_pool2d_auto_equals_max_pool2d_with_minus_infinity(shape, kw):
    """Bit-equal outputs; a window whose maximum is -inf gives its gradient to its first -inf, padding
    included (where it is lost), as max_pool2d does."""
    rng = np.random.default_rng(1)
    x = np.maximum(randn(rng, shape), 0)
    x[0, 0, 0, -1] = x[-1, -1, -1, 0] = x[0, 1, 1, 0] = -np.inf
    dy = randn(rng, ops.max_pool2d(x, **kw).shape)
    ours, theirs = (jax.vjp(lambda v, f=f: f(v, **kw), x) for f in (ops.max_pool2d_auto, ops.max_pool2d))
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_allclose(ours[1](dy)[0], theirs[1](dy)[0], rtol=1e-6, atol=1e-6)


@needs_kernels
@pytest.mark.parametrize("shape,kw", GEOMETRIES[:2], ids=IDS[:2])
def test_second_derivatives_and_vmap_equal_max_pool2d(shape, kw):
    """The kernels' tangents are lax's (the forward's a pick of taps, the gradient's its transpose), and
    vmap runs them per example."""
    rng = np.random.default_rng(2)
    x, xs = randn(rng, shape), randn(rng, (2, *shape))

    def curvature(pool):
        inner = jax.grad(lambda u: jnp.sum(pool(u, **kw) ** 3))
        return jax.grad(lambda v: jnp.sum(jnp.sin(inner(v))))(x)

    def per_example(pool):
        return jax.vmap(jax.grad(lambda u: jnp.sum(pool(u, **kw) ** 2)))(xs)

    for derivative in (curvature, per_example):
        np.testing.assert_allclose(derivative(ops.max_pool2d_auto), derivative(ops.max_pool2d), rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("shape,kw", [*GEOMETRIES, ((2, 12, 12, 6), dict(kernel_size=2)),
                                      ((2, 9, 9, 5), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True))],
                         ids=[*IDS, "lenet-2x2c6", "3x3s2c5"])
@pytest.mark.parametrize("pool", ["max_pool2d_auto", "kernels"])
def test_bfloat16_pools_as_float32_on_the_same_values_with_one_rounding(shape, kw, pool):
    """bfloat16 in and out, through max_pool2d_auto (which pools it as float32, on the kernels from 32
    channels) and through the kernels' own bfloat16 loops: the maximum is one of the values, bit for bit;
    each input's gradient is the float32 sum of its cotangents, rounded once to bfloat16."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(np.maximum(randn(rng, shape), 0), jnp.bfloat16)  # ties, as after a ReLU
    fn = {"max_pool2d_auto": lambda v: ops.max_pool2d_auto(v, **kw),
          "kernels": lambda v: onednn.max_pool(v, _window(x, kw))}[pool]
    y, vjp = jax.vjp(fn, x)
    dy = jnp.asarray(randn(rng, y.shape), jnp.bfloat16)
    y32, vjp32 = jax.vjp(lambda v: ops.max_pool2d(v, **kw), x.astype(jnp.float32))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), y32)
    (dx,), (dx32,) = vjp(dy), vjp32(dy.astype(jnp.float32))
    assert dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx32.astype(jnp.bfloat16), np.float32))
    assert _runs_the_kernels(lambda v: fn(v).astype(jnp.float32), x) == (pool == "kernels" or shape[-1] >= 32)


@needs_kernels
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_a_batch_split_unevenly_over_xlas_threads(batch):
    x = randn(np.random.default_rng(3), (batch, 6, 6, 36))
    grads = [jax.jit(jax.grad(lambda v, f=f: jnp.sum(f(v, 3, 2, padding=1) ** 2)))(x)
             for f in (ops.max_pool2d_auto, ops.max_pool2d)]
    np.testing.assert_allclose(*grads, rtol=1e-6, atol=1e-6)


@needs_kernels
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
def test_a_batch_sharded_jit_pools_each_shard_and_shard_map_takes_lax():
    mesh = jax.make_mesh((2,), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = randn(np.random.default_rng(4), (4, 9, 9, 32))
    want = jax.grad(lambda v: jnp.sum(ops.max_pool2d(v, 3, 2, padding=1) ** 2))(x)

    def grad(v):
        return jax.grad(lambda u: jnp.sum(ops.max_pool2d_auto(u, 3, 2, padding=1) ** 2))(v)

    xs = jax.device_put(x, batch)
    compiled = jax.jit(grad).lower(xs).compile()
    assert "all-gather" not in compiled.as_text() and onednn.MAX_POOL_TARGET in compiled.as_text()
    got = compiled(xs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert tuple(got.sharding.spec) == ("data",)
    # under shard_map the FFI result would not be typed as varying over the axis: lax's formulation runs
    mapped = jax.jit(jax.shard_map(grad, mesh=mesh, in_specs=jax.P("data"), out_specs=jax.P("data")))
    assert onednn.MAX_POOL_TARGET not in mapped.lower(xs).as_text()
    np.testing.assert_allclose(mapped(xs), want, rtol=1e-6, atol=1e-6)


def test_few_channels_other_dtypes_layouts_and_missing_kernels_take_lax(monkeypatch):
    x = randn(np.random.default_rng(5), (2, 6, 6, 32))
    pool = lambda v, **kw: ops.max_pool2d_auto(v, 3, 2, padding=1, **kw)  # noqa: E731
    assert _runs_the_kernels(pool, x) == onednn.available()
    assert not _runs_the_kernels(pool, x[..., :31])
    bfloat16 = lambda v: pool(v.astype(jnp.bfloat16)).astype(jnp.float32)  # noqa: E731
    assert _runs_the_kernels(bfloat16, x) == onednn.available()  # pooled as float32, on the kernels from 32 channels
    assert not _runs_the_kernels(bfloat16, x[..., :31])
    if onednn.available():  # the kernels' float32 loops
        assert "(f32[2,3,3,32]{3,2,1,0}, u8[2,3,3,32]{3,2,1,0}) custom-call" in jax.jit(bfloat16).lower(x).as_text("hlo")
    assert not _runs_the_kernels(lambda v: pool(v.astype(jnp.float16)).astype(jnp.float32), x)
    assert not _runs_the_kernels(lambda v: pool(v, data_format="NCHW"), np.moveaxis(x, -1, 1))
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert not _runs_the_kernels(pool, x)
    assert_close(pool(x), ops.max_pool2d(x, 3, 2, padding=1))
    with pytest.raises(onednn.BuildError, match="jaxcnn_max_pool: jaxcnn's FFI kernels run on the CPU"):
        onednn.max_pool(x, _window(x, dict(kernel_size=3, stride=2, padding=1)))


def test_bad_arguments_name_max_pool2d_auto():
    with pytest.raises(ValueError, match="max_pool2d_auto: padding must be at most half the window"):
        ops.max_pool2d_auto(np.zeros((1, 8, 8, 2), np.float32), 2, padding=2)
