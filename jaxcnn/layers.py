"""Flax (linen) layers over :mod:`jaxcnn.ops`: convolution on either backend, pooling, and
the small pieces the models share.

Every layer takes NHWC input. ``Conv(backend="im2col")`` runs the hand-written
im2col convolution (and pools take the same switch), so a whole model can be
moved onto the im2col primitives with one argument; ``backend="auto"`` computes
each pass of each layer by the formulation measured fastest for its shape
(:mod:`jaxcnn.ops.autotune`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops

BACKENDS = ("xla", "im2col", "auto")
_CONV = {"xla": ops.conv2d, "im2col": ops.conv2d_im2col, "auto": ops.conv2d_auto}
_MAX_POOL = {"xla": ops.max_pool2d, "im2col": ops.max_pool2d_im2col, "auto": ops.max_pool2d_auto}
_AVG_POOL = {"xla": ops.avg_pool2d, "im2col": ops.avg_pool2d_im2col, "auto": ops.avg_pool2d_auto}
Dtype = Any


def check_backend(backend: Any, name: str = "backend") -> str:
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_image_batch(x: Any, where: str, channels: int | None = None) -> None:
    """Raise unless ``x`` is an NHWC float batch (with ``channels`` channels, if given)."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{where}: input must be a 4-D NHWC batch (N, H, W, C), got shape "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{where}: input must be floating point, got dtype {x.dtype}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{where}: input must have {channels} channels, got shape {tuple(x.shape)}")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, (int, np.integer)) else tuple(v)


