"""ResNets (He et al. 2015): torchvision's ImageNet family and the paper's CIFAR family.

ImageNet (``resnet18/34/50/101/152``), torchvision's definitions: a 7x7/2 stem
and 3x3/2 max pool, four stages of 64/128/256/512 (x4 for bottlenecks) with
projection shortcuts (1x1 conv + BN) where shape changes, the stride on the
bottleneck's 3x3 (v1.5), global average pool and one linear layer. Parameter
counts equal torchvision's (ResNet-50: 25,557,032).

CIFAR (``resnet20/32/44/56/110``), the paper's section 4.2: a 3x3 conv of 16,
three stages of n basic blocks (16/32/64 channels, n = (depth - 2) / 6) and
parameter-free "option A" shortcuts (subsample by 2, zero-pad the new channels).
ResNet-20 has 269,722 parameters for 10 classes.

Blocks receive ``conv`` and ``norm`` as fields, so the conv backend is one
argument of the model. The ReLUs are :func:`jaxcnn.ops.relu`, whose backward reads
the stored output rather than the BatchNorm and residual chain behind it, except
right after a CIFAR stem's or a basic block's first BatchNorm: there they are the
BatchNorm's own (``relu=True``, the backwards fused: ResNet-20's bfloat16 step
1.02-1.03x). The bottleneck's and the ImageNet stem's measured no faster so
(ResNet-50, batch 16 at 64x64: 0.99x).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn.layers import BatchNorm, Conv, GlobalAvgPool, MaxPool
from jaxcnn.models.common import batch_norm, check_inputs, kaiming_fan_in, kaiming_fan_out, logits


class BasicBlock(nn.Module):
    """3x3 -> BN -> ReLU -> 3x3 -> BN, plus the shortcut, then ReLU."""

    features: int
    stride: int = 1
    shortcut: str = "projection"  # "projection" (1x1 conv + BN) or "zero_pad" (option A)
    conv: Any = Conv
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, x):
        y = self.norm(relu=True)(self.conv(self.features, 3, self.stride, 1, use_bias=False)(x))
        y = self.norm()(self.conv(self.features, 3, 1, 1, use_bias=False)(y))
        return ops.relu(y + _shortcut(self, x, self.features))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, v1.5) -> 1x1 expand x4, each with BN; shortcut; ReLU."""

    features: int
    stride: int = 1
    shortcut: str = "projection"
    conv: Any = Conv
    norm: Any = BatchNorm

    @nn.compact
    def __call__(self, x):
        y = ops.relu(self.norm()(self.conv(self.features, 1, use_bias=False)(x)))
        y = ops.relu(self.norm()(self.conv(self.features, 3, self.stride, 1, use_bias=False)(y)))
        y = self.norm()(self.conv(self.features * 4, 1, use_bias=False)(y))
        return ops.relu(y + _shortcut(self, x, self.features * 4))


def _shortcut(block, x, out_features):
    if block.stride == 1 and x.shape[-1] == out_features:
        return x
    if block.shortcut == "projection":
        return block.norm(name="shortcut_norm")(
            block.conv(out_features, 1, block.stride, use_bias=False, name="shortcut_conv")(x))
    # option A: parameter-free; subsample spatially, zero-pad the extra channels on both sides
    x = x[:, :: block.stride, :: block.stride, :]
    extra = out_features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class ResNet(nn.Module):
    """ImageNet-style ResNet: ``stage_sizes`` blocks per stage of widths 64, 128, 256, 512."""

    stage_sizes: tuple
    block: Any
    num_classes: int = 1000
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "resnet")
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype, kernel_init=kaiming_fan_out)
        norm = batch_norm(train, self.dtype, self.bn_axis_name)
        x = ops.relu(norm(name="stem_norm")(conv(64, 7, 2, 3, use_bias=False, name="stem_conv")(x)))
        x = MaxPool(3, 2, padding=1, backend=self.conv_backend)(x)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for b in range(num_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                x = self.block(64 * 2**stage, stride, conv=conv, norm=norm, name=f"stage{stage + 1}_block{b + 1}")(x)
        x = GlobalAvgPool()(x)
        return logits(nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n + 2: stages of n basic blocks, 16/32/64 channels."""

    depth: int
    num_classes: int = 10
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, f"resnet{self.depth}")
        if (self.depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n + 2, got {self.depth}")
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype, kernel_init=kaiming_fan_in)
        norm = batch_norm(train, self.dtype, self.bn_axis_name)
        x = norm(relu=True, name="stem_norm")(conv(16, 3, 1, 1, use_bias=False, name="stem_conv")(x))
        for stage in range(3):
            for b in range((self.depth - 2) // 6):
                stride = 2 if stage > 0 and b == 0 else 1
                x = BasicBlock(16 * 2**stage, stride, shortcut="zero_pad", conv=conv, norm=norm,
                               name=f"stage{stage + 1}_block{b + 1}")(x)
        x = GlobalAvgPool()(x)
        return logits(nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x))


IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

MODELS = {
    **{f"resnet{d}": partial(ResNet, stage_sizes=s, block=BasicBlock if d < 50 else Bottleneck)
       for d, s in IMAGENET_STAGES.items()},
    **{f"resnet{d}": partial(CifarResNet, depth=d) for d in (20, 32, 44, 56, 110)},
}
INPUT_SHAPES = {name: (224, 224, 3) if name in (f"resnet{d}" for d in IMAGENET_STAGES) else (32, 32, 3)
                for name in MODELS}
