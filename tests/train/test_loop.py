"""train_and_evaluate end to end: outputs, resumption after SIGKILL and SIGTERM, the guards and errors."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jaxcnn import models, runtime
from jaxcnn.train import (
    CheckpointError,
    Checkpoints,
    NonFiniteLossError,
    create_train_state,
    train_and_evaluate,
)
from tests.train.test_config_and_optim import load_experiment

ROOT = Path(__file__).resolve().parents[2]


def _tiny(data_dir, name="default", **overrides):
    config = load_experiment(name)
    config.dataset.data_dir = data_dir
    config.parallel = "none"
    config.progress_bar = False
    config.total_steps = 12
    config.batch_size = 32
    config.log_every_steps = 4
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 4
    config.figures = False
    for key, value in overrides.items():
        *groups, leaf = key.split(".")
        target = config
        for g in groups:
            target = target[g]
        target[leaf] = value
    return config


def test_default_experiment_writes_every_output(tmp_path, data_dir, monkeypatch):
    def records_written():
        metrics = tmp_path / "metrics.jsonl"
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    released = []  # how many metric records the run had written each time it handed free memory back
    monkeypatch.setattr(runtime, "release_free_memory", lambda: released.append(records_written()))
    results = train_and_evaluate(_tiny(data_dir, figures=True), str(tmp_path))
    assert released == [0, 3]  # after the first step, and after the first evaluation (train 4, 6, eval 6 written)
    assert results["step"] == 12 and results["completed"] and 0.0 <= results["test_accuracy"] <= 1.0
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for key in ("test_accuracy", "test_loss", "step", "wall_time_s", "train_images_per_sec"):
        assert on_disk[key] == results[key]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [4, 6, 8, 12]  # logs, and before evaluations
    assert [r["step"] for r in records if r["split"] == "eval"] == [6, 12]
    for figure in ("curves", "kernels", "feature_maps", "predictions", "confusion"):
        assert (tmp_path / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert any((tmp_path / "tensorboard").iterdir())
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "lenet5"


def _launch(workdir, data_dir, *flags):
    cmd = [sys.executable, str(ROOT / "launch.py"), "--workdir", str(workdir), "--config.parallel=none",
           "--config.progress_bar=False", "--config.figures=False", f"--config.dataset.data_dir={data_dir}",
           "--config.total_steps=40",
           "--config.model.conv_backend=xla",  # not auto: runs started together would each measure plans
           "--config.checkpoint_every_steps=10", "--config.log_every_steps=5", "--config.batch_size=32", *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir, step, process, timeout=120):
    deadline = time.time() + timeout
    while not (workdir / "checkpoints" / str(step)).exists():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def _results(workdir):
    r = json.loads((workdir / "results.json").read_text())
    return {k: r[k] for k in ("test_accuracy", "test_loss", "test_top5_accuracy", "step")}


def test_killed_run_resumes_to_identical_results(tmp_path, data_dir):
    reference = _launch(tmp_path / "uninterrupted", data_dir)
    killed = _launch(tmp_path / "killed", data_dir)
    _wait_for_checkpoint(tmp_path / "killed", 20, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = _launch(tmp_path / "killed", data_dir)
    out, _ = resumed.communicate(timeout=300)
    reference.communicate(timeout=300)
    assert resumed.returncode == 0, out
    resumed_from = int(out.split("resumed from step ")[1].split()[0])
    assert resumed_from >= 20
    assert _results(tmp_path / "killed") == _results(tmp_path / "uninterrupted")


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path, data_dir):
    run = _launch(tmp_path, data_dir, "--config.total_steps=100000")
    _wait_for_checkpoint(tmp_path, 10, run)
    run.send_signal(signal.SIGTERM)
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    stopped_at = int(out.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert (tmp_path / "checkpoints" / str(stopped_at)).exists()
    assert json.loads((tmp_path / "results.json").read_text())["completed"] is False


def test_nonfinite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    config = _tiny(data_dir, **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e4, "log_every_steps": 1,
                                "checkpoint_every_steps": 1, "schedule.name": "constant"})
    with pytest.raises(NonFiniteLossError, match=r"the loss became non-finite at step (\d+)") as err:
        train_and_evaluate(config, str(tmp_path))
    bad_step = int(str(err.value).split("at step ")[1].split(";")[0])
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) <= bad_step  # nothing saved from the bad step on


def test_corrupt_and_foreign_checkpoints_are_refused_by_name(tmp_path, data_dir):
    train_and_evaluate(_tiny(data_dir), str(tmp_path))
    with pytest.raises(CheckpointError, match=r"checkpoint .*/checkpoints/12 was written by another run: its model "
                                              r"is 'lenet5', this run's is 'mnist_cnn'"):
        train_and_evaluate(_tiny(data_dir, **{"model.name": "mnist_cnn", "dataset.image_size": 28}), str(tmp_path))
    for f in (tmp_path / "checkpoints" / "12").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "meta" not in str(f):
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint .*/checkpoints/12 cannot be"):
        train_and_evaluate(_tiny(data_dir), str(tmp_path))


def test_a_checkpoint_restores_into_an_abstract_state_as_into_arrays(tmp_path):
    """A resumed run restores into its initialiser's ``eval_shape()`` (no initial state computed or compiled)."""
    init = jax.jit(functools.partial(create_train_state, models.create("lenet5", num_classes=10),
                                     optax.sgd(0.1, momentum=0.9), (32, 32, 1), seed=3, ema=True))
    saved = jax.tree_util.tree_map(lambda a: a + 1 if a.dtype == np.float32 else a, init())  # not the init
    checkpoints = Checkpoints(str(tmp_path), keep=1, meta={"model": "lenet5"})
    checkpoints.save(7, saved)
    from_arrays = checkpoints.restore(init())
    from_abstract = checkpoints.restore(init.eval_shape())
    assert type(from_abstract) is type(saved)
    for restored in (from_arrays, from_abstract):
        for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(saved), strict=True):
            assert isinstance(a, jax.Array) and a.dtype == b.dtype and np.array_equal(a, b)
    checkpoints.close()


