"""``train_and_evaluate(config, workdir)``: the training loop, top to bottom.

Build the data pipeline, the model, the optimizer and the state; restore the latest
checkpoint in ``workdir`` if there is one; then step, log, evaluate and checkpoint
until ``total_steps``, or until SIGTERM / SIGINT, which save a checkpoint and stop.
A non-finite loss stops the run at once, naming the step; the last checkpoint written
before it is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxcnn import models, ops, runtime, viz
from jaxcnn.data import DataConfig, Pipeline
from jaxcnn.train import config as config_lib
from jaxcnn.train import losses, parallel
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.metrics import MetricWriter, plot_curves
from jaxcnn.train.optim import make_optimizer, make_schedule
from jaxcnn.train.state import create_train_state, param_count
from jaxcnn.train.steps import StepConfig, eval_step, train_step

log = logging.getLogger("jaxcnn")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
INITIAL_LOSS_SCALE = 2.0**15


class NonFiniteLossError(FloatingPointError):
    pass


def prepare_workdir(workdir: str) -> str:
    """Create ``workdir`` and check that it is writable, before any work is done."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"workdir {workdir!r} is not writable ({e.strerror}); pass --workdir with a "
                              "directory you can write to") from e
    return workdir


class _StopSignals:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handlers, no flag
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _build_model(config, num_outputs: int, mode: str):
    kwargs = dict(config.model.kwargs)
    model = models.create(config.model.name, num_classes=num_outputs, conv_backend=config.model.conv_backend,
                          dtype=DTYPES[config.dtype], **kwargs)
    if mode == "shard_map" and hasattr(model, "bn_axis_name"):
        model = model.clone(bn_axis_name=parallel.AXIS)  # BatchNorm statistics over the global batch
    return model


def _meta(config, state) -> dict:
    shapes = jax.tree_util.tree_map(lambda p: list(p.shape), state.params)
    return {"model": config.model.name, "dataset": config.dataset.name,
            "param_shapes": json.loads(json.dumps(shapes)), "config": json.loads(config.to_json())}


def _report_measuring(bar, before: tuple[int, float]) -> None:
    """Say what the first step's trace spent measuring ``conv_backend="auto"`` plans, if anything."""
    after = ops.autotune.measured()
    count, seconds = after[0] - before[0], after[1] - before[1]
    if count:
        cache = runtime.cache_dir()
        kept = f"kept in {cache} for later runs on this machine" if cache else "not kept (the cache is off)"
        bar.write(f"conv_backend=auto: measured {count} conv/pool shapes in {seconds:.1f} s; {kept}")


def _sum_metrics(batches) -> dict:
    total = None
    for sums in batches:
        total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    return jax.device_get(total)


def _check_finite(state, checkpoints: Checkpoints) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        last = checkpoints.latest_step()
        where = f"the last good checkpoint, step {last}, is in {checkpoints.directory}" if last else \
            "no checkpoint had been written yet"
        raise NonFiniteLossError(f"the loss became non-finite at step {bad}; training stopped ({where}). "
                                 "Lower the learning rate, clip gradients or check the data, then resume.")


