"""Per-channel sums, biases and batch normalization, laid out for XLA's CPU backend.

A channels-last array ``(..., C)`` is a matrix of ``M`` rows (``N*H*W`` for an
image batch) by ``C`` channels, and a per-channel sum reduces its rows. XLA's
CPU backend reduces a narrow matrix slowly (ResNet-20's ``128x32x32x16`` batch
statistics take 3.4 ms); viewed as ``(M/k, k*C)``, ``k`` consecutive rows of
one example side by side so that a row is up to :data:`WIDE_ROW` values, the same
sum takes 0.9 ms.

Every function here works on that view on the CPU: sums fold the ``k`` blocks
at the end, and per-channel vectors are tiled ``k`` times before they are
broadcast, so the reductions autodiff makes of those broadcasts are wide too
(a BatchNorm + ReLU training pass: 2.7-9x faster than ``flax.linen.BatchNorm``
on ResNet-20's and ResNet-50's shapes, ``benchmarks/ops.py``). The tiling is a
product with a 0/1 matrix, stored once: tiled inside the elementwise pass, its
index arithmetic ran for every value (ResNet-20's normalise + ReLU of
``128x32x32x16``: 0.58 against 0.19-0.27 ms). Channels as wide
as a wide row (:data:`WIDE_ROW`) keep the plain view, and their float32 sums are
products with a row of ones, which XLA's CPU matmul computes (fusing the summand's
elementwise producer) far faster than its reduction over rows: ResNet-50's
16x16x16x256 BatchNorm + ReLU training pass took 0.5-0.7 ms instead of 1.4-1.5, its
8x8x512 one 0.36-0.41 instead of 0.75-0.85. (Summed so, the wide view of narrower
channels measured no faster, and ResNet-20's 16-channel one slower: 2.0-2.3 against
1.7 ms.) Elsewhere ``k = 1`` and sums are reductions: the plain layout.

:func:`batch_norm`, the training-mode normalisation, has its gradient in closed
form: two channel sums of the cotangent and one elementwise pass, where autodiff
through the statistics makes three sums and re-normalises ``x`` in each pass.
Its input gradient, which a convolution's two backward passes read, is
:func:`jaxcnn.ops._fusion.wide_stored`, so that pass loops over wide rows. Where
jaxcnn's FFI kernels run, its two pairs of sums (the moments, and the backward's)
are FFI calls that read the arrays once, bfloat16 as it is (:func:`_sums_kernels`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops._checks import float_array
from jaxcnn.ops._fusion import WIDE_ROW, concatenate, materialized, wide_blocks, wide_stored, wide_view
from jaxcnn.ops._fusion import relu as relu_stored


def _blocks(x) -> int:
    """How many consecutive rows of ``x`` the wide view puts side by side (:func:`wide_blocks`; 1 off the CPU)."""
    return wide_blocks(x) if jax.default_backend() == "cpu" else 1


def _tiled(v, k: int):
    """``(..., C) -> (..., k*C)``: ``v`` repeated ``k`` times along its last axis, the per-channel vector of a
    ``k``-wide view. For ``k > 1`` (on the CPU) the product with a 0/1 matrix: XLA never fuses a matmul into
    its consumers, so the wide vector is stored once rather than re-tiled, index arithmetic and all, for
    every value of the pass that broadcasts it (exact for finite ``v``)."""
    if k == 1:
        return v
    c = v.shape[-1]
    spread = (jnp.arange(k * c) % c == jnp.arange(c)[:, None]).astype(v.dtype)
    return lax.dot_general(v, spread, (((v.ndim - 1,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)


def _column_sums(m, k: int):
    """``(R, k*C) -> (k*C,)``: the sums of the columns of a (``k``-wide) view; of a plain view at
    least :data:`WIDE_ROW` wide, on the CPU in float32, the product ``ones(R) · m`` (see the module
    docstring)."""
    if k == 1 and m.shape[1] >= WIDE_ROW and jax.default_backend() == "cpu" and m.dtype == jnp.float32:
        return lax.dot_general(jnp.ones(m.shape[:1], m.dtype), m, (((0,), (0,)), ((), ())))
    return jnp.sum(m, axis=0)


def channel_sum(x):
    """Sum of ``x`` over every axis but the last: ``(..., C) -> (C,)``."""
    k = _blocks(x)
    return _column_sums(wide_view(x, k), k).reshape(k, -1).sum(axis=0)


def add_channel_bias(x, b):
    """``x + b`` for channels-last ``x`` ``(..., C)`` and ``b`` ``(C,)``, as :func:`add_rounded_once`;
    ``b``'s gradient is a wide sum."""
    k = _blocks(x)
    return add_rounded_once(wide_view(x, k), b, spread=lambda v: _tiled(v, k)).reshape(x.shape)


