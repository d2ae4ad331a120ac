"""jaxcnn.ops.norm: per-channel sums, biases and batch statistics on the wide view, against float64 NumPy."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxcnn import ops
from jaxcnn.ops import norm
from tests.ops.helpers import assert_close, randn

# Channels-last shapes whose wide view folds rows of an example (C=6 @ 28x28: 14 rows of 84, half an
# image row; C=16 @ 4x4: two image rows; C=3 @ 7x5: a whole example), cannot fold (C=30 @ 7x5, C
# above WIDE_ROW), or have no spatial axes.
SHAPES = [(3, 28, 28, 6), (2, 4, 4, 16), (2, 7, 5, 3), (2, 7, 5, 30), (2, 2, 2, 160), (5, 12), (4, 6, 16)]


def _moments64(x):
    rows = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return rows.mean(0), rows.var(0)


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_sum_and_bias(shape):
    rng = np.random.default_rng(0)
    x, b = randn(rng, shape), randn(rng, shape[-1:])
    assert_close(ops.channel_sum(x), np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0))
    assert_close(ops.add_channel_bias(x, b), np.asarray(x, np.float64) + b)
    # The bias's gradient is the channel sum of the cotangent.
    dy = randn(rng, shape)
    _, vjp = jax.vjp(ops.add_channel_bias, jnp.asarray(x), jnp.asarray(b))
    dx, db = vjp(jnp.asarray(dy))
    assert_close(dx, dy)
    assert_close(db, np.asarray(dy, np.float64).reshape(-1, shape[-1]).sum(0))


def _bfloat16_reductions(fn, *args):
    """The ``reduce_sum`` equations over bfloat16 operands in ``fn``'s jaxpr, sub-jaxprs included."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "reduce_sum" and eqn.invars[0].aval.dtype == jnp.bfloat16:
                found.append(eqn)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_bfloat16_bias_adds_are_rounded_once_and_summed_in_float32(layout):
    """A bfloat16 convolution's bias: bfloat16 ``x + b``'s values, and ``b``'s gradient the float32 sum
    of the cotangent rounded once; no bfloat16 sum in the gradient (XLA:CPU's is ~4x slower)."""
    rng = np.random.default_rng(4)
    x, w, b = (jnp.asarray(randn(rng, s), jnp.bfloat16) for s in [(2, 28, 28, 6), (3, 3, 6, 6), (6,)])
    if layout == "NCHW":
        x, w = jnp.transpose(x, (0, 3, 1, 2)), jnp.transpose(w, (3, 2, 0, 1))
    y = ops.conv2d(x, w, None, padding=1, data_format=layout)
    dy = jnp.asarray(randn(rng, y.shape), jnp.bfloat16)
    channels = -1 if layout == "NHWC" else 1
    expected = y + (b if layout == "NHWC" else b[:, None, None])
    out, vjp = jax.vjp(lambda b: ops.conv2d(x, w, b, padding=1, data_format=layout), b)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
    db = np.asarray(jnp.moveaxis(dy, channels, -1), np.float64).reshape(-1, 6).sum(0)
    np.testing.assert_allclose(np.asarray(vjp(dy)[0], np.float64), db, rtol=2.0**-8)  # one bfloat16 rounding
    assert _bfloat16_reductions(lambda b: jax.vjp(lambda b: ops.conv2d(
        x, w, b, padding=1, data_format=layout), b)[1](dy), b) == []


def test_wide_view_rows_lie_in_one_image_row_or_are_whole_ones():
    """A view row is part of one image row or whole image rows of one example: the most pixels with
    at most WIDE_ROW values."""
    assert norm._blocks(jnp.zeros((3, 28, 28, 6))) == 14  # 16 x 6 <= 128, but 16 pixels straddle rows of 28
    assert norm._blocks(jnp.zeros((2, 10, 10, 16))) == 5
    assert norm._blocks(jnp.zeros((2, 14, 14, 24))) == 2
    assert norm._blocks(jnp.zeros((2, 32, 32, 16))) == 8
    assert norm._blocks(jnp.zeros((2, 4, 4, 16))) == 8  # two image rows
    assert norm._blocks(jnp.zeros((2, 7, 5, 3))) == 35  # the whole example
    assert norm._blocks(jnp.zeros((2, 7, 5, 30))) == 1  # 2, 3 or 4 pixels: none divides 5
    assert norm._blocks(jnp.zeros((64, 1, 1, 4))) == 1  # one row per example
    assert norm._blocks(jnp.zeros((2, 2, 2, 160))) == 1
    assert norm._blocks(jnp.zeros((4, 6, 16))) == 6  # (N, W, C)
    assert norm._blocks(jnp.zeros((5, 12))) == 1


