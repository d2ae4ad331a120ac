"""Convolution as im2col + one matmul, with the textbook backward pass.

``im2col`` unrolls every receptive field of the (padded) input into one row of
a matrix, so that a convolution is a single matrix product::

    cols = im2col(x)            # (N*OH*OW, KH*KW*C)
    y    = cols @ W + b         # W: (KH*KW*C, O)

and its gradients are three more products (``conv2d_im2col``'s custom VJP)::

    dW = cols^T @ dy            # (KH*KW*C, O)
    db = sum_rows(dy)           # (O,)
    dx = col2im(dy @ W^T)       # col2im sums overlapping receptive fields

``col2im`` is the exact adjoint of ``im2col``: ``<im2col(x), c> == <x, col2im(c)>``.

Internally everything runs channels-last (``NHWC`` data, ``HWIO`` weights);
channels-first calls are transposed at the boundary. Column order is
``(KH, KW, C)`` for NHWC and Caffe's ``(C, KH, KW)`` for NCHW.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.ops import _checks
from jaxcnn.ops.conv import apply_padding_mode, conv_output_size, resolve_conv
from jaxcnn.ops.norm import channel_sum
from jaxcnn.ops.padding import Pairs, normalize_padding


@dataclasses.dataclass(frozen=True)
class Window:
    """Sliding-window geometry over the spatial dims of a channels-last array."""

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Pairs
    in_size: tuple[int, ...]  # unpadded spatial size

    @property
    def padded_size(self) -> tuple[int, ...]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.in_size, self.padding))

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple(
            conv_output_size(n, k, s, p, d)
            for n, k, s, p, d in zip(self.in_size, self.kernel_size, self.stride, self.padding,
                                     self.dilation)
        )


def make_window(spatial, kernel_size, stride, padding, dilation, fn: str) -> Window:
    """Validate window arguments for ``len(spatial)`` spatial dims."""
    ndim = len(spatial)
    kernel_size = _checks.int_tuple(kernel_size, ndim, "kernel_size", fn)
    stride = _checks.int_tuple(stride, ndim, "stride", fn)
    dilation = _checks.int_tuple(dilation, ndim, "dilation", fn)
    pads = normalize_padding(padding, ndim, fn=fn, spatial_shape=spatial, kernel_size=kernel_size,
                             stride=stride, dilation=dilation)
    for axis, n, k, d, (lo, hi) in zip(_checks.SPATIAL_NAMES[ndim], spatial, kernel_size, dilation,
                                       pads):
        if d * (k - 1) + 1 > n + lo + hi:
            raise ValueError(
                f"{fn}: kernel_size {k} (dilation {d}) is larger than the padded input along {axis} "
                f"({n} + padding {lo}+{hi} = {n + lo + hi})"
            )
    return Window(kernel_size, stride, dilation, pads, tuple(int(n) for n in spatial))


def _padded(x, window: Window, pad_value: float, channels_last: bool = True):
    """``x`` padded by ``window.padding`` with ``pad_value`` (as is if unpadded)."""
    if not any(map(any, window.padding)):
        return x
    first = 1 if channels_last else 2
    pads = [(0, 0)] * x.ndim
    pads[first:first + len(window.padding)] = window.padding
    return jnp.pad(x, pads, constant_values=pad_value)


def tap_slices(x, window: Window, pad_value: float = 0.0, channels_last: bool = True) -> list:
    """One strided slice of the padded ``x`` per kernel tap, each ``(N, *O, C)`` (``(N, C, *O)`` for a
    channels-first ``x``).

    Tap ``(i, j)``'s slice holds, for every output pixel, the input value that
    kernel entry ``(i, j)`` multiplies; taps are in row-major kernel order.
    """
    xp = _padded(x, window, pad_value, channels_last)
    first = 1 if channels_last else 2
    taps = []
    for tap in itertools.product(*map(range, window.kernel_size)):
        start, limit, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
        for axis, t, d, o, s in zip(range(first, xp.ndim), tap, window.dilation, window.out_size, window.stride):
            start[axis], limit[axis], strides[axis] = t * d, t * d + (o - 1) * s + 1, s
        taps.append(lax.slice(xp, start, limit, strides))
    return taps


def patches(x, window: Window, pad_value: float = 0.0):
    """Receptive fields of a channels-last ``x``: ``(N, *S, C) -> (N, *O, *K, C)``.

    For 2-D: ``(N, H, W, C) -> (N, OH, OW, KH, KW, C)``. The input is padded with
    ``pad_value`` and each kernel tap is one strided slice. How the taps are
    assembled depends on the channel count, because XLA's CPU concatenate is slow
    when it has many operands, each only ``C`` values wide:

    - ``C < GATHER_BELOW_CHANNELS``: one gather of every tap (LeNet-5's 1-channel
      input: 4.2 -> 1.2 ms against a stack of slices);
    - ``C < SEPARABLE_BELOW_CHANNELS``: one spatial axis at a time, last first
      (for 2-D: ``KW`` slices along W stacked, then ``KH`` slices of that along H,
      so the second stack copies ``KW*C``-wide rows; LeNet-5's C3 input, 6
      channels: 1.5 -> 0.9 ms);
    - otherwise all ``prod(K)`` slices stacked at once.
    """
    n, c = x.shape[0], x.shape[-1]
    if c >= SEPARABLE_BELOW_CHANNELS:
        stacked = jnp.stack(tap_slices(x, window, pad_value), axis=-2)
        return stacked.reshape(n, *window.out_size, *window.kernel_size, c)
    xp = _padded(x, window, pad_value)
    if c < GATHER_BELOW_CHANNELS:
        rows = xp.reshape(n, -1, c)[:, _gather_index(window)]
        return rows.reshape(n, *window.out_size, *window.kernel_size, c)
    ndim = len(window.kernel_size)
    for d in reversed(range(ndim)):  # xp: (N, S_1..S_d, O_d+1..O_n, K_d+1..K_n, C)
        o, s, dil = window.out_size[d], window.stride[d], window.dilation[d]
        taps = [lax.slice_in_dim(xp, t * dil, t * dil + (o - 1) * s + 1, s, axis=1 + d)
                for t in range(window.kernel_size[d])]
        xp = jnp.stack(taps, axis=-(ndim - d) - 1)
    return xp


GATHER_BELOW_CHANNELS = 4
SEPARABLE_BELOW_CHANNELS = 12


@functools.lru_cache(maxsize=256)
def _gather_index(window: Window) -> np.ndarray:
    """Flat index into the padded spatial grid of every (output pixel, kernel tap), ``(prod(O)*prod(K),)``."""
    ndim = len(window.kernel_size)
    flat = np.zeros((1,) * (2 * ndim), np.int32)
    for d, (size, o, k, s, dil) in enumerate(zip(window.padded_size, window.out_size, window.kernel_size,
                                                  window.stride, window.dilation)):
        shape = [1] * (2 * ndim)
        shape[d], shape[ndim + d] = o, k
        pos = np.arange(o)[:, None] * s + np.arange(k)[None, :] * dil
        flat = flat * size + pos.reshape(shape)
    return flat.reshape(-1)


def unpatches(p, window: Window):
    """Adjoint of :func:`patches`: ``(N, *O, *K, C) -> (N, *S, C)``, overlaps summed.

    Separable, last spatial axis first: each kernel axis is summed out by putting
    its taps back in place along its spatial axis with ``lax.pad`` (interior
    padding ``stride - 1``, no scatter op) and adding them. For 2-D that is ``KW``
    pads of ``(N, OH, OW, C)`` slices, then ``KH`` pads of ``(N, OH, W, C)`` rows,
    instead of ``KH*KW`` pads of the whole input (1.3-2.7x faster on XLA's CPU
    backend for LeNet-5's and ResNet-20's shapes). The padding is cropped off last.
    """
    ndim = len(window.kernel_size)
    n, c = p.shape[0], p.shape[-1]
    zero = jnp.zeros((), p.dtype)
    for d in reversed(range(ndim)):  # p: (N, O_1..O_d, S_d+1..S_n, K_1..K_d, C)
        o, s, dil, size = window.out_size[d], window.stride[d], window.dilation[d], window.padded_size[d]
        total = None
        for t in range(window.kernel_size[d]):
            value = lax.index_in_dim(p, t, axis=p.ndim - 2, keepdims=False)
            config = [(0, 0, 0)] * value.ndim
            config[1 + d] = (t * dil, size - t * dil - (o - 1) * s - 1, s - 1)
            placed = lax.pad(value, zero, config)
            total = placed if total is None else total + placed
        p = total
    start = [lo for lo, _ in window.padding]
    return lax.slice(p, (0, *start, 0), (n, *(a + m for a, m in zip(start, window.in_size)), c))


def to_channels_last(x, channels_last: bool):
    """``(N, C, *S) -> (N, *S, C)`` unless already channels-last."""
    return x if channels_last else jnp.transpose(x, (0, *range(2, x.ndim), 1))


def from_channels_last(x, channels_last: bool):
    """``(N, *S, C) -> (N, C, *S)`` unless channels-last is wanted."""
    return x if channels_last else jnp.transpose(x, (0, x.ndim - 1, *range(1, x.ndim - 1)))


def _image_window(shape, kernel_size, stride, padding, dilation, channels_last, fn):
    spatial = shape[1:3] if channels_last else shape[2:4]
    return make_window(spatial, kernel_size, stride, padding, dilation, fn)


def im2col(x, kernel_size, *, stride=1, padding=0, dilation=1, data_format="NHWC"):
    """Unroll the receptive fields of an image batch into a matrix.

    Args:
      x: ``(N, H, W, C)`` (NHWC) or ``(N, C, H, W)`` (NCHW), float.
      kernel_size, stride, dilation: int or pair; padding: as :func:`conv2d` (zeros).

    Returns:
      ``(N*OH*OW, KH*KW*C)``; row ``(n*OH + i)*OW + j`` is the receptive field of output
      pixel ``(i, j)`` of image ``n``, in column order ``(KH, KW, C)`` for NHWC and
      ``(C, KH, KW)`` for NCHW.
    """
    channels_last = _checks.is_channels_last(data_format, 2, "im2col")
    x = _checks.float_array(x, "x", "im2col")
    _checks.check_rank(x, 4, "x", "im2col", data_format)
    window = _image_window(x.shape, kernel_size, stride, padding, dilation, channels_last, "im2col")
    p = patches(to_channels_last(x, channels_last), window)
    if not channels_last:
        p = jnp.transpose(p, (0, 1, 2, 5, 3, 4))
    return p.reshape(-1, p.shape[3] * p.shape[4] * p.shape[5])


def col2im(cols, input_shape, kernel_size, *, stride=1, padding=0, dilation=1, data_format="NHWC"):
    """Adjoint of :func:`im2col`: fold ``(N*OH*OW, KH*KW*C)`` back into ``input_shape``.

    Every entry of ``cols`` is added to the input pixel it was read from, so
    pixels shared by overlapping receptive fields receive the sum (entries read
    from the zero padding are dropped). Arguments as in :func:`im2col`.
    """
    channels_last = _checks.is_channels_last(data_format, 2, "col2im")
    cols = _checks.float_array(cols, "cols", "col2im")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"col2im: input_shape must have 4 entries ({data_format}), got {input_shape}")
    window = _image_window(input_shape, kernel_size, stride, padding, dilation, channels_last, "col2im")
    n, c = input_shape[0], input_shape[3 if channels_last else 1]
    (oh, ow), (kh, kw) = window.out_size, window.kernel_size
    expected = (n * oh * ow, kh * kw * c)
    if tuple(cols.shape) != expected:
        raise ValueError(f"col2im: cols must have shape {expected} for input_shape {input_shape}, "
                         f"got {tuple(cols.shape)}")
    if channels_last:
        p = cols.reshape(n, oh, ow, kh, kw, c)
    else:
        p = jnp.transpose(cols.reshape(n, oh, ow, c, kh, kw), (0, 1, 2, 4, 5, 3))
    return from_channels_last(unpatches(p, window), channels_last)


# --- convolution with the textbook backward pass -------------------------------------------
#
# With G groups, group g's O/G filters see only its C/G channels, so the matmul is
# block-diagonal: one (M, K/G) @ (K/G, O/G) product per group, batched group-major.
# M = N*OH*OW rows, K = KH*KW*C columns. For G = 1 the transposes below are free.


def _group_cols(cols, groups):
    """``(N, OH, OW, KH, KW, C) -> (G, M, KH*KW*C/G)``: each group's im2col matrix."""
    n, oh, ow, kh, kw, c = cols.shape
    grouped = cols.reshape(n * oh * ow, kh * kw, groups, c // groups).transpose(2, 0, 1, 3)
    return grouped.reshape(groups, n * oh * ow, kh * kw * (c // groups))


def _ungroup_cols(cols_g, shape):
    n, oh, ow, kh, kw, c = shape
    groups = cols_g.shape[0]
    return cols_g.reshape(groups, -1, kh * kw, c // groups).transpose(1, 2, 0, 3).reshape(shape)


def _group_weight(w, groups):
    """HWIO ``(KH, KW, C/G, O) -> (G, KH*KW*C/G, O/G)``: each group's filter matrix."""
    kh, kw, cg, o = w.shape
    return w.reshape(kh * kw * cg, groups, o // groups).transpose(1, 0, 2)


def _ungroup_weight(w_g, shape):
    return w_g.transpose(1, 0, 2).reshape(shape)


def _group_rows(dy, groups):
    """``(N, OH, OW, O) -> (G, M, O/G)``: each group's rows of the output gradient."""
    return dy.reshape(-1, groups, dy.shape[-1] // groups).transpose(1, 0, 2)


def grouped_cols(x, window: Window, groups: int):
    """The im2col matrix of NHWC ``x`` per group, ``(G, N*OH*OW, KH*KW*C/G)``."""
    return _group_cols(patches(x, window), groups)


def matmul_forward(x, w, window: Window, groups: int):
    """Convolution of NHWC ``x`` by HWIO ``w`` as ``cols @ W``; returns ``(y, cols_g)``.

    ``cols_g`` is :func:`grouped_cols`, the residual :func:`matmul_grad_weight` needs.
    """
    cols_g = grouped_cols(x, window, groups)
    y = jnp.matmul(cols_g, _group_weight(w, groups))  # (G, M, O/G)
    return y.transpose(1, 0, 2).reshape(x.shape[0], *window.out_size, w.shape[3]), cols_g


# XLA's CPU matmuls read both operands row-major, contracting the left's last axis with the
# right's first: any other operand is copied transposed first, and so is a result wanted
# transposed. The two gradient products each have two orders; each takes the one that moves
# fewer values (M rows, K = KH*KW*C/G columns, O = O/G filters per group).


def matmul_grad_weight(cols_g, dy, w_shape, groups: int):
    """``dW = colsᵀ · dy`` per group, reshaped to HWIO ``w_shape``.

    Where rows outnumber filters (early layers: ``M·K > M·O + K·O``) computed as
    ``(dyᵀ · cols)ᵀ``, which transposes ``dy`` and the small ``dW`` instead of the
    im2col matrix (on XLA's CPU backend 1.2-1.9x faster); otherwise (late layers:
    few rows, big filters) as ``colsᵀ · dy``, which transposes only ``cols``
    (ResNet-50's 3x3 512-filter layers at batch 16: 1.4-2.3x faster).
    """
    dy_g = _group_rows(dy, groups)
    (m, k), o = cols_g.shape[1:], dy_g.shape[2]
    if m * k > m * o + k * o:
        dw_g = jnp.matmul(dy_g.transpose(0, 2, 1), cols_g).transpose(0, 2, 1)
    else:
        dw_g = jnp.matmul(cols_g.transpose(0, 2, 1), dy_g)
    return _ungroup_weight(dw_g, w_shape)  # (G, KH*KW*C/G, O/G) -> HWIO


def matmul_grad_input(dy, w, window: Window, groups: int):
    """``dx = col2im(dy · Wᵀ)``: the input gradient, NHWC of the unpadded input's shape.

    Where the filters outnumber the rows (late layers: ``K·O > M·O + M·K``) the
    product is computed as ``(W · dyᵀ)ᵀ``, transposing ``dy`` and ``dcols``
    instead of ``W`` (ResNet-50's 3x3 512-filter layers at batch 16: 1.5-2.4x
    faster).
    """
    cols_shape = (*dy.shape[:3], *window.kernel_size, w.shape[2] * groups)
    dy_g, w_g = _group_rows(dy, groups), _group_weight(w, groups)
    (m, o), k = dy_g.shape[1:], w_g.shape[1]
    if k * o > m * o + m * k:
        dcols = jnp.matmul(w_g, dy_g.transpose(0, 2, 1)).transpose(0, 2, 1)
    else:
        dcols = jnp.matmul(dy_g, w_g.transpose(0, 2, 1))
    return unpatches(_ungroup_cols(dcols, cols_shape), window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_nhwc(x, w, b, window: Window, groups: int):
    return _conv_nhwc_fwd(x, w, b, window, groups)[0]


def _conv_nhwc_fwd(x, w, b, window, groups):
    y, cols_g = matmul_forward(x, w, window, groups)
    if b is not None:
        y = y + b
    return y, (cols_g, w, b)


def _conv_nhwc_bwd(window, groups, residuals, dy):
    cols_g, w, b = residuals
    dw = matmul_grad_weight(cols_g, dy, w.shape, groups)  # cols^T . dy
    db = None if b is None else channel_sum(dy).astype(b.dtype)  # sum of dy
    dx = matmul_grad_input(dy, w, window, groups)  # col2im(dy . W^T)
    return dx.astype(cols_g.dtype), dw.astype(w.dtype), db


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def conv2d_im2col(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1,
                  padding_mode="zeros", data_format="NHWC"):
    """:func:`jaxcnn.ops.conv2d` computed as ``im2col`` + one matmul (per group).

    Same signature, validation and results as ``conv2d``. Its gradient is the
    textbook one, by ``jax.custom_vjp``: ``dW = colsᵀ·dy``, ``db = Σ dy``,
    ``dx = col2im(dy·Wᵀ)``; reflect/replicate/circular padding is applied
    before the im2col and differentiated by JAX.
    """
    x, w, b, spec, window = resolve_conv2d_nhwc(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, data_format=data_format, fn="conv2d_im2col",
    )
    return from_channels_last(_conv_nhwc(x, w, b, window, spec.groups), spec.channels_last)


def resolve_conv2d_nhwc(x, w, b, *, fn: str, **options):
    """Validate a 2-D conv call (``conv2d``'s options) and bring it to NHWC / HWIO.

    Non-zero padding modes are applied here (differentiable by JAX), so the returned
    ``window`` pads with zeros. Returns ``(x, w, b, spec, window)``.
    """
    x, w, b, spec = resolve_conv(x, w, b, ndim=2, fn=fn, **options)
    x, pads = apply_padding_mode(x, spec)
    x = to_channels_last(x, spec.channels_last)
    if not spec.channels_last:
        w = jnp.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
    window = Window(spec.kernel_size, spec.stride, spec.dilation, pads, tuple(x.shape[1:3]))
    return x, w, b, spec, window
