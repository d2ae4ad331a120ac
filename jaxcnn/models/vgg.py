"""VGG-11/13/16/19 (Simonyan & Zisserman 2014) as torchvision defines them, with and without BatchNorm.

Configurations are tables: numbers are 3x3 convolutions (padding 1) of that width,
``"M"`` a 2x2 max pool. The ImageNet head (``head="imagenet"``, the default) is
torchvision's: adaptive average pool to 7x7, then 4096-4096 with dropout;
parameter counts equal torchvision's (VGG-16: 138,357,544). ``head="cifar"``
replaces it by one linear layer on the pooled 512 features, as the common
CIFAR-10 VGG variants do (VGG-16: 14,719,818 parameters for 10 classes).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import AdaptiveAvgPool, Conv, Flatten, MaxPool
from jaxcnn.models.common import batch_norm, check_inputs, kaiming_fan_out, logits

CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
HEADS = ("imagenet", "cifar")


class VGG(nn.Module):
    config: tuple
    num_classes: int = 1000
    batch_norm: bool = False
    head: str = "imagenet"
    dropout_rate: float = 0.5
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "vgg")
        if self.head not in HEADS:
            raise ValueError(f"{self.name or 'vgg'}: head must be one of {HEADS}, got {self.head!r}")
        conv = partial(Conv, kernel_size=3, padding=1, backend=self.conv_backend, dtype=self.dtype,
                       kernel_init=kaiming_fan_out)
        norm = batch_norm(train, self.dtype, self.bn_axis_name)
        for v in self.config:
            if v == "M":
                x = MaxPool(2, backend=self.conv_backend)(x)
            else:
                x = conv(v)(x)
                # after BatchNorm, its own ReLU (relu=True: the backwards fused, float32 step 1.01x)
                x = norm(relu=True)(x) if self.batch_norm else nn.relu(x)
        dense = partial(nn.Dense, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01))
        if self.head == "cifar":
            return logits(dense(self.num_classes, name="classifier")(Flatten()(AdaptiveAvgPool(1)(x))))
        x = Flatten()(AdaptiveAvgPool(7)(x))
        for i in range(2):
            x = nn.relu(dense(4096, name=f"fc{i + 1}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return logits(dense(self.num_classes, name="classifier")(x))


MODELS = {
    f"vgg{depth}{'_bn' if bn else ''}": partial(VGG, config=CONFIGS[depth], batch_norm=bn)
    for depth in (11, 13, 16, 19) for bn in (False, True)
}
INPUT_SHAPES = {name: (224, 224, 3) for name in MODELS}
