"""Max, average, power-average and global pooling with PyTorch's semantics.

The window reductions (``lax.reduce_window``, or on the CPU where windows overlap a
fold over the kernel taps' slices) are the fast path; ``max_pool2d_im2col`` and
``avg_pool2d_im2col`` compute the same results as a reduction over the rows of
the im2col matrix, for teaching and cross-checking.

Semantics (as PyTorch's ``nn.MaxPool*d`` / ``nn.AvgPool*d``):

* ``stride=None`` means ``stride=kernel_size``; padding is at most half the
  effective window on each side.
* ``ceil_mode`` rounds the output size up, adding windows that hang over the
  high edge, but never a window that starts in the high padding.
* max pooling pads with ``-inf``; its gradient goes to the maximum of each
  window, to the *first* one in row-major window order on ties.
* average pooling divides by the window size clipped to the padded input
  (``count_include_pad=True``) or by the number of real input elements in the
  window (``False``); windows overhanging by ``ceil_mode`` never count the
  overhang. The gradient spreads each output's cotangent by that divisor.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.ops import _checks
from jaxcnn.ops._fusion import transposable_materialized, wide_stored
from jaxcnn.ops.conv import conv_output_size
from jaxcnn.ops.im2col import Window, from_channels_last, patches, tap_slices, to_channels_last
from jaxcnn.ops.padding import Pairs, normalize_padding


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    channels_last: bool
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Pairs  # the user's padding
    padding_ceil: Pairs  # plus the high-side overhang ceil_mode needs
    in_size: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    def full(self, spatial, fill):
        """A per-dim tuple of the whole array from its spatial entries."""
        spatial = tuple(spatial)
        return (fill, *spatial, fill) if self.channels_last else (fill, fill, *spatial)

    @property
    def window(self) -> Window:
        return Window(self.kernel_size, self.stride, self.dilation, self.padding_ceil, self.in_size)


def resolve_pool(x, ndim, kernel_size, stride, padding, dilation, ceil_mode, data_format, fn):
    """Validate a pooling call; return ``(x, spec)``."""
    channels_last = _checks.is_channels_last(data_format, ndim, fn)
    x = _checks.float_array(x, "x", fn)
    _checks.check_rank(x, ndim + 2, "x", fn, data_format)
    spatial = tuple(x.shape[1:-1] if channels_last else x.shape[2:])
    kernel_size = _checks.int_tuple(kernel_size, ndim, "kernel_size", fn)
    stride = kernel_size if stride is None else _checks.int_tuple(stride, ndim, "stride", fn)
    dilation = _checks.int_tuple(dilation, ndim, "dilation", fn)
    pads = normalize_padding(padding, ndim, fn=fn, spatial_shape=spatial, kernel_size=kernel_size,
                             stride=stride, dilation=dilation)
    ceil_pads = []
    for axis, n, k, s, d, (lo, hi) in zip(_checks.SPATIAL_NAMES[ndim], spatial, kernel_size, stride,
                                          dilation, pads):
        eff = d * (k - 1) + 1
        if 2 * max(lo, hi) > eff:
            raise ValueError(
                f"{fn}: padding must be at most half the window (kernel_size {k}, dilation {d}) "
                f"along {axis}, got {(lo, hi)}"
            )
        if eff > n + lo + hi:
            raise ValueError(
                f"{fn}: kernel_size {k} (dilation {d}) is larger than the padded input along {axis} "
                f"({n} + padding {lo}+{hi} = {n + lo + hi})"
            )
        out = conv_output_size(n, k, s, (lo, hi), d, ceil_mode=ceil_mode)
        extra = max(0, (out - 1) * s + eff - (n + lo + hi))
        ceil_pads.append((lo, hi + extra))
    spec = PoolSpec(channels_last, kernel_size, stride, dilation, pads, tuple(ceil_pads), spatial)
    return x, spec


def _reduce(x, spec: PoolSpec, init, op):
    """``op`` over each window of ``x`` padded with ``init``: on the CPU where windows overlap, folded over
    the taps (:func:`_tap_sum` for sums, else :func:`_tap_fold`), elsewhere :func:`_reduce_window`."""
    if not (jax.default_backend() == "cpu" and _windows_overlap(spec)):
        return _reduce_window(x, spec, init, op)
    return _tap_sum(x, spec) if op is lax.add else _tap_fold(x, spec, init, op)


def _windows_overlap(spec: PoolSpec) -> bool:
    return any(s < d * (k - 1) + 1 for k, s, d in zip(spec.kernel_size, spec.stride, spec.dilation))


def _reduce_window(x, spec: PoolSpec, init, op):
    """``lax.reduce_window`` over the windows of ``spec``; a ``lax.max`` runs as :func:`_nan_max`."""
    if op is lax.max:  # (a generic reducer takes its init in the operand's dtype)
        op, init = _nan_max, jnp.array(init, x.dtype)
    return lax.reduce_window(
        x, init, op,
        window_dimensions=spec.full(spec.kernel_size, 1),
        window_strides=spec.full(spec.stride, 1),
        padding=spec.full(spec.padding_ceil, (0, 0)),
        window_dilation=spec.full(spec.dilation, 1),
    )


def _nan_max(a, b):
    # lax.max as a select, so that XLA:CPU keeps the windowed max. Compiled with its
    # defaults (eager ops, plain jax.jit), XLA:CPU hands a reduce-window of ``max``
    # to YNNPACK, whose max drops NaN: a 2x2 pool of 4x8x8x16 with NaNs returned
    # none of them. XLA's own emitter runs this at the same speed as its max
    # (2x2/2 of 128x28x28x32: 0.59 against 0.57 ms).
    return lax.select(lax.ne(a, a) | lax.gt(a, b), a, b)


def _tap_fold(x, spec: PoolSpec, init, op):
    """:func:`_reduce_window` as ``op`` folded over the kernel taps' strided slices (row-major window
    order, as ``reduce_window``): one loop fusion, in the layout of ``x``.

    Where windows overlap, XLA:CPU's ``reduce_window`` took 1.7-10x longer forward
    (3x3/2 max pool of 128x13x13x256: 3.9-4.9 against 0.5 ms; 3x3/1 of
    128x16x16x192: 13 against 7.4) and GoogLeNet's step 1.15-1.18x longer. Over
    disjoint windows the fold is faster alone but not in a step (LeNet-5's 2x2
    pools: step 0.88-0.99x), so those keep ``reduce_window``.
    """
    return functools.reduce(op, tap_slices(x, spec.window, init, spec.channels_last))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tap_sum(x, spec: PoolSpec):
    """The windowed sum (zero padding) as :func:`_tap_fold`, its gradient reading a stored cotangent.

    Transposed, the fold is a sum of interior-padded copies of the cotangent, and
    XLA:CPU's fusion re-ran the cotangent's producer inside every copy: average
    pools' forward+backward took 2.1-6.6x ``reduce_window``'s time (3x3/1 of
    128x16x16x192: 115 against 17 ms), AlexNet's step with LRN 1.33x. The JVP's
    tangent goes through an identity matmul, which transposed stores the cotangent
    (forward mode and higher derivatives still work): 0.2-0.8x ``reduce_window``'s
    time channels-last, 0.45-1.16x channels-first, LRN's 1.25x.
    """
    return _tap_fold(x, spec, 0.0, lax.add)


@_tap_sum.defjvp
def _tap_sum_jvp(spec: PoolSpec, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return _tap_sum(x, spec), transposable_materialized(_tap_fold(x_dot, spec, 0.0, lax.add))


def _avg_divisor(spec: PoolSpec, count_include_pad: bool, dtype):
    """Per-output divisor of average pooling, shaped to broadcast against the output.

    The counted region is a box (the padded input, or the input alone), so the
    divisor is the outer product of per-dim counts of window taps inside it.
    """
    counts = None
    for n, k, s, (lo, hi), out in zip(spec.in_size, spec.kernel_size, spec.stride, spec.padding,
                                      spec.window.out_size):
        a, b = (-lo, n + hi) if count_include_pad else (0, n)
        starts = np.arange(out) * s - lo
        dim = np.clip(starts + k, a, b) - np.clip(starts, a, b)
        counts = dim if counts is None else np.multiply.outer(counts, dim)
    return jnp.asarray(counts.reshape(spec.full(counts.shape, 1)), dtype)


def _first_max(x, spec: PoolSpec):
    """Max pooling over explicit windows: the first maximum of each window, picked by argmax."""
    p = patches(to_channels_last(x, spec.channels_last), spec.window, -jnp.inf)
    p = p.reshape(*p.shape[: spec.ndim + 1], -1, p.shape[-1])  # (N, *O, taps, C)
    first = jnp.take_along_axis(p, jnp.argmax(p, axis=-2)[..., None, :], axis=-2)
    return from_channels_last(first[..., 0, :], spec.channels_last)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def window_max(x, spec: PoolSpec):
    """The windowed max (:func:`_reduce`) whose derivative goes to each window's first maximum.

    JAX's own derivative of a windowed max is XLA's ``select_and_scatter``; the
    gradient derived from the JVP below took 1.5-8.4x less time on the CPU (LeNet-5's
    and VGG's 2x2 pools, overlapping 3x3/2 windows), and it also covers dilated
    windows, which JAX cannot differentiate.
    """
    return _reduce(x, spec, -jnp.inf, lax.max)


@window_max.defjvp
def _window_max_jvp(spec: PoolSpec, primals, tangents):
    # The tangent of each output is the tangent of its window's first maximum,
    # selected among the kernel taps' strided slices. Transposed (the gradient),
    # each tap's slice goes back in place by an interior-padded lax.pad: no scatter.
    (x,), (x_dot,) = primals, tangents
    y = window_max(x, spec)
    taps = tap_slices(x, spec.window, -jnp.inf, spec.channels_last)
    first = jnp.full(y.shape, len(taps), np.min_scalar_type(len(taps)))
    for index in reversed(range(len(taps))):
        hit = (taps[index] == y) | jnp.isnan(taps[index])  # NaN is the maximum, as in PyTorch
        first = jnp.where(hit, index, first)
    if _windows_overlap(spec):
        # Stored: transposed, each input's gradient reads ``first`` of every window
        # that holds it, and XLA's fusion would recompute it (and y) once per read.
        first = wide_stored(first)
    y_dot = pick_taps(x_dot, first, spec.window, spec.channels_last)
    # Transposed, this stores the incoming cotangent; left to XLA's CPU fusion its
    # producer (an im2col input gradient, say) re-ran inside every tap's pad:
    # LeNet-5's auto step ran at half speed.
    return y, transposable_materialized(y_dot).astype(y.dtype)


def pick_taps(x, first, window: Window, channels_last: bool = True):
    """Of each window of ``x`` (zero padding), its tap ``first`` (the taps' row-major index, per output):
    ``(N, *O, C)`` (``(N, C, *O)`` channels-first). A max pool's tangent, linear in ``x``."""
    return sum(jnp.where(first == index, tap, 0)
               for index, tap in enumerate(tap_slices(x, window, 0.0, channels_last)))


def _max_pool(x, ndim, kernel_size, stride, padding, dilation, ceil_mode, data_format, fn):
    x, spec = resolve_pool(x, ndim, kernel_size, stride, padding, dilation, ceil_mode, data_format, fn)
    return window_max(x, spec)


def _avg_pool(x, ndim, kernel_size, stride, padding, ceil_mode, count_include_pad, data_format, fn):
    x, spec = resolve_pool(x, ndim, kernel_size, stride, padding, 1, ceil_mode, data_format, fn)
    return _reduce(x, spec, 0.0, lax.add) / _avg_divisor(spec, count_include_pad, x.dtype)


def max_pool1d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, dilation=1,
               data_format="NWC"):
    """1-D max pooling of ``(N, W, C)`` (or ``(N, C, W)``). See :func:`max_pool2d`."""
    return _max_pool(x, 1, kernel_size, stride, padding, dilation, ceil_mode, data_format, "max_pool1d")


def max_pool2d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, dilation=1,
               data_format="NHWC"):
    """2-D max pooling (``torch.nn.functional.max_pool2d``).

    Args:
      x: ``(N, H, W, C)`` or, with ``data_format="NCHW"``, ``(N, C, H, W)``.
      kernel_size, stride, dilation: int or pair; ``stride=None`` is ``kernel_size``.
      padding: int, pair, (lo, hi) pairs, "SAME" or "VALID"; padded cells are ``-inf``.
      ceil_mode: round the output size up (see the module docstring).

    Returns:
      ``(N, OH, OW, C)`` with ``OH = conv_output_size(H, KH, SH, padding, DH, ceil_mode)``.

    As in PyTorch, a NaN is its window's maximum, and the gradient of each output
    goes to its window's first maximum (first NaN) in row-major window order.
    """
    return _max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode, data_format, "max_pool2d")


