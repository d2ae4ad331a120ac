"""Framework overhead: jaxcnn's train step against a minimal hand-written Flax/optax step, side by side.

    python benchmarks/train_step.py [--batch 128] [--rounds 7]

Both train the same Flax module with the same optimizer (SGD, momentum 0.9) on the same
synthetic batch held on the device, compiled alike (``jaxcnn.runtime.jit``, state donated);
jaxcnn's step adds its bookkeeping (metric sums, the non-finite guard, loss scale, schedule lookup).
Prints steady-state images/s (medians over rounds) and jaxcnn / hand-written.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine, median, side_by_side, spread  # noqa: E402

from jaxcnn import models, runtime  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, train_step  # noqa: E402

MODELS = {"lenet5": (32, 32, 1), "resnet20": (32, 32, 3)}


def hand_written(model, tx):
    """The smallest correct Flax/optax step: cross-entropy, BatchNorm statistics, one update."""

    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            variables = {"params": p, **({"batch_stats": batch_stats} if batch_stats else {})}
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        deltas, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, deltas), updates.get("batch_stats", {}), opt_state, loss

    return runtime.jit(step, donate_argnums=(0, 1, 2))


def candidates(name, batch):
    shape = MODELS[name]
    model = models.create(name, num_classes=10)
    tx = optax.sgd(0.01, momentum=0.9)
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    batch_dict = {"image": x, "label": y}

    ours_step = runtime.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                              schedule=optax.constant_schedule(0.01), cfg=StepConfig()),
                            donate_argnums=0)
    ours = {"state": create_train_state(model, tx, shape, seed=0, ema=False)}

    def run_ours():
        ours["state"], metrics = ours_step(ours["state"], batch_dict)
        return metrics["objective"]

    theirs_step = hand_written(model, tx)
    init = create_train_state(model, tx, shape, seed=0, ema=False)
    theirs = {"s": (init.params, init.batch_stats, init.opt_state)}

    def run_theirs():
        *theirs["s"], loss = theirs_step(*theirs["s"], x, y)
        return loss

    return {"jaxcnn": run_ours, "hand-written": run_theirs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"`python benchmarks/train_step.py --batch {args.batch} --rounds {args.rounds}` on {machine()}\n")
    print("| model | hand-written images/s | jaxcnn images/s | jaxcnn / hand-written |")
    print("|---|---|---|---|")
    for name in MODELS:
        s = side_by_side(candidates(name, args.batch), rounds=args.rounds, min_time=1.0)
        ours, theirs = s["jaxcnn"], s["hand-written"]
        print(f"| {name} | {args.batch / median(theirs):,.0f} {spread(theirs)} | {args.batch / median(ours):,.0f} "
              f"{spread(ours)} | {median(theirs) / median(ours):.3f} |", flush=True)


if __name__ == "__main__":
    main()
