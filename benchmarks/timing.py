"""Side-by-side timing: candidates measured in alternating rounds, reported as medians."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax

from jaxcnn import models, runtime

# The CPU benchmarks' models, as in the README's table: (batch, image shape).
CPU_MODELS = {"lenet5": (128, (32, 32, 1)), "resnet20": (128, (32, 32, 3)), "resnet50": (16, (64, 64, 3)),
              "densenet_bc_100_12": (64, (32, 32, 3)), "googlenet": (16, (112, 112, 3)),
              "vgg16_bn": (32, (32, 32, 3)), "alexnet": (16, (227, 227, 3)), "nin": (16, (224, 224, 3))}
CPU_MODEL_OPTIONS = {"vgg16_bn": {"head": "cifar"}}  # the CIFAR-10 VGG of experiments/vgg16_cifar10.py


def block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def side_by_side(candidates: dict[str, Callable[[], object]], *, rounds: int = 7, min_time: float = 0.2
                 ) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument callable, one sample per round.

    Every candidate is warmed up (compiled) first; then each round runs every
    candidate in turn, in a rotating order, for about ``min_time`` seconds, so
    drift in machine load hits all candidates alike.
    """
    calls = {}
    for name, fn in candidates.items():
        block(fn())  # compile
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < min_time / 4 or n < 2:
            block(fn())
            n += 1
        calls[name] = max(1, int(n * min_time / (time.perf_counter() - start) / 4 * 4))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, n = candidates[name], calls[name]
            start = time.perf_counter()
            for _ in range(n):
                out = fn()
            block(out)
            samples[name].append((time.perf_counter() - start) / n)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def spread(samples: list[float]) -> str:
    """Interquartile range as a percentage of the median."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return f"±{(q[2] - q[0]) / 2 / statistics.median(samples) * 100:.0f}%"


def matmul_peak_tflops(dtype, *, size: int, rounds: int = 5) -> float:
    """Measured TFLOP/s of a ``size``-cubed matmul on the default device, compiled as jaxcnn's
    steps are (:func:`jaxcnn.runtime.jit`): the denominator of model FLOPs utilisation."""
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    f = runtime.jit(lambda a: a @ a)
    s = side_by_side({"mm": lambda: f(a)}, rounds=rounds, min_time=0.5)
    return 2 * size**3 / median(s["mm"]) / 1e12


def train_flops_per_image(model, image_shape) -> float:
    """Model FLOPs of one image's training step: the forward convolution and dense FLOPs of
    :func:`jaxcnn.models.layer_table` times 3 (forward, input gradient, weight gradient). The first
    layer's input gradient, which no step computes, is counted too, so the figure is a model's, not a
    count of the work done."""
    rows, _ = models.layer_table(model, image_shape)
    return 3.0 * sum(r.flops for r in rows)


def machine() -> str:
    cpu = runtime.cpu_model()
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, jax {jax.__version__} ({jax.default_backend()}), "
            f"{datetime.date.today().isoformat()}")
