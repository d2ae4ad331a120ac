"""Two processes x two CPU devices on loopback (jax.distributed, gloo) train exactly like one process x four."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxcnn.data import sources

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, data_dir, devices, *flags):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, str(ROOT / "launch.py"), "--workdir", str(workdir), "--config.parallel=jit",
           "--config.model.name=mnist_cnn", "--config.dataset.image_size=28", "--config.progress_bar=False", "--config.figures=False",
           f"--config.dataset.data_dir={data_dir}", "--config.total_steps=12", "--config.batch_size=32",
           "--config.checkpoint_every_steps=6", "--config.log_every_steps=3",
           "--config.model.conv_backend=xla", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_equal_one(tmp_path, data_dir):
    sources.load_arrays("digits", "train", data_dir)  # prepare the dataset once, before processes race for it
    sources.load_arrays("digits", "test", data_dir)
    single = _launch(tmp_path / "single", data_dir, 4)
    address = f"127.0.0.1:{_free_port()}"
    procs = [_launch(tmp_path / "multi", data_dir, 2, f"--coordinator_address={address}", "--num_processes=2",
                     f"--process_id={i}") for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in (single, *procs)]
    for p, out in zip((single, *procs), outputs):
        assert p.returncode == 0, out
    one = json.loads((tmp_path / "single" / "results.json").read_text())
    two = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert (one["devices"], one["processes"]) == (4, 1) and (two["devices"], two["processes"]) == (4, 2)
    assert two["step"] == one["step"] == 12
    train_losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                     if r["split"] == "train"] for run in ("single", "multi")]
    assert len(train_losses[0]) == 4 and np.allclose(train_losses[1], train_losses[0], rtol=1e-6, atol=0)
    # The biases of mnist_cnn's convolutions and dense layer feed its BatchNorm, which cancels them: their
    # gradients are rounding noise, all-reduced in a different order by one process and by two, and Adam
    # scales that noise to learning-rate-sized steps. The training losses cannot see them; the running
    # mean that evaluation uses follows them, by about 1e-4 of the test loss.
    assert abs(two["test_loss"] - one["test_loss"]) <= 1e-3 * abs(one["test_loss"])
    assert two["test_accuracy"] == one["test_accuracy"]
    assert (tmp_path / "multi" / "checkpoints" / "12").exists()