@pytest.mark.parametrize("k", [1, 2, 8])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_per_channel_vectors_are_tiled_exactly(k, dtype):
    """The 0/1 product that tiles a wide view's per-channel vectors repeats them bit for bit, and its
    float32 gradient sums the k copies, as jnp.tile's does."""
    v = jnp.asarray(np.random.default_rng(3).standard_normal((3, 6)) * np.exp(np.arange(6) * 7.0 - 20), dtype)
    np.testing.assert_array_equal(np.asarray(jax.jit(norm._tiled, static_argnums=1)(v, k), np.float32),
                                  np.asarray(jnp.tile(v, k), np.float32))
    v32 = v.astype(jnp.float32)
    g = jnp.arange(3 * 6 * k, dtype=jnp.float32).reshape(3, 6 * k)
    ours = jax.vjp(lambda a: norm._tiled(a, k), v32)[1](g)[0]
    theirs = jax.vjp(lambda a: jnp.tile(a, k), v32)[1](g)[0]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_moments_and_normalize(shape):
    rng = np.random.default_rng(1)
    x = 3 * randn(rng, shape) + 2
    scale, bias = randn(rng, shape[-1:]), randn(rng, shape[-1:])
    mean, var = ops.batch_moments(x)
    mean64, var64 = _moments64(x)
    assert_close(mean, mean64, rtol=1e-5, atol=1e-5)
    assert_close(var, var64, rtol=1e-5, atol=1e-5)
    expected = (np.asarray(x, np.float64) - mean64) / np.sqrt(var64 + 1e-5) * scale + bias
    assert_close(ops.normalize(x, mean, var, scale, bias, 1e-5), expected, rtol=1e-4, atol=1e-4)


def _plain_batch_norm(x, scale, bias):
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


@pytest.mark.parametrize("shape", [(4, 8, 8, 16), (2, 7, 5, 3), (3, 3, 2, 128)])  # wide view, none, sums as products
def test_batch_norm_gradient_matches_float64_autodiff(shape):
    """batch_norm's closed-form gradient, through the statistics, against autodiff in float64."""
    rng = np.random.default_rng(2)
    c = shape[-1:]
    x, scale, bias, dy = 3 * randn(rng, shape) + 2, randn(rng, c), randn(rng, c), randn(rng, shape)
    (y, mean, var), vjp = jax.vjp(lambda *a: ops.batch_norm(*a, epsilon=1e-5), x, scale, bias)
    with jax.enable_x64(True):
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias)]
        want, vjp64 = jax.vjp(_plain_batch_norm, *args64)
        expected = vjp64(np.asarray(dy, np.float64))
    assert_close(y, want, rtol=1e-4, atol=1e-4)
    assert_close(mean, _moments64(x)[0], rtol=1e-5, atol=1e-5)
    assert_close(var, _moments64(x)[1], rtol=1e-5, atol=1e-5)
    zeros = jnp.zeros(c)
    for got, want in zip(vjp((jnp.asarray(dy), zeros, zeros)), expected):
        assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The statistics are for running averages: no gradient flows back through them.
    for got in vjp((jnp.zeros(shape), jnp.ones(c), jnp.ones(c))):
        assert not np.any(np.asarray(got))


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
@pytest.mark.parametrize("check_vma,channels", [(True, 8), (False, 8), (True, 128)])  # 128: sums as products
def test_batch_norm_over_a_mapped_axis_has_the_whole_batch_gradient(check_vma, channels):
    """Statistics averaged over an axis: the mapped gradient equals the whole batch's (cross-shard terms included)."""
    rng = np.random.default_rng(4)
    c = channels
    x, scale, bias, dy = (randn(rng, s) for s in [(8, 4, 4, c), (c,), (c,), (8, 4, 4, c)])
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))

    def shard(xs, scale, bias, dys):
        return lax.psum(jnp.vdot(ops.batch_norm(xs, scale, bias, epsilon=1e-5, axis_name="data")[0], dys), "data")

    def mapped_loss(x, scale, bias):
        mapped = jax.shard_map(shard, mesh=mesh, in_specs=(P("data"), P(), P(), P("data")), out_specs=P(),
                               check_vma=check_vma)
        return mapped(x, scale, bias, dy)

    got = jax.grad(mapped_loss, (0, 1, 2))(x, scale, bias)
    with jax.enable_x64(True):
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias)]
        expected = jax.grad(lambda *a: jnp.vdot(_plain_batch_norm(*a), np.asarray(dy, np.float64)),
                            (0, 1, 2))(*args64)
    for g, want in zip(got, expected):
        assert_close(g, want, rtol=1e-4, atol=1e-4)


