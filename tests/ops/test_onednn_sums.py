"""jaxcnn.ops.onednn.channel_moments / channel_grad_sums / channel_relu_grad_sums: BatchNorm's per-channel sums
as FFI calls, against
float64 NumPy, and as BatchNorm runs them (routing, tangents, vmap, sharding, the lax formulation beside)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxcnn import ops
from jaxcnn.ops import norm, onednn
from tests.ops.helpers import randn

needs_kernels = pytest.mark.skipif(not onednn.available(), reason="jaxcnn's FFI kernels could not be built here")

# Channels-last shapes: rows folded k = 128 / C at a time with a remainder (C=30: k=4, 70 rows), exactly
# (C=16), one row of C=128 or of more than 128 channels, odd C with k=42, rows split into two chunks over
# XLA's threads (64x16x16x8: 2,048 rows of 128), and 2-D.
SHAPES = [(2, 7, 5, 30), (2, 4, 4, 16), (3, 2, 2, 128), (2, 3, 3, 160), (3, 5, 5, 3), (64, 16, 16, 8), (5, 12)]


def _sums64(*arrays):
    return [np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in arrays]


def _assert_sums(got, terms):
    """``got`` (2, C) against the float64 sums of ``terms`` (two (M, C) arrays): within float32 rounding of
    each sum's magnitude (its terms summed in blocks of 32 in float32, then in float64)."""
    want = np.stack([t.sum(0) for t in terms])
    scale = np.stack([np.abs(t).sum(0) for t in terms])
    assert got.dtype == jnp.float32 and got.shape == want.shape
    np.testing.assert_array_less(np.abs(np.asarray(got, np.float64) - want), 1e-6 * scale + 1e-30)


