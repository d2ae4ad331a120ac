"""What the model families share: argument checks, initialisers, and the output cast."""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.layers import BatchNorm, check_image_batch

# He et al.'s initialisation, as torchvision applies it to convolutions (fan_out, normal).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def check_num_classes(num_classes, model: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be a positive int, got {num_classes!r}")


def check_inputs(model: nn.Module, x, default_name: str) -> None:
    """The checks every model runs first: a positive ``num_classes`` and an NHWC float batch."""
    name = model.name or default_name
    check_num_classes(model.num_classes, name)
    check_image_batch(x, name)


def batch_norm(train: bool, dtype, axis_name: str | None = None, epsilon: float = 1e-5):
    """:class:`jaxcnn.layers.BatchNorm` as torchvision configures it (PyTorch momentum 0.1 is Flax momentum 0.9).

    In train mode it normalises with batch statistics and updates ``batch_stats``;
    ``axis_name`` makes the statistics cover the batch across devices.
    """
    return partial(BatchNorm, use_running_average=not train, momentum=0.9, epsilon=epsilon, dtype=dtype,
                   axis_name=axis_name)


def logits(x):
    """Models compute in their ``dtype`` but return logits in at least float32, so losses stay
    accurate under bfloat16 / float16 compute (float64 stays float64)."""
    return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
