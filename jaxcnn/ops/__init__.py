"""Pure, jit-able convolution and pooling primitives (NumPy and JAX only, no Flax).

Two implementations of every 2-D convolution and pooling op: the ``lax`` one
(``conv2d``, ``max_pool2d``, ...) for speed, and the im2col one
(``conv2d_im2col``, ``max_pool2d_im2col``, ...) to read and cross-check; the
test suite and ``python -m jaxcnn.gradcheck`` prove them equal, with equal
gradients. ``conv2d_auto`` / ``avg_pool2d_auto`` (:mod:`jaxcnn.ops.autotune`) compute
each pass by whichever proven-equal formulation is measured fastest for the shape
(``max_pool2d_auto`` is ``max_pool2d``, unmeasured: on the CPU, channels-last, it runs
jaxcnn's own FFI pool kernels, elsewhere lax's formulation).
"""

from jaxcnn.ops import autotune, filters
from jaxcnn.ops._fusion import relu
from jaxcnn.ops.autotune import avg_pool2d_auto, conv2d_auto, max_pool2d_auto
from jaxcnn.ops.conv import conv1d, conv2d, conv3d, conv_output_size
from jaxcnn.ops.im2col import col2im, conv2d_im2col, im2col
from jaxcnn.ops.norm import (
    ChannelConcat,
    add_channel_bias,
    batch_moments,
    batch_norm,
    channel_sum,
    concat_channels,
    normalize,
)
from jaxcnn.ops.padding import PADDING_MODES, normalize_padding, pad_spatial, same_padding
from jaxcnn.ops.pool import (
    avg_pool1d,
    avg_pool2d,
    avg_pool2d_im2col,
    avg_pool3d,
    global_avg_pool,
    lp_pool2d,
    max_pool1d,
    max_pool2d,
    max_pool2d_im2col,
    max_pool3d,
)

__all__ = [
    "ChannelConcat",
    "PADDING_MODES",
    "add_channel_bias",
    "autotune",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool2d_auto",
    "avg_pool2d_im2col",
    "avg_pool3d",
    "batch_moments",
    "batch_norm",
    "channel_sum",
    "col2im",
    "concat_channels",
    "conv1d",
    "conv2d",
    "conv2d_auto",
    "conv2d_im2col",
    "conv3d",
    "conv_output_size",
    "filters",
    "global_avg_pool",
    "im2col",
    "lp_pool2d",
    "max_pool1d",
    "max_pool2d",
    "max_pool2d_auto",
    "max_pool2d_im2col",
    "max_pool3d",
    "normalize",
    "normalize_padding",
    "pad_spatial",
    "relu",
    "same_padding",
]
