"""DenseNets (Huang et al. 2016): torchvision's ImageNet family and DenseNet-BC-100 (k=12) for CIFAR.

Dense layer: BN -> ReLU -> 1x1 conv (bn_size * growth) -> BN -> ReLU -> 3x3 conv
(growth), its output concatenated to its input. Each ReLU is its BatchNorm's own
(``relu=True``): the backward recomputes the ReLU's mask from the BatchNorm's input
and sums the masked gradient in the BatchNorm's FFI call, never storing it
(bfloat16 step 1.13x). A block's features are one :class:`jaxcnn.ops.ChannelConcat`
that each layer grows by its output: a piece's batch statistics are computed once,
when it is appended, not once per later layer (DenseNet-BC-100's step 1.10-1.14x
faster), and a piece's gradients add up along the rows of the concatenations that
hold it, not over a 12-channel slice of each (its bfloat16 step 1.29x).
Transition: BN -> ReLU -> 1x1 conv halving the channels (compression 0.5) -> 2x2
average pool.

* ``densenet121/169/201``: a 7x7/2 stem of 64 channels and 3x3/2 max pool, four
  blocks of (6, 12, 24|32|48, 16|32|32) layers, growth 32; parameter counts equal
  torchvision's (DenseNet-121: 7,978,856).
* ``densenet_bc_100_12``: a 3x3 stem of 24 channels, three blocks of 16 layers,
  growth 12 (depth 100 = 3 * 16 * 2 + 4); 769,162 parameters for 10 classes.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn.layers import AvgPool, BatchNorm, Conv, GlobalAvgPool, MaxPool
from jaxcnn.models.common import batch_norm, check_inputs, kaiming_fan_in, logits


class DenseLayer(nn.Module):
    growth_rate: int
    bn_size: int = 4
    drop_rate: float = 0.0
    conv: Any = Conv
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, features: ops.ChannelConcat, train: bool) -> ops.ChannelConcat:
        """``features``: the block's input and every earlier layer's output, concatenated; returns them
        with this layer's output (``growth_rate`` channels) appended."""
        y = self.conv(self.bn_size * self.growth_rate, 1, use_bias=False)(self.norm(relu=True)(features))
        y = self.conv(self.growth_rate, 3, 1, 1, use_bias=False)(self.norm(relu=True)(y))
        if self.drop_rate:
            y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
        return ops.concat_channels(features, y)


class Transition(nn.Module):
    features: int
    conv: Any = Conv
    norm: Any = BatchNorm
    backend: str = "xla"

    @nn.compact
    def __call__(self, features: ops.ChannelConcat):
        x = self.conv(self.features, 1, use_bias=False)(self.norm(relu=True)(features))
        return AvgPool(2, backend=self.backend)(x)


class DenseNet(nn.Module):
    block_config: tuple
    growth_rate: int = 32
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    imagenet_stem: bool = True  # 7x7/2 conv + 3x3/2 max pool; False: one 3x3 conv (CIFAR)
    num_classes: int = 1000
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "densenet")
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype, kernel_init=kaiming_fan_in)
        norm = batch_norm(train, self.dtype, self.bn_axis_name)
        if self.imagenet_stem:
            x = conv(self.num_init_features, 7, 2, 3, use_bias=False, name="stem_conv")(x)
            x = norm(relu=True, name="stem_norm")(x)
            x = MaxPool(3, 2, padding=1, backend=self.conv_backend)(x)
        else:
            x = conv(self.num_init_features, 3, 1, 1, use_bias=False, name="stem_conv")(x)
        for i, num_layers in enumerate(self.block_config):
            features = ops.concat_channels(x)
            for j in range(num_layers):
                features = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, conv=conv, norm=norm,
                                      name=f"block{i + 1}_layer{j + 1}")(features, train)
            if i < len(self.block_config) - 1:
                x = Transition(features.array.shape[-1] // 2, conv=conv, norm=norm, backend=self.conv_backend,
                               name=f"transition{i + 1}")(features)
        x = GlobalAvgPool()(norm(relu=True, name="final_norm")(features))
        return logits(nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x))


MODELS = {
    "densenet121": partial(DenseNet, block_config=(6, 12, 24, 16)),
    "densenet169": partial(DenseNet, block_config=(6, 12, 32, 32)),
    "densenet201": partial(DenseNet, block_config=(6, 12, 48, 32)),
    "densenet_bc_100_12": partial(DenseNet, block_config=(16, 16, 16), growth_rate=12, num_init_features=24,
                                  imagenet_stem=False, num_classes=10),
}
INPUT_SHAPES = {name: (32, 32, 3) if name == "densenet_bc_100_12" else (224, 224, 3) for name in MODELS}
