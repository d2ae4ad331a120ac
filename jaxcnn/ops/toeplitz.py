"""Convolution as one matmul with a banded (Toeplitz) weight matrix, a formulation for narrow images.

Each output row is the product of the ``KH`` input rows it reads, laid side by
side, with a matrix that slides the kernel along the width::

    rows[n, oh]     = concat_i x[n, oh*SH + i*DH, :, :]                  # (N*OH, KH*Wp*C)
    T[i, v, c, o, d] = sum_j [v == o*SW + j*DW] * w[i, j, c, d]          # (KH*Wp*C, OW*O)
    y[n, oh]        = rows[n, oh] @ T                                    # (N*OH, OW*O)

``T`` is mostly zeros: the matmul does ``Wp / KW`` times the convolution's
multiply-adds. In exchange it is one large, squarish matmul where im2col's is
tall and thin (LeNet-5's first layer: ``3584x160 @ 160x168`` instead of
``100352x25 @ 25x6``), and the input is copied ``KH`` times instead of
``KH*KW``. Both gradients are JAX's derivative of this: a matmul each, plus
folding the rows' gradient back onto the input and ``T``'s onto the kernel taps.
``conv2d_auto`` offers it only where ``T`` is small and the waste bounded
(:func:`toeplitz_fits`), and keeps it only where it measures fastest.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.ops.im2col import Window

# T larger than this many entries (16 MB in float32) is not offered ...
MAX_MATRIX_ENTRIES = 1 << 22
# ... nor one doing more than this many times the convolution's multiply-adds (Wp / KW).
MAX_WASTE = 8


def toeplitz_fits(w_shape, window: Window, groups: int) -> bool:
    """Whether the banded matrix of this convolution is small enough to be worth timing."""
    kh, kw, cin_g, cout = w_shape
    width = window.padded_size[1]
    entries = kh * width * cin_g * groups * window.out_size[1] * cout
    return entries <= MAX_MATRIX_ENTRIES and width <= MAX_WASTE * kw


def _dense_kernel(w, groups: int):
    """``(KH, KW, C/G, O)`` grouped kernel -> ``(KH, KW, C, O)``, zero between groups (block diagonal)."""
    if groups == 1:
        return w
    kh, kw, cin_g, cout = w.shape
    w = w.reshape(kh, kw, 1, cin_g, groups, cout // groups)
    blocks = w * jnp.eye(groups, dtype=w.dtype).reshape(1, 1, groups, 1, groups, 1)
    return blocks.reshape(kh, kw, groups * cin_g, cout)


def _width_selector(kw: int, window: Window) -> np.ndarray:
    """``S[j, v, o] = 1`` where output column ``o``'s tap ``j`` reads padded input column ``v``."""
    width, out_width = window.padded_size[1], window.out_size[1]
    taps = np.arange(kw)[:, None] * window.dilation[1] + np.arange(out_width)[None, :] * window.stride[1]
    return (np.arange(width)[None, :, None] == taps[:, None, :]).astype(np.float32)


def banded_matrix(w, window: Window, groups: int):
    """``T`` of the module docstring, ``(KH*Wp*C, OW*O)``, from an HWIO kernel."""
    w = _dense_kernel(w, groups)
    kh, kw, cin, cout = w.shape
    t = jnp.einsum("jvo,ijcd->ivcod", _width_selector(kw, window).astype(w.dtype), w)
    return t.reshape(kh * window.padded_size[1] * cin, window.out_size[1] * cout)


def input_rows(x, window: Window):
    """The ``KH`` input rows of every output row, side by side: ``(N*OH, KH*Wp*C)``."""
    xp = jnp.pad(x, ((0, 0), *window.padding, (0, 0))) if any(map(any, window.padding)) else x
    n, _, width, c = xp.shape
    out_h, stride_h, dil_h = window.out_size[0], window.stride[0], window.dilation[0]
    rows = [lax.slice(xp, (0, i * dil_h, 0, 0), (n, i * dil_h + (out_h - 1) * stride_h + 1, width, c),
                      (1, stride_h, 1, 1))
            for i in range(window.kernel_size[0])]
    return jnp.stack(rows, axis=2).reshape(n * out_h, -1)


def toeplitz_forward(x, w, window: Window, groups: int):
    """NHWC ``x``, HWIO ``w`` -> NHWC ``y`` as ``input_rows(x) @ banded_matrix(w)``."""
    y = input_rows(x, window) @ banded_matrix(w, window, groups)
    return y.reshape(x.shape[0], window.out_size[0], window.out_size[1], w.shape[3])
