"""Accelerator training throughput: ResNet-50 bf16 (the MLPerf bar), LeNet-5 and ResNet-20, jit vs shard_map.

    python benchmarks/gpu.py [--rounds 5] [--resnet50_batch 256] [--image_size 224]

Needs only jax, flax, optax (no TensorFlow, no PyTorch), so it runs on an accelerator
machine as is. Every model trains with jaxcnn's own ``train_step`` (SGD with Nesterov
momentum, cross-entropy) on a synthetic batch resident on the devices, with the state
donated, in each parallel mode over all local devices: ``jit`` (sharded batch,
compiler-inserted all-reduce) and ``shard_map`` (the explicit per-device program).

Printed per model and mode: images/s (median over rounds, ± half the interquartile
range), the step's FLOPs per device from XLA's cost analysis of the compiled
(partitioned) program, the achieved TFLOP/s per device, and model FLOPs utilisation
= achieved / the peak measured on the same device for a large matmul in the model's
compute dtype. ResNet-50 runs in
bfloat16 (float32 parameters) at 224x224; LeNet-5 (32x32x1) and ResNet-20 (32x32x3)
in float32 at batch 128 per device. The MLPerf reference point is about 7,000
images/s per H100 for ResNet-50 training.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine, median, side_by_side, spread  # noqa: E402

from jaxcnn import models  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, parallel, train_step  # noqa: E402


def matmul_peak_tflops(dtype, size: int = 8192, rounds: int = 5) -> float:
    """Measured TFLOP/s of a ``size``-cubed matmul per device, the utilisation denominator."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    f = jax.jit(lambda a: a @ a)
    s = side_by_side({"mm": lambda: f(a)}, rounds=rounds, min_time=0.5)
    return 2 * size**3 / median(s["mm"]) / 1e12


def step_candidate(name, per_device_batch, image_shape, dtype, mode):
    """A zero-argument callable running one jaxcnn train step, and the step's FLOPs per call."""
    mesh = parallel.make_mesh()
    batch = per_device_batch * jax.device_count()
    model = models.create(name, num_classes=1000 if name == "resnet50" else 10, dtype=dtype)
    if mode == "shard_map" and hasattr(model, "bn_axis_name"):
        model = model.clone(bn_axis_name=parallel.AXIS)  # BatchNorm over the global batch
    schedule = optax.constant_schedule(0.1)
    tx = optax.sgd(schedule, momentum=0.9, nesterov=True)
    cfg = StepConfig(axis_name=parallel.AXIS if mode == "shard_map" else None)
    step = functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule, cfg=cfg)
    train, _ = parallel.compile_steps(mode, mesh, step, lambda state, batch: {})
    state = jax.jit(functools.partial(create_train_state, model, tx, image_shape, seed=0, ema=False),
                    out_shardings=parallel.replicated(mesh))()
    data = jax.device_put({"image": jax.random.normal(jax.random.key(1), (batch, *image_shape)),
                           "label": jax.random.randint(jax.random.key(2), (batch,), 0, 10)},
                          parallel.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = train.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], data)
        return metrics["objective"]

    return run, batch, flops, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resnet50_batch", type=int, default=256, help="per device")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--models", default="resnet50,resnet20,lenet5")
    parser.add_argument("--modes", default="jit,shard_map")
    args = parser.parse_args()
    devices = jax.devices()
    print(f"`python benchmarks/gpu.py --rounds {args.rounds} --resnet50_batch {args.resnet50_batch} "
          f"--image_size {args.image_size}` on {machine()}, {len(devices)} x {devices[0].device_kind}\n")
    setups = {"resnet50": (args.resnet50_batch, (args.image_size, args.image_size, 3), jnp.bfloat16),
              "resnet20": (128, (32, 32, 3), jnp.float32), "lenet5": (128, (32, 32, 1), jnp.float32)}
    peaks = {}
    for dtype in {setups[m][2] for m in args.models.split(",")}:
        peaks[jnp.dtype(dtype).name] = matmul_peak_tflops(dtype)
        print(f"measured {jnp.dtype(dtype).name} matmul peak: {peaks[jnp.dtype(dtype).name]:.1f} TFLOP/s per device")
    print("\n| model (global batch, dtype) | mode | images/s | per device | compile s | GFLOP/step/device "
          "| TFLOP/s/device | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        per_device, shape, dtype = setups[name]
        for mode in args.modes.split(","):
            run, batch, flops, compile_s = step_candidate(name, per_device, shape, dtype, mode)
            s = side_by_side({mode: run}, rounds=args.rounds, min_time=1.0)[mode]
            rate, tflops = batch / median(s), flops / median(s) / 1e12
            peak = peaks[jnp.dtype(dtype).name]
            print(f"| {name} ({batch}, {jnp.dtype(dtype).name}) | {mode} | {rate:,.0f} {spread(s)} | "
                  f"{rate / len(devices):,.0f} | {compile_s:.1f} | {flops / 1e9:,.1f} | {tflops:.1f} | "
                  f"{tflops / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
