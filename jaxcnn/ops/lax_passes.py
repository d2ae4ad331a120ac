"""The three passes of a 2-D NHWC / HWIO convolution on ``lax.conv_general_dilated``.

The ``"xla"`` formulation of ``conv2d_auto`` and the tangents of the oneDNN
kernels (:mod:`jaxcnn.ops.onednn`). Each pass is linear in each of its arrays.

On the CPU the two gradients are convolutions in XLA:CPU's canonical layout
(NHWC input, HWIO kernel, NHWC output), with the transposes made explicit.
Autodiff's transposes of :func:`forward` are the same sums in other layouts
(``dW``'s reads ``x`` as ``f01b``), and XLA:CPU brings only a program's
top-level convolutions to its canonical layout: inside a loop (``lax.scan``,
as gradient accumulation runs) the others ran as naive loop nests. One
ResNet-20 3x3 layer (64x32x32x16 -> 32 channels, stride 2), three passes in a
scan: ``dW`` 625 -> 5.0 ms, ``dx`` 43 -> 6.7 ms; outside loops equal. Other
backends keep autodiff's transposes, whose layouts their compilers choose.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops.im2col import Window

_CANONICAL = ("NHWC", "HWIO", "NHWC")


def forward(x, w, window: Window, groups: int):
    """``(N, H, W, C)`` convolved with ``(KH, KW, C/G, O)`` over ``window`` (zero padding): ``(N, OH, OW, O)``."""
    return lax.conv_general_dilated(x, w, window.stride, window.padding, rhs_dilation=window.dilation,
                                    dimension_numbers=_CANONICAL, feature_group_count=groups)


def input_shape(dy, w, window: Window, groups: int) -> tuple[int, ...]:
    """The shape of :func:`forward`'s ``x`` for the cotangent ``dy`` and kernel ``w``."""
    return (dy.shape[0], *window.in_size, w.shape[2] * groups)


def _unread(window: Window) -> tuple[int, ...]:
    """Per spatial dim, how many trailing rows of the padded input no window reaches (stride > 1)."""
    return tuple((n - (d * (k - 1) + 1)) % s for n, k, s, d in
                 zip(window.padded_size, window.kernel_size, window.stride, window.dilation))


def _autodiff_grad_input(dy, w, window: Window, groups: int):
    x = jnp.zeros(input_shape(dy, w, window, groups), dy.dtype)  # the transpose does not read x's values
    return jax.vjp(lambda x_: forward(x_, w, window, groups), x)[1](dy)[0]


def _autodiff_grad_weight(x, dy, w_shape, window: Window, groups: int):
    w = jnp.zeros(w_shape, x.dtype)  # the transpose does not read w's values
    return jax.vjp(lambda w_: forward(x, w_, window, groups), w)[1](dy)[0]


def grad_input(dy, w, window: Window, groups: int):
    """``dx`` of :func:`forward` for the cotangent ``dy``: ``(N, H, W, C)``.

    On the CPU ``dy`` dilated by the stride, convolved with ``w`` flipped, in and
    out channels swapped within each group.
    """
    if jax.default_backend() != "cpu":
        return _autodiff_grad_input(dy, w, window, groups)
    kh, kw, c_group, o = w.shape
    flipped = jnp.flip(w, (0, 1)).reshape(kh, kw, c_group, groups, o // groups)
    w_t = flipped.transpose(0, 1, 4, 3, 2).reshape(kh, kw, o // groups, groups * c_group)
    pads = [(d * (k - 1) - lo, d * (k - 1) - hi + r) for (lo, hi), k, d, r in
            zip(window.padding, window.kernel_size, window.dilation, _unread(window))]
    return lax.conv_general_dilated(dy, w_t, (1, 1), pads, lhs_dilation=window.stride,
                                    rhs_dilation=window.dilation, dimension_numbers=_CANONICAL,
                                    feature_group_count=groups)


def grad_weight(x, dy, w_shape, window: Window, groups: int):
    """``dW`` of :func:`forward` for the cotangent ``dy``: ``w_shape``, in ``x``'s dtype.

    On the CPU with one group, ``x`` as ``(C, H, W, N)`` (the batch as its
    channels) convolved with ``dy`` as ``(OH, OW, N, O)``, strided by the forward's
    dilation and dilated by its stride. Grouped, autodiff's transpose of :func:`forward`.
    """
    if jax.default_backend() != "cpu" or groups > 1:
        return _autodiff_grad_weight(x, dy, w_shape, window, groups)
    # Rows past the last window are cut off the high side (a negative padding where they are x's own).
    pads = [(lo, hi - r) for r, (lo, hi) in zip(_unread(window), window.padding)]
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3).astype(x.dtype),
                                  window.dilation, pads, rhs_dilation=window.stride, dimension_numbers=_CANONICAL)
    return dw.transpose(1, 2, 0, 3)
