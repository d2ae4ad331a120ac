"""Steering XLA's CPU fusion: a value stored once instead of recomputed inside its consumers, and a ReLU stored so."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def materialized(x):
    """``x`` itself, on the CPU as the output of a matmul by the identity (exact for finite ``x``).

    XLA's CPU fusion re-runs a value's whole elementwise producer chain inside
    each consumer that reads it out of order (a transposing copy, an im2col
    slice, a pooling gradient's interior-padded taps), once per read; a matmul
    is never fused into its consumers, so this one pass stores ``x`` once. The
    identity is at most 16 x 16 over the flattened array, so the pass costs at
    most 16 multiply-adds per value however wide ``x`` is (a 1 x 1 one would be
    simplified into a fusible multiply). The rows never join two examples (entries
    of the leading axis), so a batch sharded across devices stays sharded as it
    was, with no collective. On other backends ``x`` is returned as is.
    """
    if jax.default_backend() != "cpu":
        return x
    per_example = x.size // x.shape[0] if x.ndim and x.shape[0] else x.size
    block = next((k for k in (16, 8, 4, 2) if per_example % k == 0), 1)
    rows = x.reshape(-1, block)
    eye = jnp.eye(block, dtype=x.dtype)
    return lax.dot_general(rows, eye, (((1,), (0,)), ((), ())), preferred_element_type=x.dtype).reshape(x.shape)


@jax.custom_vjp
def relu(x):
    """``max(x, 0)``, equal to ``jax.nn.relu`` with its gradient, which reads the stored output.

    On the CPU the output is :func:`materialized`, so the backward's mask (``y > 0``)
    reads it instead of having XLA recompute, inside each fusion that needs the mask,
    the whole elementwise chain that produced it: in a ResNet, the BatchNorms and
    residual sums of every earlier block of the stage (ResNet-20's training step:
    1.04-1.09x faster). Like :func:`materialized`, exact for finite values: when
    differentiated, an inf or NaN makes its row of up to 16 stored values NaN.
    """
    return jnp.maximum(x, 0)


def _relu_forward(x):
    y = materialized(jnp.maximum(x, 0))
    return y, y


def _relu_backward(y, dy):
    return (jnp.where(y > 0, dy, jnp.zeros_like(dy)),)


relu.defvjp(_relu_forward, _relu_backward)
