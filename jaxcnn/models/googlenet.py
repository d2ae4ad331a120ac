"""GoogLeNet / Inception v1 (Szegedy et al. 2014), as torchvision defines it.

Every convolution is conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU (the
BatchNorm's own, ``relu=True``: the backwards fused, step 1.01-1.03x). Nine
inception modules, each four parallel branches concatenated on channels:
1x1; 1x1 -> 3x3; 1x1 -> "5x5"; 3x3 max pool -> 1x1. As in torchvision (and its
pretrained weights), the "5x5" branch uses a 3x3 kernel. 6,624,904 parameters
for 1000 classes; with ``aux_logits=True`` the two auxiliary classifiers (after
4a and 4d) add 6,379,984, and in train mode the model returns
``(logits, (aux1, aux2))`` (weight them 0.3 in the loss, as the paper does).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import AdaptiveAvgPool, BatchNorm, Conv, Flatten, GlobalAvgPool, MaxPool
from jaxcnn.models.common import batch_norm, check_inputs, logits

# name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection; "M" is a 3x3/2 max pool (2x2/2 before 5a)
INCEPTIONS = (
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "M",
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128), "M",
    ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128),
)
AUX_AFTER = ("4a", "4d")


class BasicConv(nn.Module):
    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    conv: Any = Conv
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, x):
        x = self.conv(self.features, self.kernel_size, self.stride, self.padding, use_bias=False)(x)
        return self.norm(relu=True)(x)


class Inception(nn.Module):
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int
    block: Any = BasicConv
    backend: str = "xla"

    @nn.compact
    def __call__(self, x):
        b1 = self.block(self.ch1x1, 1)(x)
        b2 = self.block(self.ch3x3, 3, padding=1)(self.block(self.ch3x3red, 1)(x))
        b3 = self.block(self.ch5x5, 3, padding=1)(self.block(self.ch5x5red, 1)(x))
        b4 = self.block(self.pool_proj, 1)(MaxPool(3, 1, padding=1, ceil_mode=True, backend=self.backend)(x))
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    num_classes: int
    block: Any = BasicConv
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = Flatten()(self.block(128, 1)(AdaptiveAvgPool(4)(x)))
        x = nn.relu(nn.Dense(1024, dtype=self.dtype)(x))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        return logits(nn.Dense(self.num_classes, dtype=self.dtype)(x))


class GoogLeNet(nn.Module):
    num_classes: int = 1000
    aux_logits: bool = False
    inceptions: tuple = INCEPTIONS  # the module table; a shorter one gives a smaller network of the family
    dropout_rate: float = 0.2
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "googlenet")
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype,
                       kernel_init=nn.initializers.truncated_normal(0.01))
        norm = batch_norm(train, self.dtype, self.bn_axis_name, epsilon=1e-3)
        block = partial(BasicConv, conv=conv, norm=norm)
        pool = partial(MaxPool, ceil_mode=True, backend=self.conv_backend)
        x = pool(3, 2)(block(64, 7, 2, 3, name="conv1")(x))
        x = block(64, 1, name="conv2")(x)
        x = pool(3, 2)(block(192, 3, padding=1, name="conv3")(x))
        aux = []
        for i, spec in enumerate(self.inceptions):
            if spec == "M":
                x = pool(2, 2)(x) if self.inceptions[i + 1][0] == "5a" else pool(3, 2)(x)
                continue
            name, *widths = spec
            x = Inception(*widths, block=block, backend=self.conv_backend, name=f"inception{name}")(x)
            if name in AUX_AFTER and self.aux_logits and (train or self.is_initializing()):
                aux.append(InceptionAux(self.num_classes, block=block, dtype=self.dtype, name=f"aux{len(aux) + 1}")(
                    x, train))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(GlobalAvgPool()(x))
        out = logits(nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x))
        return (out, tuple(aux)) if self.aux_logits and train else out


MODELS = {"googlenet": GoogLeNet}
INPUT_SHAPES = {"googlenet": (224, 224, 3)}
