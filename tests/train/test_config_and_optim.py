"""The config schema and every experiment file; schedules and optimizers against optax's own."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxcnn import models
from jaxcnn.data import catalog
from jaxcnn.train import default_config, make_optimizer, make_schedule, validate
from jaxcnn.train.optim import kernel_mask, l2_penalty

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "experiments").glob("*.py")
                     if p.stem != "__init__")


def load_experiment(name):
    path = Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


TRAIN_EXPERIMENTS = [n for n in EXPERIMENTS if load_experiment(n).get("task", "train") == "train"]


def test_all_the_issues_experiments_exist():
    assert set(EXPERIMENTS) >= {"default", "shapes", "colors", "shapes_colors", "mnist_cnn", "fashion_cnn", "cifar_cnn",
                                "resnet20_cifar10", "resnet56_cifar10", "vgg16_cifar10", "densenet_bc_cifar10",
                                "googlenet_cifar10", "resnet50_imagenet", "econ_regression", "kernel_recovery",
                                "filters", "report"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_is_documented(name):
    module_doc = (Path(__file__).resolve().parents[2] / "experiments" / f"{name}.py").read_text().split('"""')[1]
    assert "python launch.py" in module_doc and "Expected" in module_doc


@pytest.mark.parametrize("name", TRAIN_EXPERIMENTS)
def test_training_experiment_config_is_valid(name):
    config = validate(load_experiment(name))
    assert config.model.name in models.names() and config.dataset.name in catalog.DATASETS


def test_typo_in_a_key_names_the_close_valid_ones():
    config = default_config()
    with config.unlocked():
        config.batchsize = 32
    with pytest.raises(ValueError, match=r"unknown config key 'batchsize'. Did you mean 'batch_size'\?"):
        validate(config)
    config = default_config()
    with config.optimizer.unlocked():
        config.optimizer.learning_rat = 0.1
    with pytest.raises(ValueError, match=r"unknown config key 'optimizer.learning_rat'. Did you mean 'learning_rate'"):
        validate(config)


@pytest.mark.parametrize("key,value,message", [
    ("parallel", "pmapp", r"config.parallel must be one of .* got 'pmapp'. Did you mean 'pmap'"),
    ("dtype", "fp16", r"config.dtype must be one of \('float32', 'bfloat16', 'float16'\)"),
    ("batch_size", 0, r"config.batch_size must be an int >= 1, got 0"),
    ("optimizer.name", "lamb", r"config.optimizer.name must be one of"),
    ("schedule.name", "cosine", r"config.schedule.name must be one of .* Did you mean"),
    ("loss.label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
    ("optimizer.grad_accum_steps", 3, r"batch_size=128 must be divisible by config.optimizer.grad_accum_steps=3"),
])
def test_bad_values_name_the_key(key, value, message):
    config = default_config()
    *groups, leaf = key.split(".")
    target = config
    for g in groups:
        target = target[g]
    target[leaf] = value
    with pytest.raises(ValueError, match=message):
        validate(config)


def test_partial_configs_get_the_defaults():
    config = validate(ml_collections.ConfigDict({"model": {"name": "mnist_cnn"}, "num_epochs": 2}))
    assert config.model.name == "mnist_cnn" and config.dataset.name == "digits" and config.batch_size == 128


def _schedule(**kw):
    s = default_config().schedule
    s.update(kw)
    return make_schedule(s, 0.1, total_steps=1000, steps_per_epoch=10)


def test_schedules():
    assert float(_schedule()(0)) == pytest.approx(0.1)
    step = _schedule(name="step", milestones=(50, 75))  # epochs -> steps 500, 750
    assert [float(step(s)) for s in (0, 499, 500, 749, 750, 999)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3])
    cosine = _schedule(name="warmup_cosine", warmup_epochs=5, end_fraction=0.1)
    assert float(cosine(0)) == 0.0 and float(cosine(50)) == pytest.approx(0.1)
    assert float(cosine(25)) == pytest.approx(0.05) and float(cosine(1000)) == pytest.approx(0.01)
    assert float(cosine(525)) == pytest.approx(0.01 + 0.09 * 0.5, rel=1e-3)  # half-way down the cosine
    one = _schedule(name="one_cycle")
    assert float(one(0)) == pytest.approx(0.1 / 25) and float(one(300)) == pytest.approx(0.1)
    assert float(one(1000)) < 1e-4
    warm = _schedule(name="step", warmup_epochs=2, milestones=(50,))
    # milestones count from the start of training, warmup included: epoch 50 is step 500
    assert [float(warm(s)) for s in (0, 10, 20, 499, 500)] == pytest.approx([0, 0.05, 0.1, 0.1, 0.01])


def _params():
    rng = np.random.default_rng(0)
    return {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4))), "bias": jnp.asarray(rng.normal(size=4))},
            "norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}


def _run(tx, params, steps=3):
    state = tx.init(params)
    for i in range(steps):
        grads = jax.tree_util.tree_map(lambda p: jnp.sin(p * (i + 1)), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("name,reference", [
    ("sgd", lambda lr: optax.sgd(lr)),
    ("momentum", lambda lr: optax.sgd(lr, momentum=0.9)),
    ("nesterov", lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True)),
    ("adam", lambda lr: optax.adam(lr)),
    ("rmsprop", lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-8, eps_in_sqrt=False)),
])
def test_optimizers_equal_optax_reference(name, reference):
    opt = default_config().optimizer
    opt.name = name
    opt.momentum = 0.0 if name == "rmsprop" else 0.9
    ours = _run(make_optimizer(opt, optax.constant_schedule(0.01)), _params())
    theirs = _run(reference(0.01), _params())
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)


def test_adamw_decays_only_kernels_like_optax_adamw():
    opt = default_config().optimizer
    opt.name, opt.weight_decay = "adamw", 0.1
    ours = _run(make_optimizer(opt, optax.constant_schedule(0.01)), _params())
    theirs = _run(optax.adamw(0.01, weight_decay=0.1, mask=kernel_mask), _params())
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, theirs)
    assert kernel_mask(_params()) == {"conv": {"kernel": True, "bias": False}, "norm": {"scale": False, "bias": False}}


def test_l2_penalty_counts_kernels_only_and_clipping_bounds_the_update():
    params = _params()
    assert float(l2_penalty(params, 0.2)) == pytest.approx(0.1 * float(jnp.sum(params["conv"]["kernel"] ** 2)))
    opt = default_config().optimizer
    opt.name, opt.grad_clip_norm = "sgd", 0.5
    tx = make_optimizer(opt, optax.constant_schedule(1.0))
    huge = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 100.0), params)
    updates, _ = tx.update(huge, tx.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-5)