@needs_kernels
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_sums_match_float64(shape, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(2 * randn(rng, shape) + 3, dtype)  # a mean far from zero, as after a convolution's bias
    dy = jnp.asarray(randn(rng, shape), dtype)
    mean = jnp.asarray(randn(rng, shape[-1:]) + 3)
    x64, dy64 = _sums64(x, dy)
    _assert_sums(jax.jit(onednn.channel_moments)(x), [x64, x64 ** 2])
    _assert_sums(jax.jit(onednn.channel_grad_sums)(dy, x, mean), [dy64, dy64 * (x64 - np.asarray(mean, np.float64))])
    params = jnp.stack([mean, jnp.asarray(randn(rng, shape[-1:])), jnp.asarray(randn(rng, shape[-1:]))])
    centred = x64 - np.asarray(mean, np.float64)
    masked = np.where(centred * np.asarray(params[1], np.float64) + np.asarray(params[2], np.float64) > 0, dy64, 0)
    assert 0 < np.count_nonzero(masked) < masked.size
    _assert_sums(jax.jit(onednn.channel_relu_grad_sums)(dy, x, params), [masked, masked * centred])


@needs_kernels
def test_float32_blocks_keep_long_sums_accurate():
    """60,000 rows of 128 channels, each value 1 + tiny noise: float32 running sums over each thread's
    30,000 rows are off by up to 6e-6; the kernels' sums (blocks of 32 rows in float32, then float64) are
    the float32 rounding of nearly the exact ones (4e-8 here)."""
    x = jnp.asarray(1 + 1e-3 * randn(np.random.default_rng(1), (60_000, 128)))
    x64 = _sums64(x)[0]
    got = np.asarray(jax.jit(onednn.channel_moments)(x), np.float64)
    np.testing.assert_allclose(got, [x64.sum(0), (x64 ** 2).sum(0)], rtol=2 ** -22)


@needs_kernels
def test_tangents_are_lax_and_vmap_runs_per_element():
    rng = np.random.default_rng(2)
    x, dy, tx, tdy = (jnp.asarray(randn(rng, (3, 4, 4, 6))) for _ in range(4))
    mean, tmean = jnp.asarray(randn(rng, (6,))), jnp.asarray(randn(rng, (6,)))
    params, tparams = jnp.asarray(randn(rng, (3, 6))), jnp.asarray(randn(rng, (3, 6)))
    for fn, ref, primals, tangents in [
        (onednn.channel_moments, onednn._moments_reference, (x,), (tx,)),
        (onednn.channel_grad_sums, onednn._grad_sums_reference, (dy, x, mean), (tdy, tx, tmean)),
        (onednn.channel_relu_grad_sums, onednn._relu_grad_sums_reference, (dy, x, params), (tdy, tx, tparams)),
    ]:
        got, want = jax.jvp(fn, primals, tangents), jax.jvp(ref, primals, tangents)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(jax.vmap(fn)(*(jnp.stack([p, 2 * p]) for p in primals)),
                                   jnp.stack([ref(*primals), ref(*(2 * p for p in primals))]), rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
def test_a_batch_sharded_jit_sums_each_shard_and_adds_them():
    mesh = jax.make_mesh((2,), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(3)
    x, dy = (jax.device_put(randn(rng, (4, 5, 5, 8)), batch) for _ in range(2))
    mean, params = jnp.asarray(randn(rng, (8,))), jnp.asarray(randn(rng, (3, 8)))
    for fn, args in [(onednn.channel_moments, (x,)), (onednn.channel_grad_sums, (dy, x, mean)),
                     (onednn.channel_relu_grad_sums, (dy, x, params))]:
        compiled = jax.jit(fn).lower(*args).compile()
        text = compiled.as_text()
        assert "all-gather" not in text and "all-reduce" in text
        np.testing.assert_allclose(compiled(*args), jax.jit(fn)(*(np.asarray(a) for a in args)), rtol=1e-6, atol=1e-5)


def _runs_the_sums(fn, *args):
    text = jax.jit(fn).lower(*args).as_text()
    return onednn.CHANNEL_MOMENTS_TARGET in text and onednn.CHANNEL_GRAD_SUMS_TARGET in text


def _batch_norm_loss(x, scale, bias, dy, dtype=None):
    return jnp.vdot(ops.batch_norm(x, scale, bias, dtype=dtype)[0].astype(jnp.float32), dy)


@needs_kernels
@pytest.mark.parametrize("dtype,channels,kernels", [
    (jnp.float32, 16, True), (jnp.bfloat16, 16, True), (jnp.bfloat16, 256, True),
    (jnp.float32, 256, False),  # XLA's sums as products with a row of ones, which fuse the summand, are faster
    (jnp.float16, 16, False),
])
def test_batch_norm_takes_the_kernels_where_they_are_faster(dtype, channels, kernels):
    rng = np.random.default_rng(4)
    shape = (2, 4, 4, channels)
    x, dy = jnp.asarray(randn(rng, shape), dtype), jnp.asarray(randn(rng, shape))
    scale, bias = jnp.ones(channels), jnp.zeros(channels)
    grad = jax.grad(functools.partial(_batch_norm_loss, dtype=dtype), (0, 1, 2))
    assert _runs_the_sums(grad, x, scale, bias, dy) == kernels
    # under shard_map, for a batch that varies over the axis, XLA's sums run
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

    def shard(x, scale, bias, dy):
        y = ops.batch_norm(x, scale, bias, axis_name="data", dtype=dtype)[0]
        return jax.lax.psum(jnp.vdot(y.astype(jnp.float32), dy), "data")

    mapped = jax.shard_map(shard, mesh=mesh, in_specs=(jax.P("data"), jax.P(), jax.P(), jax.P("data")),
                           out_specs=jax.P())
    assert not _runs_the_sums(jax.grad(mapped, (0, 1, 2)), x, scale, bias, dy)


@needs_kernels
@pytest.mark.parametrize("channels", [16, 160])
def test_bfloat16_batch_norm_is_the_float32_computation_rounded(channels, monkeypatch):
    """bfloat16 x with dtype=bfloat16, its sums read as bfloat16: the values of the float32 computation on
    the same values, y rounded once to bfloat16 and x's gradient too; and the kernels' batch norm equals
    lax's (XLA's sums)."""
    rng = np.random.default_rng(5)
    shape = (4, 6, 6, channels)
    x = jnp.asarray(3 * randn(rng, shape) + 1, jnp.bfloat16)
    dy = jnp.asarray(randn(rng, shape), jnp.bfloat16)
    scale, bias = jnp.asarray(randn(rng, (channels,))), jnp.asarray(randn(rng, (channels,)))

    def run(x, dtype):
        (y, mean, var), vjp = jax.vjp(lambda *a: ops.batch_norm(*a, dtype=dtype), x, scale, bias)
        zeros = jnp.zeros(channels)
        return (y, mean, var, *vjp((dy.astype(y.dtype), zeros, zeros)))

    ours = jax.jit(run, static_argnums=1)(x, jnp.bfloat16)
    theirs = jax.jit(run, static_argnums=1)(x.astype(jnp.float32), None)
    assert ours[0].dtype == ours[3].dtype == jnp.bfloat16
    for got, want, rounded in zip(ours, theirs, (True, False, False, True, False, False)):
        want = want.astype(jnp.bfloat16).astype(jnp.float32) if rounded else want
        # equal up to the last bit of bfloat16 (or float32) where the two sums round differently
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2 ** -7 if rounded else 1e-5, atol=1e-5)
    monkeypatch.setattr(norm, "_sums_kernels", lambda *arrays: None)
    lax_run = jax.jit(lambda *a: run(*a), static_argnums=1)  # a new function: traced afresh, without kernels
    assert "channel" not in lax_run.lower(x, jnp.bfloat16).as_text()
    lax_sums = lax_run(x, jnp.bfloat16)
    for got, want in zip(ours, lax_sums):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2 ** -7, atol=1e-5)


def test_a_wrong_dtype_or_missing_kernels_is_a_clear_error(monkeypatch):
    assert not onednn.sums_usable(jnp.zeros((2, 3), jnp.float16))
    assert not onednn.sums_usable(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.bfloat16))
    assert not onednn.sums_usable(jnp.zeros(3))
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert not onednn.sums_usable(jnp.zeros((2, 3)))
    with pytest.raises(onednn.BuildError, match="jaxcnn_channel_moments: jaxcnn's FFI kernels run on the CPU"):
        onednn.channel_moments(jnp.zeros((2, 3)))


