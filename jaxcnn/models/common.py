"""What the model families share: argument checks, initialisers, and the output cast."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

# He et al.'s initialisation, as torchvision applies it to convolutions (fan_out, normal).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def check_num_classes(num_classes, model: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be a positive int, got {num_classes!r}")


def logits(x):
    """Models compute in their ``dtype`` but return logits in at least float32, so losses stay
    accurate under bfloat16 / float16 compute (float64 stays float64)."""
    return jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
