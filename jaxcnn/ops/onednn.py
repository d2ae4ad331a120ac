"""Convolutions on oneDNN, the library PyTorch's CPU convolutions run on, called through XLA:CPU.

jaxlib's XLA:CPU links oneDNN and can execute a custom call
``__onednn$convolution``: a forward convolution of any dimension numbers,
configured by a JSON ``onednn_conv_config`` (XLA's own pass that rewrites
convolutions to it is compiled out of jaxlib's builds). On this project's 2-core
AVX-512 machine it runs ResNet's 3x3 forwards 1.4-2.7x faster than
``lax.conv_general_dilated`` and their stride-1 input gradients 1.5-2.3x faster
(``benchmarks/RESULTS.md``). The custom call runs forward convolutions only
(oneDNN's backward kernels are not reachable), so ``conv2d_auto``'s
``"onednn"`` formulation writes all three passes as forward ones:

* forward: ``y = conv(x, w)`` as is;
* input gradient: ``dx = conv(dilate(dy, stride), flip(w)ᵀ)``, the transposed
  convolution (``dy`` dilated with zeros where the stride is above 1, the
  kernel's taps reversed and its in/out features swapped per group);
* weight gradient: ``dW = conv(xᵀ, dy)``, ``x`` as ``(C, H, W, N)`` and ``dy``
  the kernel (:func:`onednn_grad_weight`).

The custom call is XLA's internal interface, not a public one, and its config
has changed between XLA versions, and a config XLA cannot read aborts the
process. :func:`available` therefore proves it once per machine and software, in
a child process, on small cases (all three passes, strided, padded, dilated and
grouped, against ``lax``); where that fails, or off the CPU, or for
dtypes other than float32 (:func:`usable`), ``conv2d_auto`` computes those
passes with ``lax`` instead and never measures oneDNN. Differentiating
:func:`conv_general` (as a second derivative through ``conv2d_auto`` does) uses
``lax`` convolutions for the tangents, so every derivative stays exact.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from jaxcnn import runtime
from jaxcnn.ops.im2col import Window

TARGET = "__onednn$convolution"
MACHINE_TABLE = "onednn"
NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # (lhs, rhs, out) specs, as lax.ConvDimensionNumbers


def _lax_conv(lhs, rhs, *, strides, padding, dilation, specs, groups):
    return lax.conv_general_dilated(lhs, rhs, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=lax.ConvDimensionNumbers(*specs), feature_group_count=groups)


def _config(strides, padding, dilation, specs, groups) -> str:
    """The ``onednn_conv_config`` of jaxlib's XLA:CPU: dims zero-based, window values as in HLO."""
    (lhs, rhs, out), rank = specs, len(specs[0])

    def data(spec):
        return {"dims": rank, "data": {"batch_dim": spec[0], "feature_dim": spec[1], "spatial_dims": list(spec[2:])}}

    return json.dumps({"onednn_conv_config": {
        "dims": rank, "input": data(lhs), "output": data(out),
        "kernel": {"dims": rank, "filter": {"output_feature_dim": rhs[0], "input_feature_dim": rhs[1],
                                            "spatial_dims": list(rhs[2:])}},
        "window": {"strides": list(strides), "pad_left": [lo for lo, _ in padding],
                   "pad_right": [hi for _, hi in padding], "window_dilations": list(dilation)},
        "feature_groups": groups,
    }})


def _abstract_eval(lhs, rhs, **params):
    out = jax.eval_shape(functools.partial(_lax_conv, **params), lhs, rhs)
    return jax.core.ShapedArray(out.shape, out.dtype)


def _cpu_lowering(ctx, lhs, rhs, **params):
    return jax.ffi.ffi_lowering(TARGET, backend_config=_config(**params), api_version=1)(ctx, lhs, rhs)


def _batched(args, dims, **params):
    # vmap (per-example gradients, say) runs lax's convolution: correct, not oneDNN-fast.
    return jax.vmap(functools.partial(_lax_conv, **params), in_axes=dims)(*args), 0


