"""The pure steps: learning, the non-finite guard, accumulation, EMA, loss scaling, and the losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.data import offline
from jaxcnn.train import StepConfig, create_train_state, eval_step, losses, train_step


def _digits_batch(n=64):
    d = offline.digits("train")
    x = jax.image.resize(jnp.asarray(d["image"][:n], jnp.float32) / 16, (n, 32, 32, 1), "bilinear")
    return {"image": x, "label": jnp.asarray(d["label"][:n], jnp.int32)}


def _setup(name="lenet5", lr=1e-2, cfg=StepConfig(), tx=None, ema=False, num_classes=10, dtype=jnp.float32,
           loss_scale=1.0):
    model = models.create(name, num_classes=num_classes, dtype=dtype)
    tx = tx or optax.adam(lr)
    state = create_train_state(model, tx, (32, 32, 1), seed=0, ema=ema, loss_scale=loss_scale)
    step = jax.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(lr),
                                     cfg=cfg))
    return model, state, step


def test_loss_decreases_on_a_small_overfit_set():
    batch = _digits_batch()
    _, state, step = _setup("mnist_cnn")
    losses_seen = []
    for _ in range(60):
        state, metrics = step(state, batch)
        losses_seen.append(float(metrics["loss"]) / float(metrics["count"]))
    assert losses_seen[-1] < 0.1 * losses_seen[0]
    assert float(metrics["correct"]) == 64  # memorised
    assert int(state.step) == 60


def test_nonfinite_loss_is_recorded_and_leaves_the_state_untouched():
    batch = _digits_batch()
    _, state, step = _setup()
    state, _ = step(state, batch)
    before = jax.device_get(state)
    poisoned = {**batch, "image": batch["image"].at[0, 0, 0, 0].set(jnp.nan)}
    state, _ = step(state, poisoned)
    state, _ = step(state, batch)  # a finite step after it does not clear the record
    assert int(state.nonfinite_step) == 1 and int(state.step) == 3
    jax.tree_util.tree_map(np.testing.assert_array_equal, before.params, jax.device_get(state.params))


@pytest.mark.parametrize("backend", ["cpu", "gpu"])  # a cond on the CPU, a per-leaf where elsewhere
def test_the_update_is_applied_or_skipped_whole(backend, monkeypatch):
    from jaxcnn.train.steps import _updated_if

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    new = {"w": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones(3), jnp.asarray(7, jnp.int32))}
    old = jax.tree_util.tree_map(lambda a: -a - 1, new)
    pick = jax.jit(lambda apply: _updated_if(apply, lambda: new, lambda: old))
    for apply, expected in ((True, new), (False, old)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, pick(jnp.asarray(apply)), expected)


def test_gradient_accumulation_equals_one_big_batch():
    batch = _digits_batch()
    _, state_a, step_a = _setup(tx=optax.sgd(0.1))
    _, state_b, step_b = _setup(tx=optax.sgd(0.1), cfg=StepConfig(grad_accum_steps=4))
    for _ in range(3):
        state_a, ma = step_a(state_a, batch)
        state_b, mb = step_b(state_b, batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           state_a.params, state_b.params)
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    assert float(mb["count"]) == 64


def test_ema_tracks_the_weights():
    batch = _digits_batch()
    _, state, step = _setup(cfg=StepConfig(ema_decay=0.5), ema=True)
    p0 = jax.device_get(state.params)
    state, _ = step(state, batch)
    expected = jax.tree_util.tree_map(lambda e, p: 0.5 * e + 0.5 * p, p0, jax.device_get(state.params))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), state.ema_params, expected)


def test_without_dynamic_loss_scaling_the_stored_scale_leaves_the_update_alone():
    # Scaling the loss by 3 and the gradients back by 1/3 would round differently; unscaled, the
    # step writes what the backward pass computed, whatever scale the state holds.
    batch = _digits_batch()
    _, state, step = _setup(tx=optax.sgd(0.1))
    plain, _ = step(state, batch)
    other, _ = step(state.replace(loss_scale=jnp.asarray(3.0, jnp.float32)), batch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(plain.params),
                           jax.device_get(other.params))


def test_float16_dynamic_loss_scale_halves_on_overflow_and_skips():
    batch = _digits_batch()
    _, state, step = _setup(dtype=jnp.float16, cfg=StepConfig(dynamic_loss_scale=True), loss_scale=2.0**15)
    state, _ = step(state, batch)
    assert state.params["C1"]["kernel"].dtype == jnp.float32  # float32 master weights
    huge = state.replace(loss_scale=jnp.asarray(2.0**60, jnp.float32))  # scaled gradients overflow float16
    before = jax.device_get(huge.params)
    after, _ = step(huge, batch)
    assert float(after.loss_scale) == 2.0**59 and int(after.nonfinite_step) == -1
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.device_get(after.params))


def test_googlenet_auxiliary_losses_enter_the_objective():
    small = (("3a", 64, 96, 128, 16, 32, 32), "M", ("4a", 192, 96, 208, 16, 48, 64), ("4d", 112, 144, 288, 32, 64, 64))
    model = models.create("googlenet", num_classes=10, aux_logits=True, inceptions=small)
    tx = optax.sgd(0.0)
    # Jitted, as the training loop does: initialising GoogLeNet op by op took 26 s, compiled 11 s.
    state = jax.jit(lambda: create_train_state(model, tx, (64, 64, 3), seed=0, ema=False))()
    batch = {"image": jnp.ones((2, 64, 64, 3)), "label": jnp.array([1, 2])}
    run = lambda w: train_step(state, batch, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.0),
                               cfg=StepConfig(aux_weight=w))[1]
    with_aux, without = jax.jit(lambda: (run(0.3), run(0.0)))()  # one compilation for both
    assert float(with_aux["objective"]) > float(without["objective"])
    assert float(with_aux["loss"]) == pytest.approx(float(without["loss"]))  # the main head's loss alone


def test_eval_step_masks_padding():
    model, state, _ = _setup()
    batch = _digits_batch(8)
    sums = eval_step(state, {**batch, "mask": jnp.arange(8) < 5}, apply_fn=model.apply, cfg=StepConfig())
    full = eval_step(state, {**batch, "mask": jnp.ones(8, bool)}, apply_fn=model.apply, cfg=StepConfig())
    assert float(sums["count"]) == 5 and float(full["count"]) == 8
    assert float(sums["loss"]) < float(full["loss"])


def test_losses_against_hand_computed_values():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), [-np.log(p[0]), np.log(3)], rtol=1e-6)
    smooth = losses.cross_entropy(logits, labels, label_smoothing=0.3)
    target = np.array([0.8, 0.1, 0.1])  # 0.7 * one-hot + 0.3 / 3
    np.testing.assert_allclose(smooth[0], -(target * np.log(p)).sum(), rtol=1e-6)
    soft = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(losses.cross_entropy(logits, soft)[0], -(0.5 * np.log(p[0]) + 0.5 * np.log(p[1])),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.mse(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])), [1.0, 4.0])
    bce = losses.binary_cross_entropy(jnp.array([[0.0], [2.0]]), jnp.array([1, 0]))
    np.testing.assert_allclose(bce, [np.log(2), np.log(1 + np.exp(2.0))], rtol=1e-6)
    sums = losses.metric_sums("cross_entropy", logits, labels, losses.cross_entropy(logits, labels))
    assert float(sums["correct"]) == 1 and "top5" not in sums
    assert losses.finalize(sums)["accuracy"] == 0.5


def test_top5_counts_examples_whose_label_is_among_the_five_highest():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((64, 12)).astype(np.float32)
    labels = rng.integers(0, 12, 64)
    mask = rng.random(64) < 0.8
    sums = losses.metric_sums("cross_entropy", jnp.asarray(logits), jnp.asarray(labels), jnp.zeros(64), jnp.asarray(mask))
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    assert float(sums["top5"]) == np.sum((top5 == labels[:, None]).any(-1) & mask)
