"""jaxcnn.ops._fusion: values stored once (an identity matmul on the CPU) change nothing but where they live."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.ops._fusion import materialized


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_materialized_residual_is_exactly_the_input(dtype):
    """The identity matmul that stores the backward's copy of x changes no value."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 4, 7)) * np.exp(rng.uniform(-20, 20, (2, 5, 4, 7)))
    x = jnp.asarray(x, dtype)
    np.testing.assert_array_equal(np.asarray(jax.jit(materialized)(x), np.float32),
                                  np.asarray(x, np.float32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_and_its_gradient_equal_jax_nn_relu(dtype):
    """Values and gradients bit for bit, zeros included (gradient 0 there, as jax.nn.relu's)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 5, 16)) * np.exp(rng.uniform(-10, 10, (3, 6, 5, 16)))
    x[0, 0, 0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    x, dy = jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal(x.shape), dtype)
    ours, vjp = jax.vjp(jax.jit(ops.relu), x)
    theirs, vjp_ref = jax.vjp(jax.nn.relu, x)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(dy)[0], np.float32), np.asarray(vjp_ref(dy)[0], np.float32))
    assert ours.dtype == dtype