_conv_p = Primitive("onednn_conv")
_conv_p.def_abstract_eval(_abstract_eval)
_conv_p.def_impl(lambda lhs, rhs, **params: jax.jit(functools.partial(_conv_p.bind, **params))(lhs, rhs))
mlir.register_lowering(_conv_p, mlir.lower_fun(_lax_conv, multiple_results=False))
mlir.register_lowering(_conv_p, _cpu_lowering, platform="cpu")
batching.primitive_batchers[_conv_p] = _batched


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_general(lhs, rhs, strides, padding, dilation, specs, groups):
    """``lax.conv_general_dilated`` without input dilation, computed by oneDNN on the CPU.

    ``specs`` are ``lax.ConvDimensionNumbers``' ``(lhs_spec, rhs_spec, out_spec)``
    tuples of axis indices; ``padding`` is ``((lo, hi), ...)`` of non-negative
    pairs. Elsewhere than the CPU it lowers to ``lax.conv_general_dilated``.
    Tangents are computed with ``lax`` (the convolution is bilinear).
    """
    return _conv_p.bind(lhs, rhs, strides=strides, padding=padding, dilation=dilation, specs=specs, groups=groups)


@conv_general.defjvp
def _conv_general_jvp(strides, padding, dilation, specs, groups, primals, tangents):
    (lhs, rhs), (d_lhs, d_rhs) = primals, tangents
    conv = functools.partial(_lax_conv, strides=strides, padding=padding, dilation=dilation, specs=specs,
                             groups=groups)
    return conv_general(lhs, rhs, strides, padding, dilation, specs, groups), conv(d_lhs, rhs) + conv(lhs, d_rhs)


def onednn_forward(x, w, window: Window, groups: int):
    """NHWC ``x`` convolved with HWIO ``w`` over ``window`` (zero padding): ``(N, OH, OW, O)``."""
    return conv_general(x, w, window.stride, window.padding, window.dilation, NHWC_HWIO, groups)


