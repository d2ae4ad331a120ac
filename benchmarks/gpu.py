"""Accelerator training throughput: ResNet-50 bf16 (the MLPerf bar), LeNet-5 and ResNet-20, jit vs shard_map.

    python benchmarks/gpu.py [--rounds 5] [--resnet50_batch 256] [--image_size 224] [--pytorch] [--profile TOP]
                             [--matmul_size 8192]

Needs jaxcnn's dependencies other than TensorFlow (jax, flax, optax, ml_collections; no
PyTorch), so it runs on an accelerator machine without TensorFlow. Where that machine
lacks ml_collections and cannot reach an index, take its wheel along: here
``pip download --no-deps -d .device_wheels ml-collections`` (untracked, so it travels
with the working tree), there ``pip install --no-deps --no-index .device_wheels/*.whl``
before the run (checked with TensorFlow, PyTorch, scikit-learn and matplotlib
unimportable: ``--models lenet5,resnet20`` runs on the CPU; ``tests/test_benchmarks.py``
keeps checking LeNet-5's run that way). Every model trains
with jaxcnn's own ``train_step`` (SGD with Nesterov momentum, cross-entropy) on a
synthetic batch resident on the devices, with the state donated, in each parallel mode
over all local devices: ``jit`` (sharded batch, compiler-inserted all-reduce) and
``shard_map`` (the explicit per-device program). ResNet-50 runs in bfloat16 (float32
parameters) at 224x224; LeNet-5 (32x32x1) and ResNet-20 (32x32x3) in float32 at batch
128 per device. The MLPerf reference point is about 7,000 images/s per H100 for
ResNet-50 training.

Printed per model and mode: images/s (median over rounds, ± half the interquartile
range), compile time, the model FLOPs per image of a training step (3 x the forward
convolution and dense FLOPs from :func:`jaxcnn.models.layer_table`; XLA's GPU cost
analysis leaves out the cuDNN convolutions), the achieved TFLOP/s per device, and model
FLOPs utilisation = achieved / the peak measured on the same device for a large matmul
in the model's compute dtype. ``--profile TOP`` also traces 5 steps of each and prints
where the device time goes: kernel time by kind and the TOP costliest kernels.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from jax.profiler import ProfileData

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import block, machine, matmul_peak_tflops, median, side_by_side, spread, train_flops_per_image  # noqa: E402

from jaxcnn import models, runtime  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, parallel, train_step  # noqa: E402


def num_classes(name: str) -> int:
    """ImageNet's 1000 classes for ResNet-50, CIFAR/MNIST's 10 for the small models."""
    return 1000 if name == "resnet50" else 10


def step_candidate(name, per_device_batch, image_shape, dtype, mode, conv_backend="xla"):
    """A zero-argument callable running one jaxcnn train step, the global batch, and compile seconds."""
    mesh = parallel.make_mesh()
    batch = per_device_batch * jax.device_count()
    model = models.create(name, num_classes=num_classes(name), dtype=dtype,
                          conv_backend=conv_backend)
    if mode == "shard_map" and hasattr(model, "bn_axis_name"):
        model = model.clone(bn_axis_name=parallel.AXIS)  # BatchNorm over the global batch
    schedule = optax.constant_schedule(0.1)
    tx = optax.sgd(schedule, momentum=0.9, nesterov=True)
    cfg = StepConfig(axis_name=parallel.AXIS if mode == "shard_map" else None)
    step = functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule, cfg=cfg)
    train, _ = parallel.compile_steps(mode, mesh, step, lambda state, batch: {})
    state = runtime.jit_once(functools.partial(create_train_state, model, tx, image_shape, seed=0, ema=False),
                             out_shardings=parallel.replicated(mesh))()
    data = jax.device_put({"image": jax.random.normal(jax.random.key(1), (batch, *image_shape)),
                           "label": jax.random.randint(jax.random.key(2), (batch,), 0, 10)},
                          parallel.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = train.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def run():
        box["state"], metrics = compiled(box["state"], data)
        return metrics["objective"]

    return run, batch, compile_s


def kernel_kind(name: str) -> str:
    """A coarse kind for a GPU kernel's name: cuDNN/CUTLASS convolution and matmul kernels,
    XLA's reductions, its elementwise (loop) fusions, and copies/transposes."""
    low = name.lower()
    if any(k in low for k in ("xmma", "cudnn", "conv", "implicit", "wgrad", "dgrad", "fprop", "cutlass", "gemm",
                              "nhwc", "sm90")):
        return "conv/matmul"
    if "reduce" in low or "reduction" in low:
        return "reduction fusion"
    if "transpose" in low or "copy" in low or "memcpy" in low or "memset" in low:
        return "copy/transpose"
    return "elementwise fusion"


