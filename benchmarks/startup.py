"""Time to the first training step in a fresh process, with jaxcnn's per-machine cache cold and warm.

    python benchmarks/startup.py [--models lenet5,resnet20] [--rounds 2] [--backend auto]
                                 [--baseline PATH]

Each run is a new Python process that builds the model, initialises it (jitted, as
the training loop does), compiles ``train_step`` with ``jaxcnn.runtime.jit`` and runs one
step on a synthetic batch (each model's batch and image size of ``vs_pytorch.py``,
``timing.CPU_MODELS``), after ``runtime.enable_compilation_cache()`` (what
``train_and_evaluate`` calls). *Cold*: an empty cache directory (``JAXCNN_CACHE_DIR``),
so ``conv_backend="auto"`` measures its plans and XLA compiles everything. *Warm*: the
directory the cold run filled, so the plans and the compiled programs are read back.
Cold and warm runs alternate; medians over rounds, seconds from the start of the
child's ``main`` (imports excluded, they are the same both ways) to the end of
the first step, split into model init, plan measuring + tracing + compiling (of which
``measuring`` is ``auto``'s own timing of its candidates, ``autotune.measured()``), and
the step.

``--baseline PATH`` runs the jaxcnn of another checkout (its repository root, e.g. a
``git worktree`` of an earlier commit) as a second candidate, alternating with this
one in every round: a before/after of the time to the first step.
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
from timing import CPU_MODEL_OPTIONS, CPU_MODELS, machine, median  # noqa: E402


def child(name: str, backend: str) -> dict:
    """One fresh process's startup, in seconds per phase (printed as JSON)."""
    start = time.perf_counter()
    import functools

    import jax
    import optax

    from jaxcnn import models, runtime
    from jaxcnn.ops import autotune
    from jaxcnn.train import StepConfig, create_train_state, train_step

    runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    runtime.enable_compilation_cache()
    batch_size, shape = CPU_MODELS[name]
    model = models.create(name, num_classes=10, conv_backend=backend, **CPU_MODEL_OPTIONS.get(name, {}))
    tx = optax.sgd(0.01, momentum=0.9)
    jit_once = getattr(runtime, "jit_once", jax.jit)  # a --baseline checkout from before jit_once: jax.jit
    state = jit_once(functools.partial(create_train_state, model, tx, shape, seed=0, ema=False))()
    jax.block_until_ready(state)
    init = time.perf_counter()
    step = runtime.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                         schedule=optax.constant_schedule(0.01), cfg=StepConfig()), donate_argnums=0)
    batch = {"image": jax.random.normal(jax.random.key(0), (batch_size, *shape)),
             "label": jax.random.randint(jax.random.key(1), (batch_size,), 0, 10)}
    compiled = step.lower(state, batch).compile()  # measures auto's plans while tracing
    ready = time.perf_counter()
    jax.block_until_ready(compiled(state, batch))
    end = time.perf_counter()
    return {"init": init - start, "plans+compile": ready - init, "measuring": autotune.measured()[1],
            "step": end - ready, "total": end - start}


def run_child(name: str, backend: str, cache: str, checkout: str | None = None) -> dict:
    """One child's phases; ``checkout`` puts another repository root's jaxcnn first on its path."""
    env = {**os.environ, "JAXCNN_CACHE_DIR": cache}
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__, "--child", name, "--backend", backend], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the {name} child ({checkout or 'this checkout'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="repository root of another checkout, run alternately as 'baseline'")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.backend)))
        return
    unknown = sorted(set(args.models.split(",")) - set(CPU_MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; expected some of {sorted(CPU_MODELS)}")
    if args.baseline and not (Path(args.baseline) / "jaxcnn" / "__init__.py").is_file():
        raise ValueError(f"--baseline: {args.baseline!r} holds no jaxcnn/__init__.py; expected a repository root")
    checkouts = {"this": None, **({"baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    print(f"`python {' '.join(sys.argv)}` on {machine()}\n")
    phases = ("init", "plans+compile", "measuring", "step", "total")
    print("| model | jaxcnn | cache | " + " | ".join(f"{p} s" for p in phases) + " |")
    print("|---" * (3 + len(phases)) + "|")
    for name in args.models.split(","):
        runs = {(label, kind): [] for label in checkouts for kind in ("cold", "warm")}
        for _ in range(args.rounds):
            for label, checkout in checkouts.items():
                with tempfile.TemporaryDirectory() as cache:
                    runs[label, "cold"].append(run_child(name, args.backend, cache, checkout))
                    runs[label, "warm"].append(run_child(name, args.backend, cache, checkout))
        batch_size, shape = CPU_MODELS[name]
        for (label, kind), samples in runs.items():
            print(f"| {name} ({batch_size}, {shape[0]}x{shape[1]}, {args.backend}) | {label} | {kind} | "
                  + " | ".join(f"{median([s[p] for s in samples]):.1f}" for p in phases) + " |", flush=True)


if __name__ == "__main__":
    main()