def test_moments_are_float32_for_bfloat16_and_pmean_over_an_axis():
    x = jnp.asarray(randn(np.random.default_rng(3), (8, 4, 4, 8)))
    mean, var = ops.batch_moments(x.astype(jnp.bfloat16))
    assert mean.dtype == var.dtype == jnp.float32
    # Per-device moments averaged over a mapped axis are the moments of the whole batch.
    halves = x.reshape(2, 4, 4, 4, 8)
    mapped = jax.vmap(lambda h: ops.batch_moments(h, axis_name="data"), axis_name="data")(halves)
    whole = ops.batch_moments(x)
    for got, want in zip(mapped, whole):
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-6)


def test_batch_norm_rejects_mismatched_parameters_before_tracing():
    x = jnp.zeros((2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"batch_norm: scale must have shape \(4,\).*got \(3,\)"):
        ops.batch_norm(x, jnp.ones(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="batch_norm: epsilon must be > 0"):
        ops.batch_norm(x, jnp.ones(4), jnp.zeros(4), epsilon=0.0)
    with pytest.raises(ValueError, match="moments must be .mean, var., each of shape .4,."):
        ops.batch_norm(x, jnp.ones(4), jnp.zeros(4), moments=(jnp.zeros(4), jnp.ones(3)))
    with pytest.raises(TypeError, match="batch_norm: x must have a floating-point dtype"):
        ops.batch_norm(jnp.zeros((2, 4), jnp.int32), jnp.ones(4), jnp.zeros(4))
    for dtype in (jnp.int32, "no-such-dtype"):
        with pytest.raises(TypeError, match="batch_norm: dtype must be a floating-point dtype or None, got"):
            ops.batch_norm(x, jnp.ones(4), jnp.zeros(4), dtype=dtype)


def test_a_grown_concatenation_carries_its_moments_with_one_pmean():
    """concat_channels: the array is the concatenation; its moments are the concatenation's, each piece's
    computed when it is appended and carried on (a ChannelConcat's are not recomputed), without gradient;
    batch_moments of it averages them over a mapped axis in one pmean."""
    rng = np.random.default_rng(7)
    pieces = [jnp.asarray(randn(rng, (4, 3, 3, c)) * (i + 1) + i) for i, c in enumerate((24, 12, 140))]
    grown = ops.concat_channels(pieces[0])
    for piece in pieces[1:]:
        grown = ops.concat_channels(grown, piece)
    whole = jnp.concatenate(pieces, -1)
    np.testing.assert_array_equal(grown.array, whole)
    for got, want in zip(ops.batch_moments(grown), _moments64(whole)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    carried = ops.ChannelConcat(pieces[0], jnp.full((2, 24), 7.0))
    np.testing.assert_array_equal(ops.concat_channels(carried, pieces[1]).moments[:, :24], 7.0)
    grads = jax.grad(lambda p: jnp.sum(ops.concat_channels(p).moments))(pieces[1])
    np.testing.assert_array_equal(grads, 0.0)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    mapped = jax.shard_map(lambda *ps: ops.batch_moments(ops.concat_channels(*ps), "data"), mesh=mesh,
                           in_specs=P("data"), out_specs=P())
    assert str(jax.make_jaxpr(mapped)(*pieces)).count("psum") == 1
    for got, want in zip(mapped(*pieces), ops.batch_moments(whole)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_concat_channels_rejects_no_parts_mismatched_shapes_and_integers():
    with pytest.raises(ValueError, match="concat_channels: needs at least one part"):
        ops.concat_channels()
    with pytest.raises(ValueError, match=r"sharing every axis but the last, got shapes \[\(2, 3, 3, 4\), \(2, 3, 4, 4\)\]"):
        ops.concat_channels(jnp.ones((2, 3, 3, 4)), jnp.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="sharing every axis but the last"):
        ops.concat_channels(jnp.ones((4,)))
    with pytest.raises(TypeError, match="concat_channels"):
        ops.concat_channels(jnp.ones((2, 4)), jnp.ones((2, 4), jnp.int32))
