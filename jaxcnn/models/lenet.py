"""LeNet-5 (LeCun et al. 1998) on 32x32 input.

C1 6@5x5 -> S2 pool 2 -> C3 16@5x5 -> S4 pool 2 -> F5 120 -> F6 84 -> output.
On 32x32x1 it has 61,706 parameters. ``classic=True`` is the 1998 form's
tanh activations and average-pooling subsampling; the default is ReLU and max
pooling. (C3 is fully connected to S2, as in every modern rendering, not the
paper's hand-picked partial connection table.)
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import AvgPool, Conv, Flatten, MaxPool
from jaxcnn.models.common import check_inputs, logits


class LeNet5(nn.Module):
    num_classes: int = 10
    classic: bool = False
    conv_backend: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_inputs(self, x, "lenet5")
        act = jnp.tanh if self.classic else nn.relu
        pool = partial(AvgPool if self.classic else MaxPool, 2, backend=self.conv_backend)
        conv = partial(Conv, backend=self.conv_backend, dtype=self.dtype)
        dense = partial(nn.Dense, dtype=self.dtype)
        x = pool(name="S2")(act(conv(6, 5, name="C1")(x)))
        x = pool(name="S4")(act(conv(16, 5, name="C3")(x)))
        x = Flatten()(x)
        x = act(dense(120, name="F5")(x))
        x = act(dense(84, name="F6")(x))
        return logits(dense(self.num_classes, name="output")(x))


MODELS = {"lenet5": LeNet5}
INPUT_SHAPES = {"lenet5": (32, 32, 1)}
