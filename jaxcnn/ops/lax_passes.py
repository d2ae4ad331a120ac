"""The three passes of a 2-D NHWC / HWIO convolution on ``lax.conv_general_dilated``.

The ``"xla"`` formulation of ``conv2d_auto`` and the tangents of the oneDNN
kernels (:mod:`jaxcnn.ops.onednn`). Each pass is linear in each of its arrays;
the gradients are autodiff's transposes of :func:`forward`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.ops.im2col import Window


def forward(x, w, window: Window, groups: int):
    """``(N, H, W, C)`` convolved with ``(KH, KW, C/G, O)`` over ``window`` (zero padding): ``(N, OH, OW, O)``."""
    return lax.conv_general_dilated(x, w, window.stride, window.padding, rhs_dilation=window.dilation,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def input_shape(dy, w, window: Window, groups: int) -> tuple[int, ...]:
    """The shape of :func:`forward`'s ``x`` for the cotangent ``dy`` and kernel ``w``."""
    return (dy.shape[0], *window.in_size, w.shape[2] * groups)


def grad_input(dy, w, window: Window, groups: int):
    """``dx`` of :func:`forward` for the cotangent ``dy``: ``(N, H, W, C)``."""
    x = jnp.zeros(input_shape(dy, w, window, groups), dy.dtype)  # the transpose does not read x's values
    return jax.vjp(lambda x_: forward(x_, w, window, groups), x)[1](dy)[0]


def grad_weight(x, dy, w_shape, window: Window, groups: int):
    """``dW`` of :func:`forward` for the cotangent ``dy``: ``w_shape``, in ``x``'s dtype."""
    w = jnp.zeros(w_shape, x.dtype)  # the transpose does not read w's values
    return jax.vjp(lambda w_: forward(x, w_, window, groups), w)[1](dy)[0]
