"""jaxcnn.ops.norm: per-channel sums, biases and batch statistics on the wide view, against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.ops import norm
from tests.ops.helpers import assert_close, randn

# Channels-last shapes whose wide view folds 1 to 16 rows of an example (C=6 @ 28x28: 16 rows of
# 96; C=16 @ 4x4: 8 rows), cannot fold (7x5 rows, C above WIDE_ROW), or have no spatial axes.
SHAPES = [(3, 28, 28, 6), (2, 4, 4, 16), (2, 7, 5, 3), (2, 2, 2, 160), (5, 12), (4, 6, 16)]


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


def test_wide_view_folds_rows_of_one_example_only():
    assert norm._blocks(jnp.zeros((3, 28, 28, 6))) == 16  # 16 x 6 = 96 <= 128
    assert norm._blocks(jnp.zeros((2, 32, 32, 16))) == 8
    assert norm._blocks(jnp.zeros((2, 7, 5, 3))) == 1  # 35 rows per example: odd
    assert norm._blocks(jnp.zeros((64, 1, 1, 4))) == 1  # one row per example
    assert norm._blocks(jnp.zeros((2, 2, 2, 160))) == 1


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


def test_batch_norm_gradient_matches_float64_autodiff():
    """The training-mode normalisation's gradient, through the statistics, against the plain formula in float64."""
    rng = np.random.default_rng(2)
    x, scale, bias, dy = (randn(rng, s) for s in [(4, 8, 8, 16), (16,), (16,), (4, 8, 8, 16)])

    def ours(x, scale, bias):
        mean, var = ops.batch_moments(x)
        return ops.normalize(x, mean, var, scale, bias, 1e-5)

    def plain(x, scale, bias):
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias

    grads = jax.vjp(ours, x, scale, bias)[1](dy)
    with jax.enable_x64(True):
        args64 = [np.asarray(a, np.float64) for a in (x, scale, bias)]
        expected = jax.vjp(plain, *args64)[1](np.asarray(dy, np.float64))
    for got, want in zip(grads, expected):
        assert_close(got, want, rtol=1e-4, atol=1e-4)


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
