"""Convolution as a matmul over row bands: im2col for convolutions with few filters.

im2col gives every output pixel its own matrix row, so a layer with few filters
becomes a long, skinny matmul (LeNet-5's first layer: ``(100352, 25) @ (25, 6)``)
whose runtime is the traffic of a large column matrix. Neighbouring output
pixels along W read overlapping inputs, so ``b`` of them can share one row: the
row holds the union of their receptive fields, ``KH x S x C`` values with span
``S = (b - 1) * SW + (KW - 1) * DW + 1``, and the filter matrix becomes banded
(block-Toeplitz), ``(KH*S*C, b*O)``, with each filter tap placed once per band
position::

    rows = patches(x, band window)            # (N*OH*OW/b, KH*S*C)
    y    = rows @ T(w)                        # (N*OH*OW/b, b*O) = NHWC y, b pixels per row
    T[(i, l*SW + j*DW, c), (l, o)] = w[i, j, c, o]

For LeNet-5's first layer at ``b = 4`` that is ``(25088, 40) @ (40, 24)``: 2.5x
less column traffic and a matmul four times wider, for 1.6x the multiply-adds.
Its gradients are the transposed products, as im2col's::

    dT = rowsᵀ · dy          dW = the sum of dT over each tap's band positions
    dx = unpatches(dy · Tᵀ)  (the band windows' overlaps summed)

Only the last spatial axis is banded; the output width is padded up to a
multiple of ``b`` (the extra outputs read zero padding and are cropped).
Grouped convolutions band each group's filters.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxcnn.ops.im2col import Window, _group_cols, _ungroup_cols, patches, unpatches

# Output pixels per band: enough that the matmul's output row holds at least this many values.
BAND_OUTPUTS = 24


def band_width(window: Window, out_per_group: int) -> int:
    """The band ``b`` the auto backend uses: ``ceil(24 / filters per group)``, at most the output width.

    1 (no banding, im2col's rows) where the filters fill a 24-wide row already, or
    where neighbouring windows along W share no input (``(KW - 1) * DW + 1 <= SW``):
    banding them would only add zeros to the filter matrix.
    """
    kw, sw, dw = window.kernel_size[-1], window.stride[-1], window.dilation[-1]
    if (kw - 1) * dw + 1 <= sw:
        return 1
    return max(1, min(-(-BAND_OUTPUTS // out_per_group), window.out_size[-1]))


def band_window(window: Window, b: int) -> Window:
    """The window whose patches are the bands: ``b`` outputs along W per window, W padded to fit."""
    out_w, kw, sw, dw = window.out_size[-1], window.kernel_size[-1], window.stride[-1], window.dilation[-1]
    padded_out_w = -(-out_w // b) * b
    span = (b - 1) * sw + (kw - 1) * dw + 1
    extra = max(0, (padded_out_w - 1) * sw + (kw - 1) * dw + 1 - window.padded_size[-1])
    (lo, hi) = window.padding[-1]
    band = Window((*window.kernel_size[:-1], span), (*window.stride[:-1], b * sw), (*window.dilation[:-1], 1),
                  (*window.padding[:-1], (lo, hi + extra)), window.in_size)
    assert band.out_size == (*window.out_size[:-1], padded_out_w // b), (band, window)
    return band


def _selection(window: Window, b: int, dtype) -> np.ndarray:
    """``sel[v, p, j] = 1`` where band position ``p``'s tap ``j`` reads band column ``v``: ``(S, b, KW)``."""
    kw, sw, dw = window.kernel_size[-1], window.stride[-1], window.dilation[-1]
    span = (b - 1) * sw + (kw - 1) * dw + 1
    column, position, tap = np.ogrid[:span, :b, :kw]
    return (column == position * sw + tap * dw).astype(dtype)


def band_weight(w, window: Window, groups: int, b: int):
    """HWIO ``w`` as each group's banded filter matrix, ``(G, KH*S*C/G, b*O/G)``."""
    kh, kw, cg, o = w.shape
    t = jnp.einsum("vlj,ijcgo->givclo", _selection(window, b, w.dtype), w.reshape(kh, kw, cg, groups, o // groups))
    return t.reshape(groups, -1, b * (o // groups))


def _band_weight_adjoint(t, w_shape, window: Window, groups: int, b: int):
    """Adjoint of :func:`band_weight`: each tap's entries summed over its band positions, HWIO."""
    kh, kw, cg, o = w_shape
    t = t.reshape(groups, kh, -1, cg, b, o // groups)
    return jnp.einsum("vlj,givclo->ijcgo", _selection(window, b, t.dtype), t).reshape(w_shape)


def banded_rows(x, window: Window, groups: int, b: int):
    """The band matrix of NHWC ``x`` per group, ``(G, N*OH*OW/b, KH*S*C/G)``."""
    return _group_cols(patches(x, band_window(window, b)), groups)


def _dy_rows(dy, b: int, groups: int):
    """``(N, OH, OW, O) -> (G, N*OH*OW/b, b*O/G)``: each group's output gradient, ``b`` pixels per row."""
    n, oh, ow, o = dy.shape
    padded_ow = -(-ow // b) * b
    dy = jnp.pad(dy, ((0, 0), (0, 0), (0, padded_ow - ow), (0, 0)))
    rows = dy.reshape(-1, b, groups, o // groups).transpose(2, 0, 1, 3)
    return rows.reshape(groups, -1, b * (o // groups))


def banded_forward(x, w, window: Window, groups: int, b: int):
    """Convolution of NHWC ``x`` by HWIO ``w`` as ``rows @ T``; returns ``(y, rows_g)``.

    ``rows_g`` (each group's band matrix) is the residual :func:`banded_grad_weight` needs.
    """
    band = band_window(window, b)
    rows_g = banded_rows(x, window, groups, b)  # (G, M, KH*S*C/G)
    y = jnp.matmul(rows_g, band_weight(w, window, groups, b))  # (G, M, b*O/G)
    n, o = x.shape[0], w.shape[3]
    y = y.reshape(groups, -1, b, o // groups).transpose(1, 2, 0, 3)
    y = y.reshape(n, *band.out_size[:-1], band.out_size[-1] * b, o)
    return y[:, :, : window.out_size[-1]], rows_g


def banded_grad_weight(rows_g, dy, w_shape, window: Window, groups: int, b: int):
    """``dW``: ``dT = rowsᵀ · dy`` per group, folded onto the filter taps.

    One contraction over the rows of both, with no transposed copy of either: XLA's
    CPU matmul reads them in place (LeNet-5's training step 1.24x faster than with
    ``dy`` transposed first, which re-ran the pooling gradient inside the transpose).
    """
    dt = jnp.einsum("gmk,gmn->gkn", rows_g, _dy_rows(dy, b, groups))
    return _band_weight_adjoint(dt, w_shape, window, groups, b)


def banded_grad_input(dy, w, window: Window, groups: int, b: int):
    """``dx = unpatches(dy · Tᵀ)``: the input gradient, NHWC of the unpadded input's shape."""
    band = band_window(window, b)
    drows = jnp.matmul(_dy_rows(dy, b, groups), band_weight(w, window, groups, b).transpose(0, 2, 1))
    shape = (dy.shape[0], *band.out_size, *band.kernel_size, w.shape[2] * groups)
    return unpatches(_ungroup_cols(drows, shape), band)
