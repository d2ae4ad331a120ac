"""AlexNet (Krizhevsky et al. 2012, the textbook's single-tower form) and ZFNet (Zeiler & Fergus 2013).

Five convolutions, three overlapping 3x3/2 max pools, and a 4096-4096 classifier
with dropout. Layer tables: ``(features, kernel, stride, padding, pool after)``.

* AlexNet on 227x227x3: 96@11x11/4 -> 256@5x5 -> 384@3x3 -> 384@3x3 -> 256@3x3,
  55 -> 27 -> 13 -> 6; 62,378,344 parameters for 1000 classes.
* ZFNet on 224x224x3: 96@7x7/2 (pad 1) -> 256@5x5/2 -> 384 -> 384 -> 256, 110 ->
  55 -> 26 -> 13 -> 6, the paper's sizes (pools round up, as in Caffe);
  62,357,608 parameters for 1000 classes.

``lrn=True`` adds local response normalisation after the first two
convolutions (conv -> ReLU -> LRN -> pool), as both papers do.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import Conv, Flatten, LocalResponseNorm, MaxPool
from jaxcnn.models.common import check_inputs, logits

ALEXNET_LAYERS = ((96, 11, 4, 0, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False),
                  (256, 3, 1, 1, True))
ZFNET_LAYERS = ((96, 7, 2, 1, True), (256, 5, 2, 0, True), (384, 3, 1, 1, False), (384, 3, 1, 1, False),
                (256, 3, 1, 1, True))


class AlexNet(nn.Module):
    num_classes: int = 1000
    layers: tuple = ALEXNET_LAYERS
    lrn: bool = False
    dropout_rate: float = 0.5
    conv_backend: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "alexnet")
        for i, (features, kernel, stride, padding, pool) in enumerate(self.layers):
            x = nn.relu(Conv(features, kernel, stride, padding, backend=self.conv_backend, dtype=self.dtype,
                             name=f"conv{i + 1}")(x))
            if self.lrn and i < 2:
                x = LocalResponseNorm(name=f"lrn{i + 1}")(x)
            if pool:
                x = MaxPool(3, 2, ceil_mode=True, backend=self.conv_backend, name=f"pool{i + 1}")(x)
        x = Flatten()(x)
        dense = partial(nn.Dense, dtype=self.dtype)
        for i in (6, 7):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(dense(4096, name=f"fc{i}")(x))
        return logits(dense(self.num_classes, name="fc8")(x))


MODELS = {"alexnet": AlexNet, "zfnet": partial(AlexNet, layers=ZFNET_LAYERS)}
INPUT_SHAPES = {"alexnet": (227, 227, 3), "zfnet": (224, 224, 3)}