@needs_kernels
@pytest.mark.parametrize("dtype,channels,fused", [
    (jnp.float32, 16, True), (jnp.bfloat16, 16, True), (jnp.bfloat16, 160, True),
    (jnp.float32, 160, False),  # XLA's sums (products with a row of ones) would each recompute the mask
])
def test_batch_norm_with_relu_is_relu_of_batch_norm(dtype, channels, fused, monkeypatch):
    """relu=True: the values and every gradient of jaxcnn.ops.relu of the BatchNorm; where fused, one FFI call
    sums the masked cotangent (and no ReLU select is stored); the fused backward's lax sums agree too."""
    rng = np.random.default_rng(8)
    shape = (4, 6, 6, channels)
    x = jnp.asarray(2 * randn(rng, shape) + 0.5, dtype)
    dy = jnp.asarray(randn(rng, shape), dtype)
    scale, bias = jnp.asarray(randn(rng, (channels,))), jnp.asarray(0.5 * randn(rng, (channels,)))

    def run(fn, x, scale, bias):
        y, vjp = jax.vjp(fn, x, scale, bias)
        return (y, *vjp(dy))

    fused_fn = lambda *a: ops.batch_norm(*a, dtype=dtype, relu=True)[0]  # noqa: E731
    composed = lambda *a: ops.relu(ops.batch_norm(*a, dtype=dtype)[0])  # noqa: E731
    ours, theirs = jax.jit(run, static_argnums=0)(fused_fn, x, scale, bias), jax.jit(run, static_argnums=0)(
        composed, x, scale, bias)
    assert 0 < np.count_nonzero(np.asarray(ours[0], np.float32)) < ours[0].size
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2 ** -7, atol=1e-4)
    for got, want in zip(ours, theirs):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
    text = jax.jit(run, static_argnums=0).lower(fused_fn, x, scale, bias).as_text()
    assert (onednn.CHANNEL_RELU_GRAD_SUMS_TARGET in text) == fused
    if fused:  # the fused backward with XLA's sums (the kernels gone between forward and backward)
        mean, var = ops.batch_moments(x)
        backward = functools.partial(norm._batch_norm_backward, 1e-5, None, dtype, True)
        _, residuals = norm._batch_norm_forward(x, scale, bias, mean, var, 1e-5, None, dtype, True)
        with_kernels = backward(residuals, dy)
        monkeypatch.setattr(norm, "_sums_kernels", lambda *arrays: None)
        for got, want in zip(backward(residuals, dy)[:3], with_kernels[:3]):
            np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)
