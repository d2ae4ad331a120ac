"""The textbook's non-classification experiments, the figures, and the report."""

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops, viz
from jaxcnn.tasks import kernel_recovery
from jaxcnn.train import train_and_evaluate
from tests.train.test_config_and_optim import load_experiment


def _png_size(path):
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = open(path, "rb").read(32)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_kernel_recovery_converges_on_a_small_image():
    image = np.random.default_rng(0).standard_normal((24, 24)).astype(np.float32)
    for backend in ("im2col", "xla"):
        result = kernel_recovery.recover_kernel(image, ops.filters.HORIZONTAL_EDGE, backend=backend, max_steps=300)
        assert np.abs(result["kernel"] - ops.filters.HORIZONTAL_EDGE).max() < 1e-2
        assert result["losses"][-1] < 1e-4 < result["losses"][0]


def test_kernel_recovery_experiment_writes_its_results(tmp_path):
    config = load_experiment("kernel_recovery")
    config.downsample = 8  # 54x80: a few hundred steps in well under a second
    results = train_and_evaluate(config, str(tmp_path))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert set(on_disk) >= {"learned_kernel", "true_kernel", "final_loss", "steps"}
    assert on_disk["true_kernel"] == [[0, -1, 0], [0, 2, 0], [0, -1, 0]]
    assert results["converged"] and on_disk["final_loss"] < 1e-7
    assert np.abs(np.array(on_disk["learned_kernel"]) - np.array(on_disk["true_kernel"])).max() < 1e-2
    assert _png_size(tmp_path / "kernel_recovery.png")[0] > 800


def test_filters_experiment_draws_the_gallery_and_the_pipeline(tmp_path):
    config = load_experiment("filters")
    config.downsample = 8
    results = train_and_evaluate(config, str(tmp_path))
    assert len(results["filters"]) == 9 and "identity" not in results["filters"]
    (h, w, _), conv, relu, pooled = results["conv_relu_pool"]["shapes"]
    assert conv == relu == [h, w] and pooled == [h // 2, w // 2]
    assert 0.0 < results["conv_relu_pool"]["negative_fraction_before_relu"] < 1.0
    for name in ("filters_gallery.png", "conv_relu_pool.png"):
        width, height = _png_size(tmp_path / name)
        assert width > 600 and height > 200


def test_viz_figures_are_pngs_of_the_expected_layout(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(size=(64, 8, 8, 1)), rng.integers(0, 3, 64)
    predictions = labels.copy()
    predictions[:5] = (labels[:5] + 1) % 3
    grid = _png_size(viz.plot_predictions(images, labels, predictions, str(tmp_path / "p.png"), ["a", "b", "c"]))
    assert grid[1] > grid[0] * 0.8  # 8 x 8 panels
    m = viz.confusion_matrix(labels, predictions, 3)
    assert m.sum() == 64 and np.trace(m) == 59
    _png_size(viz.plot_confusion(labels, predictions, 3, str(tmp_path / "c.png")))
    width, height = _png_size(viz.plot_kernels(rng.normal(size=(5, 5, 3, 6)), str(tmp_path / "k.png")))
    assert width > 3 * height  # one row of six kernels
    conv = jnp.asarray(rng.normal(size=(10, 10, 4)))
    rows = viz.feature_map_rows(conv)
    assert [r[0] for r in rows] == ["conv", "activation", "pool"] and rows[2][1].shape == (5, 5, 4)
    assert rows[1][1].min() >= 0
    _png_size(viz.plot_feature_maps(images[0], conv, str(tmp_path / "f.png")))


def test_visualize_run_redraws_a_finished_run(tmp_path, data_dir):
    config = load_experiment("default")
    config.dataset.data_dir, config.total_steps, config.progress_bar, config.figures = data_dir, 3, False, False
    config.parallel = "none"
    train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "kernels.png").exists()
    paths = viz.visualize_run(str(tmp_path))
    assert sorted(p.split("/")[-1] for p in paths) == ["confusion.png", "feature_maps.png", "kernels.png",
                                                      "predictions.png"]


def test_report_runs_end_to_end_on_a_tiny_budget(tmp_path, data_dir):
    config = load_experiment("report")
    config.budget_steps = 2
    for run in config.runs.values():
        if run.get("task", "train") == "train":
            run.dataset.data_dir = data_dir
            run.parallel = "none"
            run.figures = False
            run.model.conv_backend = "xla"  # not auto: measuring each run's conv shapes would double the test
    results = train_and_evaluate(config, str(tmp_path))
    table = [line for line in (tmp_path / "REPORT.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert sorted(row.split(" | ")[0][2:] for row in table) == sorted(config.runs.keys())
    assert len(results["runs"]) == 6
    colors = next(row for row in table if row.startswith("| colors "))
    assert "96.30%" in colors  # the textbook's figure next to ours


def test_unknown_task_and_task_config_typos():
    with pytest.raises(ValueError, match=r"config.task must be 'train' or one of"):
        train_and_evaluate(__import__("ml_collections").ConfigDict({"task": "gan"}), "/tmp/unused")
    config = load_experiment("kernel_recovery")
    with config.unlocked():
        config.max_step = 3
    with pytest.raises(ValueError, match=r"unknown config key 'max_step'. Did you mean 'max_steps'"):
        train_and_evaluate(config, "/tmp/unused")
