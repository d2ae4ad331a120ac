"""The accelerator benchmark stays runnable where it is meant to run: without TensorFlow or PyTorch."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What the device machines lack (benchmarks/gpu.py's docstring); importing any of them fails.
ABSENT = ["tensorflow", "tensorflow_datasets", "torch", "sklearn", "matplotlib"]


def test_gpu_benchmark_runs_both_modes_without_tensorflow_or_pytorch(tmp_path):
    for name in ABSENT:
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} is absent on the device machines')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run([sys.executable, "benchmarks/gpu.py", "--models", "lenet5", "--rounds", "1",
                          "--matmul_size", "256"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout.split("\n\n")[-1]
    rows = re.findall(r"^\| lenet5 \(256, float32\) \| (\w+) \| ([\d,]+) ", table, re.M)
    assert [mode for mode, _ in rows] == ["jit", "shard_map"], run.stdout
    assert all(int(rate.replace(",", "")) > 0 for _, rate in rows)
