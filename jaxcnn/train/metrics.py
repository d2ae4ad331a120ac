"""Where metrics go: ``metrics.jsonl``, TensorBoard event files, and ``curves.png``. Process 0 writes."""

from __future__ import annotations

import json
import logging
import os
import time

import jax


class MetricWriter:
    """Appends ``{"step", "split", ...}`` records to ``WORKDIR/metrics.jsonl`` and TensorBoard scalars.

    Event files are written with the ``tensorboard`` package alone (no TensorFlow);
    without it only the JSON lines are written.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            try:
                from tensorboard.summary.writer.event_file_writer import EventFileWriter

                self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                logging.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}) + "\n")
        if self._tb is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
                                     for k, v in values.items()])
            self._tb.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))
            self._tb.flush()

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]


def plot_curves(records: list[dict], path: str) -> None:
    """Loss and accuracy (or the regression loss) against step, train and eval, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "accuracy") if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for split, style in (("train", "-"), ("eval", "o-")):
            points = [(r["step"], r[key]) for r in records if r["split"] == split and key in r]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