class Conv(nn.Module):
    """2-D convolution, NHWC in and out, kernel stored HWIO as ``params["kernel"]``.

    Same options as :func:`jaxcnn.ops.conv2d`; ``backend="im2col"`` computes it with
    :func:`jaxcnn.ops.conv2d_im2col`, ``"auto"`` with :func:`jaxcnn.ops.conv2d_auto`.
    ``dtype`` is the compute dtype (``None``: from the input and parameters);
    parameters are kept in ``param_dtype``.
    """

    features: int
    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] = 1
    padding: Any = 0
    padding_mode: str = "zeros"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    backend: str = "xla"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        check_backend(self.backend)
        check_image_batch(x, f"Conv {self.name}")
        kh, kw = _pair(self.kernel_size)
        in_channels = x.shape[-1]
        if self.has_variable("params", "kernel"):
            expected = self.get_variable("params", "kernel").shape[2] * self.groups
            if expected != in_channels:
                raise ValueError(f"Conv {self.name}: input has {in_channels} channels but the layer's "
                                 f"parameters were created for {expected} (input shape {tuple(x.shape)})")
        if in_channels % self.groups:
            raise ValueError(f"Conv {self.name}: groups={self.groups} must divide the {in_channels} input channels")
        kernel = self.param("kernel", self.kernel_init, (kh, kw, in_channels // self.groups, self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return _CONV[self.backend](x, kernel, bias, stride=self.stride, padding=self.padding,
                                   dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode)


class BatchNorm(nn.Module):
    """Batch normalization over every axis but the last, a drop-in for ``flax.linen.BatchNorm``.

    Same variables (``params``: ``scale``, ``bias``; ``batch_stats``: ``mean``,
    ``var``), statistics (float32 or wider, ``E[x²] - E[x]²``), running-average
    update (``momentum * old + (1 - momentum) * batch``, skipped at init) and
    ``axis_name`` synchronisation, so checkpoints and results carry over; computed
    by :mod:`jaxcnn.ops.norm`, whose channel sums and broadcasts run on a wide
    view of the array on the CPU and whose gradient is in closed form (a training
    pass 2.0-3.6x faster there).
    ``dtype`` is the output dtype (``None``: from the input and parameters).
    ``relu=True`` returns ``jaxcnn.ops.relu`` of the output, its backward fused with
    BatchNorm's (:func:`jaxcnn.ops.batch_norm`'s ``relu``).

    ``x`` may be a :class:`jaxcnn.ops.ChannelConcat` (a DenseNet block's features): its
    array is normalised, with the batch statistics its pieces' moments give, each
    computed once per step however many BatchNorms read the piece (DenseNet-BC-100's
    step 1.10-1.14x faster than with every concatenation's own).
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    relu: bool = False

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        concat = x if isinstance(x, ops.ChannelConcat) else None
        x = x.array if concat is not None else x
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), features, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), features, self.param_dtype)
        out_dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
        if use_running_average:
            y = ops.normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
            return jnp.asarray(ops.relu(y) if self.relu else y, out_dtype)
        stats_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        # ops.norm computes in x's dtype promoted with float32: convert x only where that is narrower than
        # stats_dtype. A bfloat16 x goes in as it is (same values; its channel sums then read bfloat16).
        if jnp.promote_types(x.dtype, jnp.float32) != stats_dtype:
            x, concat = x.astype(stats_dtype), None  # the moments too are then computed wider
        axis_name = None if self.is_initializing() else self.axis_name
        moments = ops.batch_moments(concat, axis_name) if concat is not None else None
        y, mean, var = ops.batch_norm(x, scale, bias, epsilon=self.epsilon, axis_name=axis_name, moments=moments,
                                      dtype=out_dtype, relu=self.relu)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


class MaxPool(nn.Module):
    """:func:`jaxcnn.ops.max_pool2d` (PyTorch semantics) as a layer; NHWC."""

    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: Any = 0
    ceil_mode: bool = False
    backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        return _MAX_POOL[check_backend(self.backend)](x, self.kernel_size, self.stride, padding=self.padding,
                                                      ceil_mode=self.ceil_mode)


class AvgPool(nn.Module):
    """:func:`jaxcnn.ops.avg_pool2d` (PyTorch semantics) as a layer; NHWC."""

    kernel_size: int | Sequence[int]
    stride: int | Sequence[int] | None = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        return _AVG_POOL[check_backend(self.backend)](x, self.kernel_size, self.stride, padding=self.padding,
                                                      ceil_mode=self.ceil_mode,
                                                      count_include_pad=self.count_include_pad)


class GlobalAvgPool(nn.Module):
    """Mean over height and width: ``(N, H, W, C) -> (N, C)``."""

    @nn.compact
    def __call__(self, x):
        return ops.global_avg_pool(x)


class AdaptiveAvgPool(nn.Module):
    """PyTorch's ``AdaptiveAvgPool2d``: average into an ``output_size`` grid of bins.

    Bin ``i`` along a dim of size ``n`` covers ``[floor(i*n/out), ceil((i+1)*n/out))``;
    bins overlap or repeat pixels when ``n`` does not divide evenly (e.g. 1x1 -> 7x7).
    """

    output_size: int | Sequence[int]

    @nn.compact
    def __call__(self, x):
        out_h, out_w = _pair(self.output_size)
        _, h, w, _ = x.shape
        if (h, w) == (out_h, out_w):
            return x
        return jnp.einsum("nhwc,ih,jw->nijc", x, _bin_matrix(h, out_h, x.dtype), _bin_matrix(w, out_w, x.dtype))


def _bin_matrix(n: int, out: int, dtype):
    """``(out, n)`` averaging weights of the adaptive bins along one dim."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        start, end = (i * n) // out, -((-(i + 1) * n) // out)
        m[i, start:end] = 1.0 / (end - start)
    return jnp.asarray(m, dtype)


class Flatten(nn.Module):
    """``(N, ...) -> (N, prod(...))``, in NHWC order."""

    @nn.compact
    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class LocalResponseNorm(nn.Module):
    """AlexNet's local response normalisation across channels (PyTorch's formula).

    ``b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta``, the window
    being ``size`` neighbouring channels centred on ``c`` (zero beyond the edges).
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    @nn.compact
    def __call__(self, x):
        squares = x.astype(jnp.float32) ** 2
        # average over a channel window: a 1-D avg pool along C, zero padded, divisor `size`
        windowed = ops.avg_pool1d(squares.reshape(-1, x.shape[-1], 1), self.size, 1,
                                  padding=((self.size // 2, (self.size - 1) // 2),), data_format="NWC")
        div = (self.k + self.alpha * windowed.reshape(x.shape)) ** self.beta
        return (x / div).astype(x.dtype)
