"""The pure training and evaluation steps. Hyperparameters are bound with functools.partial before jit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxcnn.train import losses
from jaxcnn.train.optim import l2_penalty
from jaxcnn.train.state import TrainState

LOSS_SCALE_PERIOD = 2000  # float16: double the loss scale after this many finite steps


@dataclasses.dataclass(frozen=True)
class StepConfig:
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    aux_weight: float = 0.3
    l2: float = 0.0  # weight of 0.5 * |kernels|^2 in the loss
    ema_decay: float = 0.0
    grad_accum_steps: int = 1
    dynamic_loss_scale: bool = False
    axis_name: str | None = None  # set inside shard_map: gradients and metrics are averaged over it


def _split_outputs(out):
    """A model returns logits, or (logits, auxiliary logits) in train mode (GoogLeNet)."""
    return (out[0], tuple(out[1])) if isinstance(out, tuple) else (out, ())


def _variables(params, batch_stats):
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _loss_and_grads(apply_fn, state: TrainState, params, batch_stats, images, labels, rng, cfg: StepConfig):
    def loss_fn(p):
        out, updates = apply_fn(_variables(p, batch_stats), images, train=True, rngs={"dropout": rng},
                                mutable=["batch_stats"])
        logits, aux = _split_outputs(out)
        per_example = losses.per_example_loss(cfg.loss, logits, labels, cfg.label_smoothing)
        loss = per_example.mean()
        for a in aux:
            loss = loss + cfg.aux_weight * losses.per_example_loss(cfg.loss, a, labels, cfg.label_smoothing).mean()
        if cfg.l2:
            loss = loss + l2_penalty(p, cfg.l2)
        sums = losses.metric_sums(cfg.loss, logits, labels, per_example)
        scaled = loss * state.loss_scale if cfg.dynamic_loss_scale else loss
        return scaled, (loss, sums, updates.get("batch_stats", {}))

    (_, (loss, sums, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # Only a dynamic scale is divided out: dividing by the constant scale of 1 would be exact, but
    # XLA:CPU cannot fold a runtime scale, and it was one more pass over every gradient.
    if cfg.dynamic_loss_scale:
        grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale, grads)
    return loss, sums, new_stats, grads


def _microbatches(x, k: int):
    """``(B, ...) -> (k, B/k, ...)``, micro-batch i taking rows i, i+k, ...: evenly spread over devices."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def _all_finite(tree):
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(tree)]))


def _updated_if(apply, updated, kept):
    """``updated()`` where ``apply`` (a scalar bool) holds, else ``kept()``: two pytrees of one structure.

    On the CPU a ``lax.cond``, so the update runs once, unmasked. As a per-leaf
    ``where`` XLA fuses the predicate (an ``and`` of every gradient's finiteness)
    and the select into each leaf's update loop, and ResNet-50's optimizer update
    took 50 of a ~200 ms step (~10 ms as a cond; the step 1.12-1.17x faster).
    Elsewhere the ``where``: an accelerator's cond would read the predicate back
    to the host in the middle of every step.
    """
    if jax.default_backend() == "cpu":
        return jax.lax.cond(apply, updated, kept)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(apply, new, old), updated(), kept())


def train_step(state: TrainState, batch: dict, *, apply_fn, tx: optax.GradientTransformation,
               schedule: optax.Schedule, cfg: StepConfig) -> tuple[TrainState, dict]:
    """One optimizer update from one batch: ``(state, batch) -> (state, metrics)``.

    With ``grad_accum_steps = k`` the batch is split into k micro-batches whose
    gradients are averaged (BatchNorm statistics advance micro-batch by micro-batch).
    A non-finite loss records the step in ``nonfinite_step`` and freezes the
    state there (later steps change nothing) until the loop notices; with float16
    dynamic loss scaling (``cfg.dynamic_loss_scale``; the only case that reads
    ``state.loss_scale``), non-finite gradients instead halve the scale and skip
    the update.
    """
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    images, labels = batch["image"], batch["label"]
    if cfg.grad_accum_steps == 1:
        loss, sums, new_stats, grads = _loss_and_grads(apply_fn, state, state.params, state.batch_stats, images,
                                                       labels, rng, cfg)
    else:
        def micro(carry, xs):
            stats, grad_sum, loss_sum, sums_sum = carry
            i, x, y = xs
            loss, sums, stats, grads = _loss_and_grads(apply_fn, state, state.params, stats, x, y,
                                                       jax.random.fold_in(rng, i), cfg)
            add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)
            return (stats, add(grad_sum, grads), loss_sum + loss, add(sums_sum, sums)), None

        k = cfg.grad_accum_steps
        xs = (jnp.arange(k), _microbatches(images, k), _microbatches(labels, k))
        shapes = jax.eval_shape(lambda: _loss_and_grads(apply_fn, state, state.params, state.batch_stats,
                                                        xs[1][0], xs[2][0], rng, cfg))
        zeros = lambda tree: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
        init = (state.batch_stats, zeros(shapes[3]), jnp.zeros((), jnp.float32), zeros(shapes[1]))
        (new_stats, grads, loss, sums), _ = jax.lax.scan(micro, init, xs)
        grads = jax.tree_util.tree_map(lambda g: g / k, grads)
        loss = loss / k
    if cfg.axis_name:
        grads, loss = jax.lax.pmean((grads, loss), cfg.axis_name)
        sums = jax.lax.psum(sums, cfg.axis_name)

    grads_finite = _all_finite(grads)
    loss_finite = jnp.isfinite(loss)
    apply = loss_finite & grads_finite & (state.nonfinite_step < 0)  # after a non-finite loss, freeze

    def updated():
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_ema = state.ema_params
        if cfg.ema_decay:
            new_ema = jax.tree_util.tree_map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p,
                                             state.ema_params, new_params)
        return new_params, new_stats, new_opt_state, new_ema

    def kept():
        return state.params, state.batch_stats, state.opt_state, state.ema_params

    params, batch_stats, opt_state, ema_params = _updated_if(apply, updated, kept)
    failed = ~loss_finite if cfg.dynamic_loss_scale else ~apply
    loss_scale, good_steps = state.loss_scale, state.good_steps
    if cfg.dynamic_loss_scale:
        grow = grads_finite & (good_steps + 1 >= LOSS_SCALE_PERIOD)
        loss_scale = jnp.where(grads_finite, jnp.where(grow, loss_scale * 2, loss_scale), loss_scale / 2)
        good_steps = jnp.where(grads_finite & ~grow, good_steps + 1, 0)
    new_state = state.replace(
        step=state.step + 1,
        params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema_params,
        loss_scale=loss_scale, good_steps=good_steps,
        nonfinite_step=jnp.where(failed & (state.nonfinite_step < 0), state.step, state.nonfinite_step),
    )
    metrics = {**sums, "objective": loss, "learning_rate": schedule(state.step)}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, apply_fn, cfg: StepConfig, use_ema: bool = False) -> dict:
    """Summed metrics of one (masked) evaluation batch."""
    params = state.ema_params if use_ema else state.params
    logits = apply_fn(_variables(params, state.batch_stats), batch["image"], train=False)
    per_example = losses.per_example_loss(cfg.loss, logits, batch["label"])
    sums = losses.metric_sums(cfg.loss, logits, batch["label"], per_example, batch.get("mask"))
    if cfg.axis_name:
        sums = jax.lax.psum(sums, cfg.axis_name)
    return sums
