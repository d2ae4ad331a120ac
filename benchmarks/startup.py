"""Time to the first training step in a fresh process, with jaxcnn's per-machine cache cold and warm.

    python benchmarks/startup.py [--models lenet5,resnet20] [--rounds 2] [--backend auto]

Each run is a new Python process that builds the model, initialises it (jitted, as
the training loop does), compiles ``train_step`` with ``jaxcnn.runtime.jit`` and runs one
step on a synthetic batch of 128, after ``runtime.enable_compilation_cache()`` (what
``train_and_evaluate`` calls). *Cold*: an empty cache directory (``JAXCNN_CACHE_DIR``),
so ``conv_backend="auto"`` measures its plans and XLA compiles everything. *Warm*: the
directory the cold run filled, so the plans and the compiled programs are read back.
Cold and warm runs alternate; medians over rounds, seconds from the start of the
child's ``main`` (imports excluded, they are the same both ways) to the end of
the first step, split into model init, plan measuring + tracing + compiling, and the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine, median  # noqa: E402

BATCH = 128
SHAPES = {"lenet5": (32, 32, 1), "resnet20": (32, 32, 3), "resnet50": (64, 64, 3)}


def child(name: str, backend: str) -> dict:
    """One fresh process's startup, in seconds per phase (printed as JSON)."""
    start = time.perf_counter()
    import functools

    import jax
    import optax

    from jaxcnn import models, runtime
    from jaxcnn.train import StepConfig, create_train_state, train_step

    runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    runtime.enable_compilation_cache()
    shape = SHAPES[name]
    model = models.create(name, num_classes=10, conv_backend=backend)
    tx = optax.sgd(0.01, momentum=0.9)
    state = jax.jit(functools.partial(create_train_state, model, tx, shape, seed=0, ema=False))()
    jax.block_until_ready(state)
    init = time.perf_counter()
    step = runtime.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                         schedule=optax.constant_schedule(0.01), cfg=StepConfig()), donate_argnums=0)
    batch = {"image": jax.random.normal(jax.random.key(0), (BATCH, *shape)),
             "label": jax.random.randint(jax.random.key(1), (BATCH,), 0, 10)}
    compiled = step.lower(state, batch).compile()  # measures auto's plans while tracing
    ready = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    end = time.perf_counter()
    return {"init": init - start, "plans+compile": ready - init, "step": end - ready, "total": end - start}


def run_child(name: str, backend: str, cache: str) -> dict:
    env = {**os.environ, "JAXCNN_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, __file__, "--child", name, "--backend", backend], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.backend)))
        return
    print(f"`python {' '.join(sys.argv)}` on {machine()}\n")
    phases = ("init", "plans+compile", "step", "total")
    print("| model | cache | " + " | ".join(f"{p} s" for p in phases) + " |")
    print("|---" * (2 + len(phases)) + "|")
    for name in args.models.split(","):
        runs = {"cold": [], "warm": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory() as cache:
                runs["cold"].append(run_child(name, args.backend, cache))
                runs["warm"].append(run_child(name, args.backend, cache))
        for kind, samples in runs.items():
            print(f"| {name} ({args.backend}) | {kind} | "
                  + " | ".join(f"{median([s[p] for s in samples]):.1f}" for p in phases) + " |", flush=True)


if __name__ == "__main__":
    main()
