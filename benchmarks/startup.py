"""Time to the first training step and peak memory in a fresh process, jaxcnn's cache cold and warm.

    python benchmarks/startup.py [--models lenet5,resnet20] [--rounds 2] [--backend auto]
                                 [--steps 5] [--baseline PATH] [--pytorch]

Each run is a new Python process that builds the model, initialises it (jitted, as
the training loop does), compiles ``train_step`` with ``jaxcnn.runtime.jit`` and runs one
step on a synthetic batch (each model's batch and image size of ``vs_pytorch.py``,
``timing.CPU_MODELS``), after ``runtime.enable_compilation_cache()`` (what
``train_and_evaluate`` calls). *Cold*: an empty cache directory (``JAXCNN_CACHE_DIR``),
so ``conv_backend="auto"`` measures its plans, oneDNN's kernels are built and XLA
compiles everything. *Warm*: the directory the cold run filled, so all of that is
read back. Cold and warm runs alternate; medians over rounds, seconds from the start
of the child's ``main`` (imports excluded, they are the same both ways) to the end of
the first step, split into model init, plan measuring + tracing + compiling (of which
``measuring`` is ``auto``'s own timing of its candidates, ``autotune.measured()``), and
the step.

Memory: each child then runs ``--steps`` more steps. Reported are its resident memory
(RSS) after imports, and above that the peak RSS over everything after them (the
kernel's ``VmHWM``, reset once imported) and the RSS held at the end (jaxcnn's child
releases free memory after its first step, as ``train_and_evaluate`` does), and XLA's
own figure for the compiled step's buffers (state, batch, temporaries). ``--pytorch``
adds PyTorch eager in NCHW and NHWC (``vs_pytorch.py``'s step) as candidates in every
round: its child imports jax and jaxcnn too, whose model definitions it reads.

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


def _status_mib(field: str) -> float:
    """A field of ``/proc/self/status`` (``VmRSS``, resident now; ``VmHWM``, its peak) in MiB."""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kib) / 1024


def _reset_peak_rss() -> float:
    """Start the kernel's peak-RSS mark afresh (``VmHWM``, Linux's ``clear_refs`` 5); return the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _memory_above(imported: float) -> dict:
    """The RSS after imports, and the peak RSS and the RSS now above it, in MiB."""
    return {"imported MiB": imported, "peak MiB": _status_mib("VmHWM") - imported,
            "held MiB": _status_mib("VmRSS") - imported}


def child(name: str, backend: str, steps: int) -> dict:
    """One fresh jaxcnn process: seconds per phase to the end of its first step, then ``steps`` more
    steps, and its memory: the RSS after imports, the peak RSS above it and the RSS above it at the end,
    and XLA's own figure for the compiled step's buffers (arguments, outputs not aliased to them,
    temporaries). Printed as JSON."""
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
    imported = _reset_peak_rss()
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
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    end = time.perf_counter()
    getattr(runtime, "release_free_memory", lambda: None)()  # as train_and_evaluate does after its first step
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    buffers = compiled.memory_analysis()
    step_bytes = (buffers.argument_size_in_bytes + buffers.output_size_in_bytes - buffers.alias_size_in_bytes
                  + buffers.temp_size_in_bytes)
    return {"init": init - start, "plans+compile": ready - init, "measuring": autotune.measured()[1],
            "step": end - ready, "total": end - start, **_memory_above(imported), "XLA step MiB": step_bytes / 2**20}


def torch_child(name: str, layout: str, steps: int) -> dict:
    """:func:`child`'s phases and memory for PyTorch eager (``vs_pytorch.py``'s step, in ``layout``); its
    imports include jax and jaxcnn, which ``vs_pytorch.py``'s model definitions read."""
    import torch
    from vs_pytorch import torch_step

    from jaxcnn import runtime

    runtime.tune_cpu_malloc()  # as in vs_pytorch.py's PyTorch processes
    start = time.perf_counter()
    imported = _reset_peak_rss()
    batch_size, shape = CPU_MODELS[name]
    run = torch_step(name, batch_size, shape, channels_last=layout == "NHWC")
    init = time.perf_counter()
    run().item()
    end = time.perf_counter()
    for _ in range(steps):
        run()
    return {"init": init - start, "plans+compile": 0.0, "measuring": 0.0, "step": end - init, "total": end - start,
            **_memory_above(imported), "torch": torch.__version__}


def run_child(flags: list[str], cache: str | None = None, checkout: str | None = None) -> dict:
    """What a fresh process run with ``flags`` printed; ``cache`` is its ``JAXCNN_CACHE_DIR``,
    ``checkout`` a repository root whose jaxcnn it imports first."""
    env = dict(os.environ)
    if cache:
        env["JAXCNN_CACHE_DIR"] = cache
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__, *flags], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the child {flags} ({checkout or 'this checkout'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="steps after the first, within the peak memory")
    parser.add_argument("--baseline", help="repository root of another checkout, run alternately as 'baseline'")
    parser.add_argument("--pytorch", action="store_true", help="PyTorch eager (NCHW and NHWC) as candidates too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--torch_child", help=argparse.SUPPRESS)  # name:layout
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.backend, args.steps)))
        return
    if args.torch_child:
        print(json.dumps(torch_child(*args.torch_child.split(":"), args.steps)))
        return
    unknown = sorted(set(args.models.split(",")) - set(CPU_MODELS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; expected some of {sorted(CPU_MODELS)}")
    if args.baseline and not (Path(args.baseline) / "jaxcnn" / "__init__.py").is_file():
        raise ValueError(f"--baseline: {args.baseline!r} holds no jaxcnn/__init__.py; expected a repository root")
    checkouts = {"jaxcnn": None, **({"jaxcnn baseline": str(Path(args.baseline).resolve())} if args.baseline else {})}
    layouts = ("NCHW", "NHWC") if args.pytorch else ()
    print(f"`python {' '.join(sys.argv)}` on {machine()}\n")
    phases = ("init", "plans+compile", "measuring", "step", "total")
    memory = ("imported MiB", "peak MiB", "held MiB", "XLA step MiB")
    print("| model | candidate | cache | " + " | ".join(f"{p} s" for p in phases) + " | RSS after imports MiB | "
          "above it: peak MiB | held at the end MiB | XLA: the step's buffers MiB |")
    print("|---" * (3 + len(phases) + len(memory)) + "|")
    for name in args.models.split(","):
        jax_flags = ["--child", name, "--backend", args.backend, "--steps", str(args.steps)]
        runs = {**{(label, kind): [] for label in checkouts for kind in ("cold", "warm")},
                **{(f"PyTorch {layout}", "-"): [] for layout in layouts}}
        for _ in range(args.rounds):
            for label, checkout in checkouts.items():
                with tempfile.TemporaryDirectory() as cache:
                    runs[label, "cold"].append(run_child(jax_flags, cache, checkout))
                    runs[label, "warm"].append(run_child(jax_flags, cache, checkout))
            for layout in layouts:
                runs[f"PyTorch {layout}", "-"].append(
                    run_child(["--torch_child", f"{name}:{layout}", "--steps", str(args.steps)]))
        batch_size, shape = CPU_MODELS[name]
        for (label, kind), samples in runs.items():
            values = [f"{median([s[p] for s in samples]):.1f}" for p in phases]
            values += [f"{median([s[m] for s in samples]):,.0f}" if m in samples[0] else "-" for m in memory]
            print(f"| {name} ({batch_size}, {shape[0]}x{shape[1]}) | {label} | {kind} | " + " | ".join(values) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