def profile(run, steps: int, top: int) -> str:
    """Trace ``steps`` calls of ``run`` and summarise the device's kernels: time per step by
    kind, the busy fraction of the traced wall time, and the ``top`` costliest kernel names."""
    block(run())
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            start = time.perf_counter_ns()
            for _ in range(steps):
                out = run()
            block(out)
            wall_ns = time.perf_counter_ns() - start
        data = ProfileData.from_file(str(next(Path(log_dir).rglob("*.xplane.pb"))))
    by_name: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if "stream" not in line.name.lower():
                continue
            for event in line.events:
                by_name[event.name] += event.duration_ns
                counts[event.name] += 1
    if not by_name:
        return "  (no device kernels in the trace)"
    total = sum(by_name.values())
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, ns in by_name.items():
        by_kind[kernel_kind(name)] += ns
    lines = [f"  kernel time {total / steps / 1e6:.2f} ms/step = {total / wall_ns:.0%} of wall time, "
             f"{sum(counts.values()) // steps} kernels/step"]
    lines += [f"  {kind:<20} {ns / steps / 1e6:8.2f} ms/step {ns / total:6.1%}"
              for kind, ns in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    for name, ns in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {ns / steps / 1e6:7.3f} ms x{counts[name] // steps:<3} {kernel_kind(name):<18} {name[:110]}")
    return "\n".join(lines)


class _CudaWork:
    """What a PyTorch step returns to the timer: waiting on it waits for the device's queue."""

    def block_until_ready(self):
        import torch

        torch.cuda.synchronize()
        return self


def torch_candidate(name, batch, image_shape, dtype):
    """PyTorch eager on the same device, as a GPU user runs it: the same architecture
    (benchmarks/vs_pytorch.py's definitions), channels-last, bfloat16 autocast where jaxcnn
    computes in bfloat16, TF32 convolutions and matmuls where it computes in float32 (XLA's
    default GPU precision), SGD with Nesterov momentum."""
    import torch
    from vs_pytorch import torch_models

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    model = torch_models()[name]()
    classes = num_classes(name)
    if classes != 10:  # vs_pytorch's models end in 10 classes
        model.fc = torch.nn.Linear(2048, classes)
    model = model.cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(batch, image_shape[2], *image_shape[:2], device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()
    use_bf16 = jnp.dtype(dtype) == jnp.bfloat16

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return _CudaWork()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--resnet50_batch", type=int, default=256, help="per device")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--models", default="resnet50,resnet20,lenet5")
    parser.add_argument("--modes", default="jit,shard_map")
    parser.add_argument("--pytorch", action="store_true",
                        help="also time PyTorch eager on the first device, in the same rounds")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP",
                        help="also trace 5 steps of each jaxcnn mode and print the TOP costliest kernels")
    parser.add_argument("--matmul_size", type=int, default=8192,
                        help="side of the square matmul whose rate is the MFU's peak")
    args = parser.parse_args()
    if args.pytorch:  # leave PyTorch room on the device: JAX allocates what it needs, not 75% upfront
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    devices = jax.devices()
    print(f"`python benchmarks/gpu.py {' '.join(sys.argv[1:])}` on {machine()}, "
          f"{len(devices)} x {devices[0].device_kind}\n")
    setups = {"resnet50": (args.resnet50_batch, (args.image_size, args.image_size, 3), jnp.bfloat16),
              "resnet20": (128, (32, 32, 3), jnp.float32), "lenet5": (128, (32, 32, 1), jnp.float32)}
    peaks = {}
    for dtype in {setups[m][2] for m in args.models.split(",")}:
        peaks[jnp.dtype(dtype).name] = matmul_peak_tflops(dtype, size=args.matmul_size)
        print(f"measured {jnp.dtype(dtype).name} matmul peak: {peaks[jnp.dtype(dtype).name]:.1f} TFLOP/s per device")
    print()
    table = ["| model (global batch, dtype) | mode | images/s | per device | compile s | GFLOP/image "
             "| TFLOP/s/device | MFU |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        per_device, shape, dtype = setups[name]
        flops = train_flops_per_image(models.create(name, num_classes=num_classes(name)), shape)
        candidates, batches, compile_s = {}, {}, {}
        for mode in args.modes.split(","):
            candidates[mode], batches[mode], compile_s[mode] = step_candidate(name, per_device, shape, dtype, mode)
            if args.profile:
                print(f"{name} {mode}:\n{profile(candidates[mode], 5, args.profile)}", flush=True)
        if args.pytorch:
            candidates["PyTorch eager"] = torch_candidate(name, per_device, shape, dtype)
            batches["PyTorch eager"], compile_s["PyTorch eager"] = per_device, None
        samples = side_by_side(candidates, rounds=args.rounds, min_time=1.0)
        for mode, s in samples.items():
            rate = batches[mode] / median(s)
            used = len(devices) if mode in args.modes.split(",") else 1
            tflops = rate * flops / used / 1e12
            seconds = "-" if compile_s[mode] is None else f"{compile_s[mode]:.1f}"
            table.append(f"| {name} ({batches[mode]}, {jnp.dtype(dtype).name}) | {mode} | {rate:,.0f} {spread(s)} | "
                         f"{rate / used:,.0f} | {seconds} | {flops / 1e9:.3g} | {tflops:.1f} | "
                         f"{tflops / peaks[jnp.dtype(dtype).name]:.0%} |")
            print(table[-1], flush=True)
    print("\n" + "\n".join(table))


if __name__ == "__main__":
    main()
