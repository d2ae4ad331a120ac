"""Accelerator ablations: what one change is worth inside a whole training step, side by side.

    python benchmarks/gpu_ablations.py [--studies pool,stem,auto,batchnorm,steps_per_call] [--rounds 5]

Each study builds its candidates in one process with ``gpu.py``'s step (jaxcnn's
``train_step``, SGD with Nesterov momentum, synthetic data on the device, state donated)
and times them in alternating rounds:

- ``pool``: ResNet-50 (bfloat16, batch 256, 224x224) with jaxcnn's max-pool gradient
  (slices, selects and pads) against JAX's own derivative of the same ``reduce_window``
  (XLA's ``select_and_scatter``), patched back in for the second candidate.
- ``stem``: ResNet-50 fed 3-channel images against images zero-padded to 4 and 8
  channels (the stem convolution's channel alignment, a common cuDNN trick).
- ``auto``: ResNet-50 (bfloat16) and ResNet-20 (float32) with ``conv_backend="xla"``
  against ``"auto"``, which off the CPU takes the xla formulation for every layer without
  measuring, but through its own custom-VJP boundary: this checks that costs nothing.
- ``batchnorm``: ResNet-50 (bfloat16) with the models' ``jaxcnn.layers.BatchNorm``
  (closed-form gradient, written for the CPU but run everywhere) against
  ``flax.linen.BatchNorm`` (autodiff through the statistics), patched in for the second
  candidate: whether the closed form should stay on every backend.
- ``steps_per_call``: LeNet-5 and ResNet-20 (float32, batch 128) with one jitted step
  per call against ``--k`` steps per call under ``lax.scan`` (host dispatch amortised).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import step_candidate  # noqa: E402
from timing import machine, median, side_by_side, spread  # noqa: E402

from jaxcnn import models  # noqa: E402
from jaxcnn.models import common  # noqa: E402
from jaxcnn.ops import pool  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, train_step  # noqa: E402


def report(title: str, samples: dict[str, list[float]], images: dict[str, int]) -> None:
    base = next(iter(samples))
    print(f"\n{title}\n\n| candidate | images/s | vs {base} |\n|---|---|---|")
    for name, s in samples.items():
        print(f"| {name} | {images[name] / median(s):,.0f} {spread(s)} | "
              f"{median(samples[base]) * images[name] / images[base] / median(s):.3f}x |", flush=True)


def pool_study(args) -> None:
    shape = (args.image_size, args.image_size, 3)
    candidates, images = {}, {}
    candidates["jaxcnn max-pool gradient"], images["jaxcnn max-pool gradient"], _ = step_candidate(
        "resnet50", args.resnet50_batch, shape, jnp.bfloat16, "jit")
    jax_derivative = lambda x, spec: pool._reduce(x, spec, -jnp.inf, lax.max)  # JAX differentiates this
    with mock.patch.object(pool, "window_max", jax_derivative):
        candidates["JAX's derivative"], images["JAX's derivative"], _ = step_candidate(
            "resnet50", args.resnet50_batch, shape, jnp.bfloat16, "jit")
    report(f"ResNet-50 bf16 step, batch {args.resnet50_batch}: max-pool gradient",
           side_by_side(candidates, rounds=args.rounds, min_time=1.0), images)


def stem_study(args) -> None:
    candidates, images = {}, {}
    for channels in (3, 4, 8):
        name = f"{channels}-channel input"
        candidates[name], images[name], _ = step_candidate(
            "resnet50", args.resnet50_batch, (args.image_size, args.image_size, channels), jnp.bfloat16, "jit")
    report(f"ResNet-50 bf16 step, batch {args.resnet50_batch}: input channels (zero-padded)",
           side_by_side(candidates, rounds=args.rounds, min_time=1.0), images)


def auto_study(args) -> None:
    for name, batch, shape, dtype in (
            ("resnet50", args.resnet50_batch, (args.image_size, args.image_size, 3), jnp.bfloat16),
            ("resnet20", 128, (32, 32, 3), jnp.float32)):
        candidates, images = {}, {}
        for backend in ("xla", "auto"):
            label = f'conv_backend="{backend}"'
            candidates[label], images[label], _ = step_candidate(name, batch, shape, dtype, "jit", backend)
        report(f"{name} {jnp.dtype(dtype).name} step, batch {batch}: conv backend",
               side_by_side(candidates, rounds=args.rounds, min_time=1.0), images)


def batchnorm_study(args) -> None:
    shape = (args.image_size, args.image_size, 3)
    candidates, images = {}, {}
    label = "jaxcnn.layers.BatchNorm"
    candidates[label], images[label], _ = step_candidate("resnet50", args.resnet50_batch, shape, jnp.bfloat16, "jit")
    label = "flax.linen.BatchNorm"
    with mock.patch.object(common, "BatchNorm", nn.BatchNorm):  # same arguments and variables
        candidates[label], images[label], _ = step_candidate("resnet50", args.resnet50_batch, shape, jnp.bfloat16,
                                                             "jit")
    report(f"ResNet-50 bf16 step, batch {args.resnet50_batch}: BatchNorm",
           side_by_side(candidates, rounds=args.rounds, min_time=1.0), images)


def scanned_steps(name: str, shape, batch: int, k: int):
    """Two zero-argument callables: one jitted train step per call, and ``k`` per call (``lax.scan``)."""
    model = models.create(name, num_classes=10)
    schedule = optax.constant_schedule(0.1)
    tx = optax.sgd(schedule, momentum=0.9, nesterov=True)
    step = functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule, cfg=StepConfig())
    one = jax.jit(step, donate_argnums=0)
    many = jax.jit(lambda state, batches: lax.scan(step, state, batches), donate_argnums=0)
    stacked = {"image": jax.random.normal(jax.random.key(1), (k, batch, *shape)),
               "label": jax.random.randint(jax.random.key(2), (k, batch), 0, 10)}
    single = jax.tree_util.tree_map(lambda x: x[0], stacked)
    box = {fn: create_train_state(model, tx, shape, seed=0, ema=False) for fn in (one, many)}

    def call(fn, data):
        box[fn], metrics = fn(box[fn], data)
        return metrics["objective"]

    return functools.partial(call, one, single), functools.partial(call, many, stacked)


def steps_per_call_study(args) -> None:
    for name, shape in (("lenet5", (32, 32, 1)), ("resnet20", (32, 32, 3))):
        one, many = scanned_steps(name, shape, 128, args.k)
        candidates = {"1 step per call": one, f"{args.k} steps per call": many}
        images = {"1 step per call": 128, f"{args.k} steps per call": 128 * args.k}
        report(f"{name} float32 step, batch 128: steps per jitted call",
               side_by_side(candidates, rounds=args.rounds, min_time=1.0), images)


STUDIES = {"pool": pool_study, "stem": stem_study, "auto": auto_study, "batchnorm": batchnorm_study,
           "steps_per_call": steps_per_call_study}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", default=",".join(STUDIES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resnet50_batch", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--k", type=int, default=10, help="steps per call in steps_per_call")
    args = parser.parse_args()
    unknown = set(args.studies.split(",")) - set(STUDIES)
    if unknown:
        parser.error(f"--studies: unknown {sorted(unknown)}; expected some of {list(STUDIES)}")
    print(f"`python benchmarks/gpu_ablations.py {' '.join(sys.argv[1:])}` on {machine()}, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")
    for study in args.studies.split(","):
        STUDIES[study](args)


if __name__ == "__main__":
    main()
