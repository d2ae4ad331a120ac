"""Input pipeline throughput of each feeding mode, and whether it keeps up with the default experiment.

    python benchmarks/input_pipeline.py [--rounds 5]

1. Examples/s of ``Pipeline.train_batches`` alone (preprocessing and augmentation
   included, blocked on the result) for digits (resized to 32x32, the default
   experiment's setting), shapes, and tfds-mocked CIFAR-10, device-resident and
   streamed.
2. The default experiment's train step (LeNet-5, batch 64) fed by the real device
   pipeline against the same step fed one fixed synthetic batch: the pipeline's cost
   in the training loop, as a step-rate ratio (target >= 0.95).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine, median, side_by_side, spread  # noqa: E402

from jaxcnn import models, runtime  # noqa: E402
from jaxcnn.data import DataConfig, Pipeline  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, train_step  # noqa: E402

CASES = [  # (dataset, options, feeding modes)
    ("digits", dict(image_size=32, crop_padding=2), ("device", "stream")),
    ("shapes", dict(crop_padding=2), ("device", "stream")),
    ("cifar10", dict(crop_padding=4, flip=True), ("device", "stream")),
]


def pipeline_rates(data_dir, rounds):
    rows = []
    for name, options, modes in CASES:
        mock = contextlib.nullcontext() if name != "cifar10" else __import__(
            "tensorflow_datasets").testing.mock_data(num_examples=5000)
        with mock:
            candidates = {}
            for mode in modes:
                p = Pipeline(DataConfig(name=name, batch_size=128, data_dir=data_dir, feeding=mode, **options), seed=0)
                batches = p.train_batches()
                candidates[mode] = lambda b=batches: next(b)["image"]
            s = side_by_side(candidates, rounds=rounds, min_time=0.5)
        rows.append((name + (" (tfds mock)" if name == "cifar10" else ""), {m: 128 / median(t) for m, t in s.items()},
                     {m: spread(t) for m, t in s.items()}))
    return rows


def step_with_and_without_pipeline(data_dir, rounds):
    p = Pipeline(DataConfig(name="digits", batch_size=64, data_dir=data_dir, image_size=32, crop_padding=2), seed=0)
    model = models.create("lenet5", num_classes=10)
    tx = optax.adam(1e-3)
    step = runtime.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                         schedule=optax.constant_schedule(1e-3), cfg=StepConfig()), donate_argnums=0)
    box = {"state": create_train_state(model, tx, (32, 32, 1), seed=0, ema=False)}
    batches = p.train_batches()
    fixed = p.batch_at(0)

    def real():
        box["state"], m = step(box["state"], next(batches))
        return m["objective"]

    def synthetic():
        box["state"], m = step(box["state"], fixed)
        return m["objective"]

    s = side_by_side({"pipeline": real, "synthetic": synthetic}, rounds=rounds, min_time=0.5)
    return {k: 64 / median(v) for k, v in s.items()}, {k: spread(v) for k, v in s.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: a temporary one)")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="jaxcnn-bench-")
    print(f"`python benchmarks/input_pipeline.py --rounds {args.rounds}` on {machine()}\n")
    print("| dataset | device-resident images/s | streamed (tf.data) images/s |")
    print("|---|---|---|")
    for name, rates, spreads in pipeline_rates(data_dir, args.rounds):
        print(f"| {name} | {rates['device']:,.0f} {spreads['device']} | {rates['stream']:,.0f} {spreads['stream']} |",
              flush=True)
    rates, spreads = step_with_and_without_pipeline(data_dir, args.rounds)
    print("\n| default experiment step (LeNet-5, batch 64) | images/s |")
    print("|---|---|")
    for k in ("synthetic", "pipeline"):
        print(f"| fed {k} batches | {rates[k]:,.0f} {spreads[k]} |")
    print(f"| ratio pipeline / synthetic | {rates['pipeline'] / rates['synthetic']:.3f} |")


if __name__ == "__main__":
    main()
