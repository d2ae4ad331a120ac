"""Learning-rate schedules and optimizers from the config, as optax transformations."""

from __future__ import annotations

import jax
import optax


def kernel_mask(params):
    """True on convolution and dense kernels: what weight decay applies to (not biases, not BatchNorm)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def make_schedule(schedule, learning_rate: float, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
    """``schedule`` (config.schedule) in steps. Epoch durations are converted with ``steps_per_epoch``.

    * constant: ``learning_rate`` (after an optional linear warmup);
    * step: multiplied by ``decay_factor`` at each of ``milestones`` (epochs);
    * warmup_cosine: linear warmup, then cosine decay to ``end_fraction * learning_rate`` at the last step;
    * one_cycle: Smith's 1cycle (cosine up over ``warmup_epochs`` or 30% of the run, then down).
    """
    warmup = int(round(schedule.warmup_epochs * steps_per_epoch))
    end = learning_rate * schedule.end_fraction
    if schedule.name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(total_steps, warmup + 1), end)
    if schedule.name == "one_cycle":  # starts at learning_rate / 25, like PyTorch's OneCycleLR
        pct = min(max(warmup / total_steps if warmup else 0.3, 1e-3), 0.999)
        final_div = 1.0 / (25.0 * schedule.end_fraction) if schedule.end_fraction else 1e4
        return optax.cosine_onecycle_schedule(total_steps, learning_rate, pct, 25.0, final_div)
    if schedule.name == "step":
        boundaries = {int(round(m * steps_per_epoch)): schedule.decay_factor for m in schedule.milestones}
        main = optax.piecewise_constant_schedule(learning_rate, boundaries)
    else:
        main = optax.constant_schedule(learning_rate)
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup), lambda s: main(s + warmup)],
                                [warmup])


def make_optimizer(opt, schedule: optax.Schedule) -> optax.GradientTransformation:
    """``opt`` (config.optimizer) as one optax chain: clip -> direction -> decoupled decay -> learning rate.

    ``weight_decay`` with mode "decoupled" (always for adamw) decays kernels by
    ``learning_rate * weight_decay * w`` outside the adaptive scaling (Loshchilov &
    Hutter); with mode "l2" it is added to the loss instead (see the train step).
    """
    direction = {
        "sgd": lambda: optax.identity(),
        "momentum": lambda: optax.trace(decay=opt.momentum, nesterov=False),
        "nesterov": lambda: optax.trace(decay=opt.momentum, nesterov=True),
        "adam": lambda: optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
        "adamw": lambda: optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps),
        # eps outside the square root, as Keras and PyTorch place it
        "rmsprop": lambda: optax.chain(optax.scale_by_rms(decay=opt.rms_decay, eps=opt.eps, eps_in_sqrt=False),
                                       optax.trace(decay=opt.momentum) if opt.momentum else optax.identity()),
    }[opt.name]()
    chain = []
    if opt.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    chain.append(direction)
    if opt.weight_decay and (opt.weight_decay_mode == "decoupled" or opt.name == "adamw"):
        chain.append(optax.add_decayed_weights(opt.weight_decay, mask=kernel_mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*chain)


def l2_penalty(params, weight_decay: float):
    """``0.5 * weight_decay * sum of squared kernels``: L2 regularisation in the loss (kernels only)."""
    kernels = [p for p, is_kernel in zip(jax.tree_util.tree_leaves(params),
                                         jax.tree_util.tree_leaves(kernel_mask(params))) if is_kernel]
    return 0.5 * weight_decay * sum((k.astype("float32") ** 2).sum() for k in kernels)