def max_pool3d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, dilation=1,
               data_format="NDHWC"):
    """3-D max pooling of ``(N, D, H, W, C)`` (or ``(N, C, D, H, W)``). See :func:`max_pool2d`."""
    return _max_pool(x, 3, kernel_size, stride, padding, dilation, ceil_mode, data_format, "max_pool3d")


def avg_pool1d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, count_include_pad=True,
               data_format="NWC"):
    """1-D average pooling of ``(N, W, C)`` (or ``(N, C, W)``). See :func:`avg_pool2d`."""
    return _avg_pool(x, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, data_format,
                     "avg_pool1d")


def avg_pool2d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, count_include_pad=True,
               data_format="NHWC"):
    """2-D average pooling (``torch.nn.functional.avg_pool2d``).

    Each output is the window sum divided by the window size clipped to the
    padded input (``count_include_pad=True``) or by the number of real input
    elements in the window (``False``). Shapes and options as :func:`max_pool2d`.
    """
    return _avg_pool(x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, data_format,
                     "avg_pool2d")


def avg_pool3d(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, count_include_pad=True,
               data_format="NDHWC"):
    """3-D average pooling of ``(N, D, H, W, C)`` (or ``(N, C, D, H, W)``). See :func:`avg_pool2d`."""
    return _avg_pool(x, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, data_format,
                     "avg_pool3d")