def onednn_grad_input(dy, w, window: Window, groups: int):
    """``dx`` of :func:`onednn_forward` for the cotangent ``dy``: ``(N, H, W, C)``, as a forward convolution.

    Along each spatial axis ``dy`` is dilated by the stride and padded by
    ``d(k-1) - lo`` before and ``d(k-1) - hi + r`` after, where ``r`` is the
    input the forward's last window left unread; negative amounts crop ``dy``
    first (oneDNN takes no negative padding).
    """
    kh, kw, cg, o = w.shape
    flipped = w[::-1, ::-1].reshape(kh, kw, cg, groups, o // groups)
    w_t = flipped.transpose(0, 1, 4, 3, 2).reshape(kh, kw, o // groups, groups * cg)
    pads = []
    for n, k, s, d, (lo, hi), out in zip(window.in_size, window.kernel_size, window.stride, window.dilation,
                                        window.padding, window.out_size):
        unread = n + lo + hi - (d * (k - 1) + 1) - (out - 1) * s
        pads.append((d * (k - 1) - lo, d * (k - 1) - hi + unread))
    if any(s > 1 for s in window.stride) or any(p < 0 for pair in pads for p in pair):
        config = [(0, 0, 0), *((min(lo, 0), min(hi, 0), s - 1) for (lo, hi), s in zip(pads, window.stride)), (0, 0, 0)]
        dy = lax.pad(dy, jnp.zeros((), dy.dtype), config)
        pads = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
    ones = (1,) * len(window.stride)
    return conv_general(dy, w_t, ones, tuple(pads), window.dilation, NHWC_HWIO, groups)


def onednn_grad_weight(x, dy, w_shape, window: Window, groups: int):
    """``dW`` of :func:`onednn_forward`: ``(KH, KW, C/G, O)``, as a forward convolution per group.

    ``dW[i, j, c, o] = sum_{n,p,q} x[n, p*s + i*d, q*s + j*d, c] dy[n, p, q, o]`` is a
    convolution of ``x`` read as ``(C, H, W, N)`` (channels as its batch, images as
    its features) with ``dy`` as the kernel, whose window is the whole output:
    window strides the forward's dilation, window dilation its stride. ``x`` is
    transposed to that layout first: read in place, oneDNN falls back to its
    reference kernel (1-2 s for one ResNet layer).
    """
    kh, kw, cg, o = w_shape
    og = o // groups
    pads = []
    for n, k, s, d, (lo, _), out in zip(window.in_size, (kh, kw), window.stride, window.dilation, window.padding,
                                       window.out_size):
        pads.append((lo, (k - 1) * d + (out - 1) * s + 1 - n - lo))
    x_t = x.transpose(3, 1, 2, 0)  # (C, H, W, N)
    if any(hi < 0 for _, hi in pads):  # rows no window reads
        x_t = x_t[:, :x.shape[1] + min(pads[0][1], 0), :x.shape[2] + min(pads[1][1], 0)]
        pads = [(lo, max(hi, 0)) for lo, hi in pads]
    specs = ((0, 3, 1, 2), (3, 0, 1, 2), (0, 3, 1, 2))
    per_group = [conv_general(x_t[g * cg:(g + 1) * cg], dy[..., g * og:(g + 1) * og], window.dilation, tuple(pads),
                              window.stride, specs, 1) for g in range(groups)]
    return jnp.concatenate(per_group, axis=-1).transpose(1, 2, 0, 3)  # (C/G, KH, KW, O) -> HWIO


# --- proving the custom call once per process --------------------------------------------------

# (x NHWC, w HWIO, stride, padding, dilation, groups): strided, asymmetric and dilated (its last
# column unread), grouped.
_PROBES = [
    ((2, 7, 6, 3), (3, 2, 3, 4), (2, 1), ((1, 0), (2, 1)), (1, 2), 1),
    ((1, 6, 6, 4), (3, 3, 2, 6), (1, 1), ((1, 1), (0, 2)), (1, 1), 2),
]


def probe() -> bool:
    """Whether all three passes equal ``lax``'s on the probe cases, in this process.

    A config this XLA reads differently may abort the process while compiling
    (an uncaught oneDNN error), so :func:`available` runs this in a child process.
    """
    rng = np.random.default_rng(0)
    for x_shape, w_shape, stride, padding, dilation, groups in _PROBES:
        x, w = (rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape))
        window = Window(w_shape[:2], stride, dilation, padding, x_shape[1:3])
        ref = functools.partial(_lax_conv, strides=stride, padding=padding, dilation=dilation, specs=NHWC_HWIO,
                                groups=groups)
        y, vjp = jax.vjp(ref, x, w)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        want_dx, want_dw = vjp(dy)
        got = (jax.jit(onednn_forward, static_argnums=(2, 3))(x, w, window, groups),
               jax.jit(onednn_grad_input, static_argnums=(2, 3))(dy, w, window, groups),
               jax.jit(onednn_grad_weight, static_argnums=(2, 3, 4))(x, dy, w_shape, window, groups))
        for mine, want in zip(got, (y, want_dx, want_dw)):
            if mine.shape != want.shape or not np.allclose(mine, want, rtol=1e-4, atol=1e-4):
                return False
    return True


PROBE_CODE = "import sys; from jaxcnn.ops import onednn; sys.exit(0 if onednn.probe() else 1)"


def probe_in_subprocess(code: str = PROBE_CODE) -> bool:
    """Run ``code`` (by default :func:`probe`) in a child Python on the CPU: True iff it exits 0."""
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def available() -> bool:
    """Whether this process may use ``__onednn$convolution``: on the CPU, and :func:`probe` passed.

    The probe runs once per machine and software (a few seconds, in a child
    process) and its verdict is kept in the machine's cache
    (:func:`jaxcnn.runtime.read_machine_table`, table ``onednn``).
    """
    if jax.default_backend() != "cpu":
        return False
    verdict = runtime.read_machine_table(MACHINE_TABLE).get("probe", {}).get("passed")
    if not isinstance(verdict, bool):
        verdict = probe_in_subprocess()
        runtime.update_machine_table(MACHINE_TABLE, "probe", "passed", verdict)
    return verdict


def usable(dtype) -> bool:
    """Whether ``conv2d_auto`` may compute ``dtype`` convolutions here with oneDNN (float32 on a proven CPU)."""
    return jnp.dtype(dtype) == jnp.float32 and available()
