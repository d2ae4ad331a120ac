"""Every experiment file, a few steps end to end: offline datasets for real, the others on tfds mock data."""

import contextlib

import ml_collections
import pytest
import tensorflow_datasets as tfds

from jaxcnn.data import catalog
from jaxcnn.train import train_and_evaluate
from tests.train.test_config_and_optim import TRAIN_EXPERIMENTS, load_experiment

# The deep networks compile for minutes on a 2-core CPU: their experiments run here with a shallower
# member of the same family (same classes and blocks; the full architectures are checked, shapes and
# parameter counts, in tests/models) and smaller images.
SMALLER = {
    "resnet50_imagenet": {"dataset.image_size": 32, "model.kwargs": {"stage_sizes": (1, 1, 1, 1)}},
    "resnet56_cifar10": {"model.name": "resnet20"},
    "densenet_bc_cifar10": {"model.kwargs": {"block_config": (2, 2, 2)}},
    "googlenet_cifar10": {"dataset.image_size": 32, "dataset.crop_padding": 4,
                          "model.kwargs": {"aux_logits": True, "inceptions": (
                              ("3a", 64, 96, 128, 16, 32, 32), "M", ("4a", 192, 96, 208, 16, 48, 64),
                              ("4d", 112, 144, 288, 32, 64, 64))}},
}


@pytest.mark.parametrize("name", TRAIN_EXPERIMENTS)
def test_experiment_runs_a_few_steps(name, tmp_path, data_dir):
    config = load_experiment(name)
    config.dataset.data_dir = data_dir
    config.parallel = "none"
    config.progress_bar = False
    config.figures = False
    config.total_steps = 2
    config.batch_size = 8
    config.log_every_steps = 1
    config.dataset.eval_batch_size = 100
    config.model.conv_backend = "xla"  # auto would measure every conv shape first (minutes for the big ones)
    for key, value in SMALLER.get(name, {}).items():
        group, leaf = key.split(".")
        config[group][leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    offline = catalog.get(config.dataset.name).offline
    with contextlib.nullcontext() if offline else tfds.testing.mock_data(num_examples=16):
        results = train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 2 and results["completed"]
    assert results["test_loss"] == results["test_loss"]  # finite, not NaN
    assert (tmp_path / "results.json").exists()