def add_rounded_once(x, b, spread=lambda v: v):
    """``x + spread(b)`` computed in at least float32 and rounded once to the dtype of ``x + b``: a
    bfloat16 add's values, with ``b``'s gradient summed (and ``spread`` transposed) in float32.
    Autodiff sums a broadcast's cotangent in the broadcast's dtype, and XLA:CPU sums bfloat16 rows
    about 4x slower than it converts them and sums float32 (LeNet-5's 6272x96 bias gradient: 1.0
    against 0.26 ms)."""
    dtype = jnp.result_type(x, b)
    wide = jnp.promote_types(dtype, jnp.float32)
    return (x.astype(wide) + spread(b.astype(wide))).astype(dtype)


class ChannelConcat(NamedTuple):
    """A channels-last concatenation grown a piece at a time (a DenseNet block's features), with the
    per-channel means of it and of its square: each piece's computed once, as it is appended.

    Build it with :func:`concat_channels`; :func:`batch_moments` and ``layers.BatchNorm`` take it
    in place of its array. Grown so, every concatenation holds the one before it whole, and
    autodiff sums the gradients of a piece along the earlier concatenations' rows, not over
    12-channel slices of each (DenseNet-BC-100's bfloat16 step 1.30x).

    ``array``: ``(..., C)``. ``moments``: ``(2, C)``, the means of ``array`` and of its square
    over this device's rows, in at least float32, without gradient.
    """

    array: jax.Array
    moments: jax.Array


def concat_channels(*parts) -> ChannelConcat:
    """``parts`` concatenated on their last axis, channels-last, as a :class:`ChannelConcat`.

    Each part is an array ``(..., C_i)`` or a :class:`ChannelConcat`, whose moments are
    reused; an array's are computed here (once, however many concatenations later hold it).
    The parts share every axis but the last.
    """
    if not parts:
        raise ValueError("concat_channels: needs at least one part, got none")
    arrays, moments = [], []
    for i, part in enumerate(parts):
        if isinstance(part, ChannelConcat):
            arrays.append(part.array)
            moments.append(part.moments)
        else:
            part = float_array(part, f"parts[{i}]", "concat_channels")
            arrays.append(part)
            moments.append(_mean_and_mean_square(lax.stop_gradient(part)))
    leading = {a.shape[:-1] for a in arrays}
    if len(leading) > 1 or arrays[0].ndim < 2:
        raise ValueError(f"concat_channels: parts must be (N, ..., C) arrays sharing every axis but the last, "
                         f"got shapes {[a.shape for a in arrays]}")
    if len(parts) == 1:
        return ChannelConcat(arrays[0], moments[0])
    return ChannelConcat(concatenate(arrays, axis=-1), jnp.concatenate(moments, axis=1))


def batch_moments(x, axis_name: str | None = None):
    """Per-channel mean and (biased) variance of channels-last ``x`` over every other axis.

    Computed as Flax's ``BatchNorm`` does: in at least float32, the variance as
    ``E[x²] - E[x]²`` clipped at zero, and with ``axis_name`` both moments averaged
    over that mapped axis in one ``lax.pmean`` (for ``shard_map``; under ``jit``
    with a sharded batch XLA makes the sums global itself).

    ``x`` may also be a :class:`ChannelConcat`, whose moments were computed piece by piece
    as it grew (one ``pmean`` here for all of them).

    Returns ``(mean, var)``, each ``(C,)``.
    """
    moments = x.moments if isinstance(x, ChannelConcat) else _mean_and_mean_square(x)
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name)
    mean, mean_sq = moments[0], moments[1]
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def _sums_kernels(*arrays):
    """:mod:`jaxcnn.ops.onednn`, where its FFI channel sums take these channels-last arrays here
    (``onednn.sums_usable``) and beat XLA's own; else None.

    XLA:CPU's tree reductions cannot fuse the summand into their first stage, so it
    writes a float32 copy of it first (``x`` converted, ``x²``, ``dy * (x - mean)``):
    the kernels read the arrays once, bfloat16 as it is (ResNet-20's step 1.10x in
    bfloat16, 1.03-1.06x in float32). Float32 arrays of at least :data:`WIDE_ROW`
    channels keep XLA's sums, products with a row of ones that fuse the summand
    (ResNet-50's float32 step 0.94x on the kernels).
    """
    from jaxcnn.ops import onednn  # here, not above: onednn imports im2col, which imports this

    wide_float32 = any(a.ndim and a.dtype == jnp.float32 and a.shape[-1] >= WIDE_ROW for a in arrays)
    return onednn if not wide_float32 and onednn.sums_usable(*arrays) else None