def lp_pool2d(x, p, kernel_size, stride=None, *, ceil_mode=False, data_format="NHWC"):
    """Power-average pooling: ``(sum over the window of x**p) ** (1/p)``, PyTorch's ``lp_pool2d``.

    ``p=1`` is sum pooling; large ``p`` approaches max pooling. As in PyTorch,
    it is computed as ``(avg_pool2d(x**p) * KH*KW) ** (1/p)``, so a window that
    ``ceil_mode`` lets overhang the edge is scaled up to the full window size.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"lp_pool2d: p must be a positive number, got {p!r}")
    x, spec = resolve_pool(x, 2, kernel_size, stride, 0, 1, ceil_mode, data_format, "lp_pool2d")
    mean = _reduce(x**p, spec, 0.0, lax.add) / _avg_divisor(spec, True, x.dtype)
    return (mean * np.prod(spec.kernel_size)) ** (1.0 / p)


def global_avg_pool(x, data_format="NHWC"):
    """Mean over all spatial dims: ``(N, *S, C) -> (N, C)`` (or ``(N, C, *S) -> (N, C)``).

    ``data_format`` is any of NWC, NHWC, NDHWC, NCW, NCHW, NCDHW; ``x`` must have
    the matching rank.
    """
    formats = (*_checks.CHANNELS_LAST.values(), *_checks.CHANNELS_FIRST.values())
    if data_format not in formats:
        raise ValueError(f"global_avg_pool: data_format must be one of {formats}, got {data_format!r}")
    x = _checks.float_array(x, "x", "global_avg_pool")
    _checks.check_rank(x, len(data_format), "x", "global_avg_pool", data_format)
    channels_last = data_format.endswith("C")
    axes = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    return jnp.mean(x, axis=axes)


def max_pool2d_im2col(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, dilation=1,
                      data_format="NHWC"):
    """:func:`max_pool2d` as im2col + a max over each receptive field.

    The maximum is picked by ``argmax`` (first maximum on ties), so its gradient,
    derived by JAX, goes to exactly the element PyTorch's does.
    """
    x, spec = resolve_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode, data_format,
                           "max_pool2d_im2col")
    return _first_max(x, spec)


def avg_pool2d_im2col(x, kernel_size, stride=None, *, padding=0, ceil_mode=False,
                      count_include_pad=True, data_format="NHWC"):
    """:func:`avg_pool2d` as im2col + a sum over each receptive field / the divisor."""
    x, spec = resolve_pool(x, 2, kernel_size, stride, padding, 1, ceil_mode, data_format,
                           "avg_pool2d_im2col")
    p = patches(to_channels_last(x, spec.channels_last), spec.window, 0.0)
    sums = from_channels_last(jnp.sum(p, axis=(3, 4)), spec.channels_last)
    return sums / _avg_divisor(spec, count_include_pad, x.dtype)
