"""Steering XLA's CPU fusion: values stored once instead of recomputed inside their consumers, loops over
wide rows, and a ReLU stored so.

Two habits of XLA:CPU's elementwise fusions cost jaxcnn's CNNs most of their
non-convolution time. A fusion re-runs a value's whole elementwise producer chain
inside each consumer that reads it out of order (a transposing copy, an im2col
slice, a pooling gradient's taps, a ReLU mask in the backward), once per read;
and a fusion's loop runs over its output's shape, where a last axis of 16 or 32
values (ResNet-20's channels) runs 2-3x slower than one of 128 (normalise + ReLU
of ``128x32x32x16``: 0.71 ms with the 4-D output, 0.23 ms with the same values
as rows of 128). :func:`materialized`, :func:`transposable_materialized` and
:func:`wide_stored` answer both.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

WIDE_ROW = 128  # values per row from which XLA:CPU's loops and reductions run at full speed


def _per_example(x) -> int:
    return x.size // x.shape[0] if x.ndim and x.shape[0] else x.size


def wide_blocks(x) -> int:
    """``k``: how many consecutive rows of channels-last ``x`` ``(N, ..., C)`` the wide view ``(M/k, k*C)``
    puts side by side: the most with ``k*C <= WIDE_ROW`` and a view row inside one image row or made
    of whole ones (``k`` dividing ``W``, the last spatial size, or a multiple of it dividing the rows
    of one example). So the view never joins two examples, a batch sharded across devices stays
    sharded the same way, and XLA:CPU's fusions index the view and the 4-D array alike: a view row
    straddling two image rows made an elementwise pass over ``128x28x28x6`` 6x slower (0.42 against
    0.064-0.069 ms for rows of 14 or 7 pixels; ``128x10x10x16``: 0.16 against 0.03). 1 for more than
    ``WIDE_ROW / 2`` channels."""
    c = x.shape[-1] if x.ndim else 1
    spatial = x.shape[1:-1]
    rows_per_example = math.prod(spatial)
    w = spatial[-1] if spatial else 1
    for k in range(WIDE_ROW // max(c, 1), 1, -1):
        if rows_per_example % k == 0 and (w % k == 0 or k % w == 0):
            return k
    return 1


def wide_view(x, k: int):
    """``(..., C) -> (M/k, k*C)``: ``k`` consecutive rows of channels side by side."""
    return x.reshape(-1, k * (x.shape[-1] if x.ndim else 1))


def _rows(x):
    """``x`` as its wide view (:func:`wide_blocks`)."""
    return wide_view(x, wide_blocks(x))


def _stored_kernel(x):
    """:func:`jaxcnn.ops.onednn.stored` where it takes ``x`` here (the CPU backend, jaxcnn's FFI kernels
    built, ``x`` not varying over ``shard_map`` axes), else None."""
    from jaxcnn.ops import onednn  # here, not above: onednn imports im2col, which imports norm, which imports this

    return onednn.stored if onednn.takes(x) else None


def wide_stored(x):
    """``x`` itself; on the CPU where jaxcnn's FFI kernels run, stored as its wide view (:func:`wide_blocks`).

    :func:`jaxcnn.ops.onednn.stored` aliases its input, so this costs nothing, and
    the fusion that computes ``x`` then loops over the wide view: the one
    ``jaxcnn.ops.norm`` computes in, so that fusions spanning both agree on it
    (ResNet-50's 256-channel ReLU gradients as rows of 128 instead: its step 0.9x).
    For values stored anyway (a convolution kernel's operand, a gradient read by
    two passes). Elsewhere (and under ``shard_map`` for a value that varies over
    its axes) ``x`` as is.
    """
    store = _stored_kernel(x)
    return x if store is None else store(_rows(x)).reshape(x.shape)


def materialized(x):
    """``x`` itself, on the CPU stored once by a pass XLA cannot fuse into its consumers.

    Where jaxcnn's FFI kernels take ``x``, :func:`wide_stored` (free and exact);
    otherwise :func:`transposable_materialized`. Not for a tangent that autodiff
    transposes (the FFI call has no transpose): that takes
    :func:`transposable_materialized`. On other backends ``x`` as is.
    """
    return wide_stored(x) if _stored_kernel(x) else transposable_materialized(x)


def transposable_materialized(x):
    """``x`` itself, on the CPU as the output of a matmul by the identity, which XLA never fuses into its
    consumers either.

    At most 16 x 16 over the flattened array, so at most 16 multiply-adds per
    value; exact for finite ``x``. Linear, so a JVP rule may store a tangent with
    it: transposed, it stores the incoming cotangent the same way. On other
    backends ``x`` as is.
    """
    if jax.default_backend() != "cpu":
        return x
    block = next((k for k in (16, 8, 4, 2) if _per_example(x) % k == 0), 1)
    rows = x.reshape(-1, block)
    eye = jnp.eye(block, dtype=x.dtype)
    return lax.dot_general(rows, eye, (((1,), (0,)), ((), ())), preferred_element_type=x.dtype).reshape(x.shape)


@jax.custom_vjp
def relu(x):
    """``max(x, 0)``, equal to ``jax.nn.relu`` with its gradient, which reads the stored output.

    On the CPU the output is :func:`materialized`, so the backward's mask (``y > 0``)
    reads it instead of having XLA recompute, inside each fusion that needs the mask,
    the whole elementwise chain that produced it: in a ResNet, the BatchNorms and
    residual sums of every earlier block of the stage. The backward runs over wide
    rows. Exact, gradient included, where :func:`materialized` is (for finite values
    at least).
    """
    return jnp.maximum(x, 0)


def _relu_forward(x):
    y = materialized(jnp.maximum(x, 0))
    return y, y


def _relu_backward(y, dy):
    if jax.default_backend() == "cpu":
        return (jnp.where(_rows(y) > 0, _rows(dy), jnp.zeros((), dy.dtype)).reshape(dy.shape),)
    return (jnp.where(y > 0, dy, jnp.zeros_like(dy)),)


relu.defvjp(_relu_forward, _relu_backward)


def concatenate(arrays, axis: int = -1):
    """``jnp.concatenate(arrays, axis)``, the same values and gradient.

    On the CPU, 16-bit floats are concatenated as their bit patterns: XLA:CPU
    computes a bfloat16 concatenate in float32 (every operand converted, the result
    converted back), and DenseNet-BC-100's ``64x32x32x192`` and ``x12`` pieces took
    9.7 ms so against 1.9 ms as ``uint16``.
    """
    arrays = tuple(arrays)
    dtype = jnp.result_type(*arrays)
    if len(arrays) < 2 or jax.default_backend() != "cpu" or dtype not in (jnp.bfloat16, jnp.float16):
        return jnp.concatenate(arrays, axis)
    return _bitwise_concatenate(tuple(jnp.asarray(a, dtype) for a in arrays), axis % jnp.ndim(arrays[0]))


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _bitwise_concatenate(arrays, axis: int):
    bits = lax.concatenate([lax.bitcast_convert_type(a, jnp.uint16) for a in arrays], axis)
    return lax.bitcast_convert_type(bits, arrays[0].dtype)


@_bitwise_concatenate.defjvp
def _bitwise_concatenate_jvp(axis, primals, tangents):
    (arrays,), (tangents,) = primals, tangents
    return _bitwise_concatenate(arrays, axis), lax.concatenate(list(tangents), axis)  # transposes to slices