PLANS_FILE = "conv_plans.json"  # conv_backend="auto": the formulation chosen per layer shape


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train ``config`` in ``workdir`` (resuming what is there) and return the final results.

    A config whose ``task`` is not "train" (kernel recovery, filters, the report) is run by
    :mod:`jaxcnn.tasks` instead.

    Writes ``results.json`` (``test_accuracy``, ``test_loss``, ``step``, ``wall_time_s``,
    ``train_images_per_sec``, ...), ``metrics.jsonl``, TensorBoard events, ``curves.png``
    and orbax checkpoints under ``workdir/checkpoints``.

    Called before JAX's CPU backend exists (as ``launch.py`` does), it makes the
    process's single-device CPU computations run inline
    (:func:`jaxcnn.runtime.dispatch_cpu_inline`). Compiled programs and measured
    convolution plans are kept in the machine's cache (:func:`jaxcnn.runtime.cache_dir`;
    ``JAXCNN_CACHE_DIR=`` turns it off), so a second run starts sooner.
    """
    if config.get("task", "train") != "train":
        from jaxcnn import tasks

        return tasks.run(config, workdir)
    runtime.dispatch_cpu_inline()  # only takes effect if JAX's backend does not exist yet
    runtime.enable_compilation_cache()
    start = time.time()
    config = config_lib.validate(config)
    workdir = prepare_workdir(workdir)
    if jax.default_backend() == "cpu":
        runtime.tune_cpu_malloc()
    plans_path = os.path.join(workdir, PLANS_FILE)
    if config.model.conv_backend == "auto" and os.path.exists(plans_path):
        with open(plans_path) as f:
            ops.autotune.set_plans(json.load(f))  # the first run's choices: a resumed run computes alike
    is_main = jax.process_index() == 0
    mode = parallel.resolve_mode(config.parallel)
    mesh = None if mode == "none" else parallel.make_mesh()

    data_config = DataConfig.from_dict({**config.dataset.to_dict(), "batch_size": config.batch_size})
    pipeline = Pipeline(data_config, seed=config.seed, sharding=parallel.batch_sharding(mesh))
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = config.total_steps or math.ceil(config.num_epochs * steps_per_epoch)
    eval_every = config.eval_every_steps or steps_per_epoch
    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
    regression = pipeline.info.is_regression
    if regression and config.loss.name == "cross_entropy":
        raise ValueError(f"config.loss.name='cross_entropy' needs class labels; {pipeline.info.name} is a "
                         "regression task (use 'mse')")

    model = _build_model(config, pipeline.num_classes or 1, mode)
    schedule = make_schedule(config.schedule, config.optimizer.learning_rate, total_steps, steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    fp16 = config.dtype == "float16"
    init = functools.partial(create_train_state, model, tx, pipeline.input_shape, seed=config.seed,
                             ema=config.optimizer.ema_decay > 0, loss_scale=INITIAL_LOSS_SCALE if fp16 else 1.0)
    init = runtime.jit_once(init, out_shardings=parallel.replicated(mesh))
    abstract_state = init.eval_shape()  # a resumed run restores into it: no initial state is compiled

    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                              meta=_meta(config, abstract_state))
    start_step = 0
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_state)
        start_step = int(jax.device_get(state.step))
        log.warning("resumed from step %d", start_step)
        print(f"resumed from step {start_step}", flush=True)
    else:
        state = init()

    l2 = config.optimizer.weight_decay if config.optimizer.weight_decay_mode == "l2" and \
        config.optimizer.name != "adamw" else 0.0
    step_cfg = StepConfig(loss=config.loss.name, label_smoothing=config.loss.label_smoothing,
                          aux_weight=config.loss.aux_weight, l2=l2, ema_decay=config.optimizer.ema_decay,
                          grad_accum_steps=config.optimizer.grad_accum_steps, dynamic_loss_scale=fp16,
                          axis_name=parallel.AXIS if mode == "shard_map" else None)
    train_fn, eval_fn = parallel.compile_steps(
        mode, mesh, functools.partial(train_step, apply_fn=model.apply, tx=tx, schedule=schedule, cfg=step_cfg),
        functools.partial(eval_step, apply_fn=model.apply, cfg=step_cfg, use_ema=config.optimizer.ema_decay > 0))
    wait_each_step = parallel.one_step_in_flight(mesh)

    if is_main:
        print(models.summary(model, pipeline.input_shape), flush=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    writer = MetricWriter(workdir)

    def evaluate(step: int) -> dict:
        steps = (eval_fn(state, batch) for batch in pipeline.eval_batches())
        if wait_each_step:
            steps = map(jax.block_until_ready, steps)
        result = losses.finalize(_sum_metrics(steps))
        writer.write(step, "eval", result)
        return result

    pending, eval_result, stopped_by = [], None, None
    window_start, paused, first_window, timed_steps, timed_seconds = time.time(), 0.0, True, 0, 0.0
    batches = pipeline.train_batches(start_step)
    bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not (is_main and config.progress_bar),
                    unit="step", dynamic_ncols=True)
    with _StopSignals() as signals, bar:
        measured_before = ops.autotune.measured()
        for step in range(start_step, total_steps):
            state, metrics = train_fn(state, next(batches))
            if step == start_step:
                runtime.release_free_memory()  # what measuring plans and compiling the step left behind
                if is_main:
                    _report_measuring(bar, measured_before)
            if wait_each_step:
                jax.block_until_ready(metrics)
            pending.append(metrics)
            done = step + 1
            stop = signals.received  # read once: a signal arriving later is handled after the next step
            eval_now = done % eval_every == 0 or done == total_steps
            save_now = done % checkpoint_every == 0 or done == total_steps or stop
            if done % config.log_every_steps == 0 or eval_now or save_now:
                sums = jax.device_get(pending)  # waits for the steps: the loop runs ahead of the device
                _check_finite(state, checkpoints)
                elapsed = time.time() - window_start - paused
                if not first_window:  # the first window after a (re)start includes compilation
                    timed_steps, timed_seconds = timed_steps + len(pending), timed_seconds + elapsed
                train = losses.finalize({k: sum(m[k] for m in sums) for k in sums[0]
                                         if k not in ("objective", "learning_rate")})
                train["objective"] = float(np.mean([m["objective"] for m in sums]))  # with aux and L2 terms
                train["learning_rate"] = float(sums[-1]["learning_rate"])
                train["images_per_sec"] = len(pending) * config.batch_size / max(elapsed, 1e-9)
                writer.write(done, "train", train)
                shown = ("loss", "accuracy", "images_per_sec")
                bar.set_postfix({k: f"{v:.4g}" for k, v in train.items() if k in shown}, refresh=False)
                bar.update(len(pending))
                pending, first_window, window_start, paused = [], False, time.time(), 0.0
            if eval_now:
                tick = time.time()
                first_eval = eval_result is None
                eval_result = evaluate(done)
                if first_eval:
                    runtime.release_free_memory()  # what compiling the evaluation step left behind
                bar.write(f"step {done}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in eval_result.items()))
                paused += time.time() - tick
            if save_now:
                tick = time.time()
                checkpoints.save(done, state)
                if config.model.conv_backend == "auto" and is_main:
                    runtime.write_json_atomically(plans_path, ops.autotune.plans())
                paused += time.time() - tick
            if stop:
                stopped_by = stop
                break
    checkpoints.close()

    final_step = int(jax.device_get(state.step))
    if stopped_by:
        print(f"stopped by {stopped_by} at step {final_step}; checkpoint saved, relaunch to resume", flush=True)
    if eval_result is None or stopped_by:
        eval_result = evaluate(final_step)
    results = {
        "test_loss": eval_result["loss"],
        **({"test_accuracy": eval_result["accuracy"]} if "accuracy" in eval_result else {}),
        **({"test_top5_accuracy": eval_result["top5_accuracy"]} if "top5_accuracy" in eval_result else {}),
        "step": final_step, "total_steps": total_steps, "epochs": final_step / steps_per_epoch,
        "wall_time_s": time.time() - start,
        "train_images_per_sec": timed_steps * config.batch_size / timed_seconds if timed_seconds else None,
        "model": config.model.name, "dataset": config.dataset.name, "parameters": param_count(state),
        "parallel": mode, "devices": jax.device_count(), "processes": jax.process_count(),
        "completed": final_step >= total_steps,
    }
    if regression:
        results["test_mse"] = results["test_loss"]
    if is_main:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        plot_curves(writer.records(), os.path.join(workdir, "curves.png"))
        if config.figures and not regression and jax.process_count() == 1:  # multi-process: viz.visualize_run
            params = state.ema_params if config.optimizer.ema_decay else state.params
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            viz.write_run_figures(model.clone(bn_axis_name=None) if hasattr(model, "bn_axis_name") else model,
                                  jax.device_get(variables), pipeline.eval_batches(), workdir, pipeline.num_classes,
                                  pipeline.info.class_names)
    return results
