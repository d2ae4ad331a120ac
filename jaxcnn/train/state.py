"""The training state: one pytree, saved whole in checkpoints."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxcnn.ops import autotune

INIT_STREAM = 0x1A17  # fold_in constant: parameter initialisation apart from dropout and data


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes. ``rng`` holds the root key's data: the dropout key
    of step ``k`` is ``fold_in(key, k)``, so a resumed run draws the masks an uninterrupted one does."""

    step: jax.Array
    params: Any
    batch_stats: Any  # {} for models without BatchNorm
    opt_state: Any
    rng: jax.Array
    ema_params: Any  # {} unless config.optimizer.ema_decay > 0
    loss_scale: jax.Array  # dynamic loss scale (float16 compute); read only with StepConfig.dynamic_loss_scale
    good_steps: jax.Array  # steps since the loss scale last changed
    nonfinite_step: jax.Array  # first step whose loss was not finite, -1 while all are


def create_train_state(model, tx: optax.GradientTransformation, input_shape, *, seed: int, ema: bool,
                       loss_scale: float = 1.0) -> TrainState:
    """Initialise the model on a dummy batch of ``input_shape`` (H, W, C); jit this for large models."""
    root = jax.random.key(seed)
    init_key = jax.random.fold_in(root, INIT_STREAM)
    with autotune.measuring_paused():  # the dummy batch of 1 is never trained on
        variables = model.init({"params": init_key, "dropout": init_key}, jnp.zeros((1, *input_shape), jnp.float32),
                               train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params), rng=jax.random.key_data(root),
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if ema else {},
        loss_scale=jnp.asarray(loss_scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32),
        nonfinite_step=jnp.asarray(-1, jnp.int32))


def param_count(state: TrainState) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(state.params))
