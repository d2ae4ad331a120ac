"""Data-parallel modes against one device, on 4 virtual CPU devices (tests/conftest.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.data import offline
from jaxcnn.models.resnet import CifarResNet
from jaxcnn.train import StepConfig, create_train_state, eval_step, parallel, train_step

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices")


def _batch(n=64):
    d = offline.digits("train")
    x = jax.image.resize(jnp.asarray(d["image"][:n], jnp.float32) / 16, (n, 28, 28, 1), "bilinear")
    return {"image": x, "label": jnp.asarray(d["label"][:n], jnp.int32), "mask": jnp.arange(n) < n - 5}


def _run(mode, steps=3):
    """mnist_cnn (BatchNorm after a dense layer: its statistics must cover the global batch)."""
    mesh = None if mode == "none" else parallel.make_mesh()
    model = models.create("mnist_cnn", num_classes=10)
    if mode == "shard_map":
        model = model.clone(bn_axis_name=parallel.AXIS)
    tx = optax.sgd(0.1, momentum=0.9)
    cfg = StepConfig(axis_name=parallel.AXIS if mode == "shard_map" else None)
    state = create_train_state(model, tx, (28, 28, 1), seed=0, ema=False)
    train, evaluate = parallel.compile_steps(
        mode, mesh, functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.1),
                                      cfg=cfg),
        functools.partial(eval_step, apply_fn=model.apply, cfg=cfg))
    batch = _batch()
    if mesh is not None:
        state = jax.device_put(state, parallel.replicated(mesh))
        batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    for _ in range(steps):
        state, metrics = train(state, batch)
    return jax.device_get((state.params, state.batch_stats, metrics, evaluate(state, batch)))


@pytest.mark.parametrize("mode", ["jit", "shard_map"])
def test_mode_equals_one_device(mode):
    expected, actual = _run("none"), _run(mode)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    jax.tree_util.tree_map(close, actual, expected)


def test_mode_names():
    assert parallel.resolve_mode("pmap") == "shard_map"
    assert parallel.resolve_mode("auto") == ("jit" if jax.device_count() > 1 else "none")


@pytest.mark.parametrize("model, shape", [(models.create("lenet5", num_classes=10), (32, 32, 1)),
                                          (CifarResNet(depth=8, num_classes=10), (12, 12, 3))])
def test_the_sharded_step_has_one_collective_the_gradient_all_reduce(model, shape):
    """Two independent collectives may run in different orders on XLA's CPU devices and deadlock.

    ResNet-8's BatchNorm (statistics and gradients summed on a wide view of the batch) must not add any,
    down to its last stage's 3x3 examples, whose 9 rows the wide view must not join across examples.
    """
    tx = optax.sgd(0.1)
    train, _ = parallel.compile_steps(
        "jit", parallel.make_mesh(),
        functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=optax.constant_schedule(0.1),
                          cfg=StepConfig()),
        functools.partial(eval_step, apply_fn=model.apply, cfg=StepConfig()))
    state = create_train_state(model, tx, shape, seed=0, ema=False)
    batch = {"image": jnp.zeros((4, *shape)), "label": jnp.zeros((4,), jnp.int32)}  # one example per device
    hlo = train.lower(state, batch).compile().as_text()
    assert "all-reduce(" in hlo
    for other in ("all-gather(", "all-to-all(", "collective-permute(", "reduce-scatter("):
        assert other not in hlo, other


def test_cpu_meshes_keep_one_step_in_flight():
    assert parallel.one_step_in_flight(parallel.make_mesh())  # 4 CPU devices sharing one thread pool
    assert not parallel.one_step_in_flight(None)
