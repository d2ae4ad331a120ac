"""Independent float64 references written as plain loops: the textbook's definitions.

Everything here is NumPy only and channels-first (NCHW / OIHW, as the textbook
and PyTorch write it); tests transpose for NHWC. Gradients are derived by hand
from the loops, not by autodiff.
"""

from __future__ import annotations

import itertools

import numpy as np

NUMPY_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad_nchw(x, pads, mode="zeros"):
    """Pad the spatial dims of (N, C, *S) by pads [(lo, hi), ...] in a PyTorch padding mode."""
    return np.pad(x, [(0, 0), (0, 0), *pads], mode=NUMPY_MODE[mode])


def pad_adjoint(g_padded, in_shape, pads, mode="zeros"):
    """Adjoint of pad_nchw: every padded cell sends its value back to the cell it copies.

    Built from an index map (the padding applied to the flat indices of the input),
    so it is exact for every mode without knowing how the mode mirrors or wraps.
    """
    index = np.arange(int(np.prod(in_shape))).reshape(in_shape).astype(np.float64)
    if mode == "zeros":
        index = np.pad(index, [(0, 0), (0, 0), *pads], constant_values=-1)
    else:
        index = pad_nchw(index, pads, mode)
    index = index.astype(np.int64).ravel()
    keep = index >= 0
    flat = np.bincount(index[keep], weights=g_padded.ravel()[keep], minlength=int(np.prod(in_shape)))
    return flat.reshape(in_shape)


def conv2d_loops(x, w, b, stride, pads, dilation, groups, mode="zeros"):
    """The textbook's seven nested loops. x: (N, C, H, W), w: (O, C/groups, KH, KW)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = pad_nchw(x, pads, mode)
    n_batch, _, hp, wp = xp.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n_batch, n_out, oh, ow))
    for n in range(n_batch):
        for f in range(n_out):
            g = f // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if b is None else float(b[f])
                    for c in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                acc += xp[n, g * cg + c, i * sh + p * dh, j * sw + q * dw] * w[f, c, p, q]
                    y[n, f, i, j] = acc
    return y


def conv2d_loops_grad(x, w, dy, stride, pads, dilation, groups, mode="zeros"):
    """(dx, dw, db) of sum(dy * conv2d_loops(x, w, b)), by the same loops run backwards."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    xp = pad_nchw(x, pads, mode)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    n_batch, n_out, oh, ow = dy.shape
    _, cg, kh, kw = w.shape
    og = n_out // groups
    (sh, sw), (dh, dwl) = stride, dilation
    for n, f, i, j in itertools.product(range(n_batch), range(n_out), range(oh), range(ow)):
        g = f // og
        for c, p, q in itertools.product(range(cg), range(kh), range(kw)):
            r, s = i * sh + p * dh, j * sw + q * dwl
            dxp[n, g * cg + c, r, s] += dy[n, f, i, j] * w[f, c, p, q]
            dw[f, c, p, q] += dy[n, f, i, j] * xp[n, g * cg + c, r, s]
    return pad_adjoint(dxp, x.shape, pads, mode), dw, dy.sum(axis=(0, 2, 3))