def test_unwritable_workdir_is_a_clear_error(tmp_path, data_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=r"workdir '.*a-file/run' is not writable"):
        train_and_evaluate(_tiny(data_dir), str(blocker / "run"))


def test_unknown_experiment_file_and_bad_override_fail_clearly(tmp_path):
    bad_file = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", "experiments/nope.py",
                               "--workdir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert bad_file.returncode != 0 and "experiments/nope.py" in bad_file.stderr
    typo = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config.batchsize=3", "--workdir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert typo.returncode != 0 and "batchsize" in typo.stderr and "batch_size" in typo.stderr


def test_auto_backend_saves_its_plans_and_a_resumed_run_reuses_them(tmp_path, data_dir, capsys):
    from jaxcnn.ops import autotune

    autotune.clear_plans()
    train_and_evaluate(_tiny(data_dir, total_steps=4, **{"model.conv_backend": "auto"}), str(tmp_path))
    said = re.search(r"conv_backend=auto: measured (\d+) conv/pool shapes in [\d.]+ s; not kept \(the cache is off\)",
                     capsys.readouterr().out)
    assert said and int(said.group(1)) >= 1  # LeNet's C3 at batch 32 is big enough to measure
    saved = json.loads((tmp_path / "conv_plans.json").read_text())
    assert any("x(32, 32, 32, 1) w(5, 5, 1, 6)" in key for key in saved["conv"])  # LeNet's C1 at batch 32
    forced = {"conv": {key: {"forward": "im2col", "grad_weight": "im2col", "grad_input": "xla"} for key in saved["conv"]},
              "pool": {key: "im2col" for key in saved["pool"]}}
    (tmp_path / "conv_plans.json").write_text(json.dumps(forced))
    autotune.clear_plans()
    results = train_and_evaluate(_tiny(data_dir, total_steps=8, **{"model.conv_backend": "auto"}), str(tmp_path))
    assert results["step"] == 8
    assert autotune.plans() == forced  # loaded from the workdir, not measured again
    assert "measured" not in capsys.readouterr().out
    autotune.clear_plans()
