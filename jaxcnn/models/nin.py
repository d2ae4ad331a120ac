"""Network in Network (Lin, Chen & Yan 2013), in the ImageNet form of the textbook (d2l's).

Each NiN block is a kxk convolution followed by two 1x1 convolutions (the
"micro network"), all with ReLU. Four blocks (96@11x11/4, 256@5x5, 384@3x3,
num_classes@3x3) separated by 3x3/2 max pools and, before the last, dropout;
global average pooling of the last block gives the logits, with no dense layer.
On 224x224x3 with 1000 classes: 7,439,608 parameters.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import Conv, GlobalAvgPool, MaxPool
from jaxcnn.models.common import check_inputs, logits

# (features, kernel, stride, padding); the last block's width is num_classes
BLOCKS = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1))


class NiNBlock(nn.Module):
    features: int
    kernel_size: int
    stride: int
    padding: int
    conv: Any = Conv

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.conv(self.features, self.kernel_size, self.stride, self.padding)(x))
        x = nn.relu(self.conv(self.features, 1)(x))
        return nn.relu(self.conv(self.features, 1)(x))


class NiN(nn.Module):
    num_classes: int = 1000
    dropout_rate: float = 0.5
    conv_backend: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "nin")
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype)
        for features, kernel, stride, padding in BLOCKS:
            x = NiNBlock(features, kernel, stride, padding, conv=conv)(x)
            x = MaxPool(3, 2, backend=self.conv_backend)(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = NiNBlock(self.num_classes, 3, 1, 1, conv=conv)(x)
        return logits(GlobalAvgPool()(x))


MODELS = {"nin": NiN}
INPUT_SHAPES = {"nin": (224, 224, 3)}