def conv_nd_loops(x, w, b, stride, pads, dilation, groups, mode="zeros"):
    """Any number of spatial dims, by loops over output positions and kernel taps."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = pad_nchw(x, pads, mode)
    n_out, cg = w.shape[:2]
    ksize, og = w.shape[2:], n_out // groups
    out = [(n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(xp.shape[2:], ksize, stride, dilation)]
    y = np.zeros((x.shape[0], n_out, *out))
    for n, f in itertools.product(range(x.shape[0]), range(n_out)):
        g = f // og
        for o in itertools.product(*map(range, out)):
            acc = 0.0 if b is None else float(b[f])
            for c in range(cg):
                for k in itertools.product(*map(range, ksize)):
                    idx = tuple(oi * s + ki * d for oi, ki, s, d in zip(o, k, stride, dilation))
                    acc += xp[(n, g * cg + c, *idx)] * w[(f, c, *k)]
            y[(n, f, *o)] = acc
    return y


def im2col_loops(x, kh, kw, stride=(1, 1), pads=((0, 0), (0, 0)), dilation=(1, 1)):
    """NCHW im2col, Caffe column order (C, KH, KW), one row per output pixel."""
    xp = pad_nchw(np.asarray(x, np.float64), pads)
    n_batch, c, hp, wp = xp.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for n, i, j in itertools.product(range(n_batch), range(oh), range(ow)):
        rows.append([xp[n, ch, i * sh + p * dh, j * sw + q * dw]
                     for ch, p, q in itertools.product(range(c), range(kh), range(kw))])
    return np.array(rows)


def pool_out_size(n, k, s, p, d, ceil_mode):
    """PyTorch's pooling_output_shape, spelled out."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _windows(shape, k, s, p, d, ceil_mode):
    """Yield (output index, list of input indices in window order, or None where padding)."""
    spatial = shape[2:]
    out = [pool_out_size(n, ki, si, pi, di, ceil_mode) for n, ki, si, pi, di in zip(spatial, k, s, p, d)]
    for o in itertools.product(*map(range, out)):
        taps = []
        for t in itertools.product(*map(range, k)):
            idx = tuple(oi * si - pi + ti * di for oi, si, pi, ti, di in zip(o, s, p, t, d))
            inside = all(0 <= v < n for v, n in zip(idx, spatial))
            taps.append(idx if inside else None)
        yield o, taps, out


def max_pool_loops(x, k, s, p, d=None, ceil_mode=False, dy=None):
    """Max pooling of (N, C, *S) and, given dy, its gradient to the first maximum of each window."""
    x = np.asarray(x, np.float64)
    d = d or (1,) * len(k)
    out_shape = [pool_out_size(n, ki, si, pi, di, ceil_mode)
                 for n, ki, si, pi, di in zip(x.shape[2:], k, s, p, d)]
    y = np.zeros((*x.shape[:2], *out_shape))
    dx = np.zeros_like(x)
    for o, taps, _ in _windows(x.shape, k, s, p, d, ceil_mode):
        for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
            best, arg = -np.inf, None
            for idx in taps:
                if idx is not None and x[(n, c, *idx)] > best:
                    best, arg = x[(n, c, *idx)], idx
            y[(n, c, *o)] = best
            if dy is not None:
                dx[(n, c, *arg)] += dy[(n, c, *o)]
    return (y, dx) if dy is not None else y


def avg_pool_loops(x, k, s, p, ceil_mode=False, count_include_pad=True, dy=None):
    """PyTorch's avg_pool kernel: divisor from hstart/hend clipped to the padded input."""
    x = np.asarray(x, np.float64)
    ones = (1,) * len(k)
    out_shape = [pool_out_size(n, ki, si, pi, 1, ceil_mode) for n, ki, si, pi in zip(x.shape[2:], k, s, p)]
    y = np.zeros((*x.shape[:2], *out_shape))
    dx = np.zeros_like(x)
    for o, taps, _ in _windows(x.shape, k, s, p, ones, ceil_mode):
        start = [oi * si - pi for oi, si, pi in zip(o, s, p)]
        end = [min(a + ki, n + pi) for a, ki, n, pi in zip(start, k, x.shape[2:], p)]
        pool_size = np.prod([e - a for a, e in zip(start, end)])
        real = [idx for idx in taps if idx is not None]
        divisor = pool_size if count_include_pad else len(real)
        for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
            y[(n, c, *o)] = sum(x[(n, c, *idx)] for idx in real) / divisor
            if dy is not None:
                for idx in real:
                    dx[(n, c, *idx)] += dy[(n, c, *o)] / divisor
    return (y, dx) if dy is not None else y