def _mean_and_mean_square(x):
    """``(2, C)``: the per-channel means of ``x`` and of ``x²``, in at least float32."""
    count = x.size // x.shape[-1]
    if kernels := _sums_kernels(x):
        return kernels.channel_moments(x) / count
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    k = _blocks(x)
    wide = wide_view(x, k)
    # Both sums stacked before the fold: two channel_sum calls measured 1.4-1.6x slower on
    # ResNet-50's 256- and 2048-channel BatchNorms (forward + backward).
    sums = jnp.stack([_column_sums(wide, k), _column_sums(jnp.square(wide), k)])
    return sums.reshape(2, k, -1).sum(axis=1) / count


def normalize(x, mean, var, scale, bias, epsilon: float):
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` per channel of channels-last ``x``.

    ``mean``, ``var``, ``scale``, ``bias``: ``(C,)``. The result has the promoted
    dtype of ``x`` and the statistics (float32 for a bfloat16 ``x``).
    """
    k = _blocks(x)
    mul = lax.rsqrt(var + epsilon) * scale
    wide_mean, wide_mul, wide_bias = _tiled(jnp.stack([mean, mul, bias.astype(mul.dtype)]), k)
    y = (wide_view(x, k) - wide_mean) * wide_mul + wide_bias
    return y.reshape(x.shape)


def batch_norm(x, scale, bias, *, epsilon: float = 1e-5, axis_name: str | None = None, moments=None,
               dtype=None, relu: bool = False):
    """Training-mode batch normalization of channels-last ``x`` with its own batch statistics.

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with ``mean, var =
    batch_moments(x, axis_name)``, or ``moments`` where the caller has them already
    (a concatenation's, from its pieces: :func:`batch_moments` of the pieces); they must
    be ``x``'s, as the gradient is ``x``'s own. ``scale``, ``bias``: ``(C,)``. Returns
    ``(y, mean, var)``; ``mean`` and ``var`` are for running averages and carry no
    gradient. Everything is computed in at least float32; ``y`` is rounded once to
    ``dtype`` (default: :func:`normalize`'s, at least float32) and ``x``'s gradient to
    ``x``'s dtype: a bfloat16 ``x`` with ``dtype=bfloat16`` gives the values of the
    same computation on ``x`` converted to float32 with ``y`` converted back, while
    the channel sums read the bfloat16 arrays as they are. ``y``'s gradient is
    autodiff's, computed in closed form (two channel sums of the cotangent and one
    elementwise pass; autodiff through the statistics makes three sums and
    re-normalises ``x`` in each pass). Under
    ``shard_map`` with ``axis_name``, cross-device terms included: the sums are
    averaged over the axis, and a replicated ``scale``/``bias`` gets the sum of
    every device's gradient, as autodiff gives it.

    ``relu=True`` returns ``max(y, 0)``, with ``jax.nn.relu``'s gradient. Where the FFI
    kernels sum the backward (and ``y`` has ``x``'s dtype), the backward recomputes the
    ReLU's mask from ``x``, and one FFI call sums the masked cotangent, which is never
    stored (DenseNet-BC-100's bfloat16 step 1.13x); elsewhere it is
    :func:`jaxcnn.ops.relu` of ``y``.
    """
    _check_batch_norm(x, scale, bias, epsilon, moments)
    x, scale, bias = (_varying(a, axis_name) for a in (x, scale, bias))
    mean, var = (lax.stop_gradient(m) for m in (batch_moments(x, axis_name) if moments is None else moments))
    dtype = None if dtype is None else _float_dtype(dtype)
    y_dtype = dtype or jnp.result_type(x, mean)
    # Fused where one FFI call sums the masked cotangent; elsewhere (float32 of 128 channels and more, whose
    # sums are products with a row of ones) XLA would recompute the mask inside each sum: ReLU's own backward.
    fused = bool(relu) and y_dtype == x.dtype and _sums_kernels(x) is not None
    y = _batch_norm(x, scale, bias, mean, var, epsilon, axis_name, dtype, fused)
    return (relu_stored(y) if relu and not fused else y), mean, var


def _check_batch_norm(x, scale, bias, epsilon, moments) -> None:
    x = float_array(x, "x", "batch_norm")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: x must be (N, ..., C) with at least 2 dims, got shape {x.shape}")
    if moments is not None and (len(moments) != 2 or any(jnp.shape(m) != x.shape[-1:] for m in moments)):
        raise ValueError(f"batch_norm: moments must be (mean, var), each of shape {x.shape[-1:]} (x's channels), "
                         f"got shapes {[jnp.shape(m) for m in moments]}")
    for name, v in (("scale", scale), ("bias", bias)):
        if jnp.shape(v) != x.shape[-1:]:
            raise ValueError(f"batch_norm: {name} must have shape {x.shape[-1:]} (x's channels), "
                             f"got {jnp.shape(v)}")
    if not epsilon > 0:
        raise ValueError(f"batch_norm: epsilon must be > 0, got {epsilon!r}")


def _float_dtype(dtype):
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"batch_norm: dtype must be a floating-point dtype or None, got {dtype!r}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"batch_norm: dtype must be a floating-point dtype or None, got {dtype}")
    return dtype


def _varying(a, axis_name):
    """``a`` typed as varying over ``axis_name`` inside ``shard_map``: the cotangent type the gradient has."""
    if axis_name is None or axis_name in jax.typeof(a).manual_axis_type.varying:
        return a
    return lax.pcast(a, axis_name, to="varying")  # autodiff sums its cotangent over the axis


def _normalized(x, scale, bias, mean, var, epsilon, dtype, relu):
    y = normalize(x, mean, var, scale, bias, epsilon)
    y = jnp.maximum(y, 0) if relu else y
    return y if dtype is None else y.astype(dtype)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _batch_norm(x, scale, bias, mean, var, epsilon, axis_name, dtype, relu):
    """``x`` normalised by its batch statistics ``mean`` and ``var`` (then ``max(., 0)`` where ``relu``), as
    ``dtype`` (None: as computed); the gradient is in closed form."""
    return _normalized(x, scale, bias, mean, var, epsilon, dtype, relu)


def _batch_norm_forward(x, scale, bias, mean, var, epsilon, axis_name, dtype, relu):
    y = _normalized(x, scale, bias, mean, var, epsilon, dtype, relu)
    if relu:  # stored once, as jaxcnn.ops.relu's output is: XLA would recompute it inside each consumer
        y = materialized(y)
    return y, (x, mean, lax.rsqrt(var + epsilon), scale, bias)


def _batch_norm_backward(epsilon, axis_name, dtype, relu, residuals, cotangents):
    del epsilon, dtype
    x, mean, rstd, scale, bias = residuals
    dy = cotangents  # the statistics' own gradient is in the closed form below: theirs is zero
    stats = mean.dtype
    k = _blocks(x)
    wide_dy = wide_view(dy, k).astype(stats)
    centred = wide_view(x, k).astype(stats) - _tiled(mean, k)  # recomputed inside each pass, never stored
    kernels = _sums_kernels(dy, x)
    if relu:  # dy is the ReLU's cotangent: masked where the ReLU's input, recomputed as the forward did, is > 0
        mul, shift = rstd * scale.astype(stats), bias.astype(stats)
        wide_mul, wide_shift = _tiled(jnp.stack([mul, shift]), k)
        wide_dy = jnp.where(centred * wide_mul + wide_shift > 0, wide_dy, jnp.zeros((), stats))
        if kernels:
            sums = kernels.channel_relu_grad_sums(dy, x, jnp.stack([mean, mul, shift]))
    elif kernels:
        sums = kernels.channel_grad_sums(dy, x, mean)
    if not kernels:
        sums = jnp.stack([_column_sums(wide_dy, k), _column_sums(wide_dy * centred, k)]).reshape(2, k, -1).sum(axis=1)
    dbias, dscale = sums[0], rstd * sums[1]  # sums of dy and of dy * (x - mean) * rstd
    if axis_name is not None:  # the statistics are averages over the axis: so are their cotangents
        sums = lax.pmean(sums, axis_name)
    count = x.size // x.shape[-1]
    # dx = a * dy + b * (x - mean) + c: dy through the normalisation, the variance and the mean
    a = scale.astype(stats) * rstd
    b = -a * rstd * rstd * sums[1] / count
    c = -a * sums[0] / count
    wide_a, wide_b, wide_c = _tiled(jnp.stack([a, b, c]), k)
    dx = wide_dy * wide_a + centred * wide_b + wide_c
    dx = wide_stored(dx.reshape(x.shape).astype(x.dtype))
    return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype), jnp.zeros_like(mean), jnp.zeros_like(rstd)


_batch_norm.defvjp(_batch_norm_forward, _batch_norm_backward)
