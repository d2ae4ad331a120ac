"""The textbook's task networks: small plain CNNs, each a table of conv blocks and dense layers.

A block is one or more convolutions ``(features, kernel, padding)``, each followed by
ReLU, then a 2x2 max pool (then dropout, if ``conv_dropout``). After the blocks the
features are flattened into the dense layers (ReLU; BatchNorm before it with
``dense_norm``; dropout after it with ``dense_dropout``) and a linear output.

=================  =========================================================  ==============
name               layers                                                     input
=================  =========================================================  ==============
mnist_cnn          8@5x5 -> pool -> 16@5x5 -> pool -> 32 -> BN -> 10             28x28x1
shapes_cnn         8@3x3 -> pool -> 16@3x3 -> pool -> 32 -> 5                    28x28x1
colors_cnn         2@1x1 -> 3@3x3 -> pool -> 6                                   28x28x3
shapes_colors_cnn  16@3x3 -> pool -> 32@3x3 -> pool -> 64 -> 9                   28x28x3
fashion_cnn        32@3x3 -> pool -> 128 -> 10                                   28x28x1
cifar_cnn          Keras's cifar10_cnn: 32-32-pool-drop, 64-64-pool-drop,        32x32x3
                   512-drop-10 (1,250,858 parameters)
econ_cnn           3 blocks of three 3x3 convs (32, 64, 128, "same") + pool,      32x32xB
                   dense 16384-16384-8192 with dropout 0.5, 1 output,
                   Glorot-normal initialisation (any number of bands B)
=================  =========================================================  ==============

``num_classes`` sets the output width (for ``econ_cnn``, the number of regression
targets). Convolutions without a stated padding are "valid".
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import Conv, Flatten, MaxPool
from jaxcnn.models.common import batch_norm, check_inputs, logits


class PlainCNN(nn.Module):
    blocks: tuple  # of blocks, each a tuple of (features, kernel, padding)
    dense: tuple = ()
    dense_norm: bool = False
    conv_dropout: float = 0.0
    dense_dropout: float = 0.0
    num_classes: int = 10
    kernel_init: Any = nn.initializers.lecun_normal()
    conv_backend: str = "xla"
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "PlainCNN")
        for i, block in enumerate(self.blocks):
            for j, (features, kernel, padding) in enumerate(block):
                x = nn.relu(Conv(features, kernel, padding=padding, backend=self.conv_backend, dtype=self.dtype,
                                 kernel_init=self.kernel_init, name=f"conv{i + 1}_{j + 1}")(x))
            x = MaxPool(2, backend=self.conv_backend, name=f"pool{i + 1}")(x)
            if self.conv_dropout:
                x = nn.Dropout(self.conv_dropout, deterministic=not train)(x)
        x = Flatten()(x)
        for i, width in enumerate(self.dense):
            x = nn.Dense(width, dtype=self.dtype, kernel_init=self.kernel_init, name=f"dense{i + 1}")(x)
            if self.dense_norm:
                x = batch_norm(train, self.dtype, self.bn_axis_name)(name=f"dense{i + 1}_norm")(x)
            x = nn.relu(x)
            if self.dense_dropout:
                x = nn.Dropout(self.dense_dropout, deterministic=not train)(x)
        return logits(nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=self.kernel_init, name="output")(x))


MODELS = {
    "mnist_cnn": partial(PlainCNN, blocks=(((8, 5, 0),), ((16, 5, 0),)), dense=(32,), dense_norm=True),
    "shapes_cnn": partial(PlainCNN, blocks=(((8, 3, 0),), ((16, 3, 0),)), dense=(32,)),
    "colors_cnn": partial(PlainCNN, blocks=(((2, 1, 0), (3, 3, 0)),)),
    "shapes_colors_cnn": partial(PlainCNN, blocks=(((16, 3, 0),), ((32, 3, 0),)), dense=(64,)),
    "fashion_cnn": partial(PlainCNN, blocks=(((32, 3, 0),),), dense=(128,)),
    "cifar_cnn": partial(PlainCNN, blocks=(((32, 3, "SAME"), (32, 3, 0)), ((64, 3, "SAME"), (64, 3, 0))),
                         dense=(512,), conv_dropout=0.25, dense_dropout=0.5),
    "econ_cnn": partial(PlainCNN, blocks=tuple(((w, 3, "SAME"),) * 3 for w in (32, 64, 128)),
                        dense=(16384, 16384, 8192), dense_dropout=0.5,
                        kernel_init=nn.initializers.glorot_normal()),
}
INPUT_SHAPES = {
    "mnist_cnn": (28, 28, 1), "shapes_cnn": (28, 28, 1), "colors_cnn": (28, 28, 3), "shapes_colors_cnn": (28, 28, 3),
    "fashion_cnn": (28, 28, 1), "cifar_cnn": (32, 32, 3), "econ_cnn": (32, 32, 4),
}
