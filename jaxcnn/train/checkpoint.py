"""Checkpoints with orbax: atomic, kept N deep, refused loudly when they do not fit the run.

A checkpoint is the whole ``TrainState`` plus a small JSON record of what produced it
(model, dataset, parameter shapes). orbax writes into a temporary directory and
renames it when complete, so a run killed mid-save leaves the previous checkpoint
as the latest. Restoring one that is corrupt, or that another model or dataset
wrote, raises :class:`CheckpointError` naming it: never a silent fresh start.
"""

from __future__ import annotations

import os

import flax
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    pass


class Checkpoints:
    def __init__(self, directory: str, *, keep: int, meta: dict):
        self.directory = os.path.abspath(directory)
        self.meta = meta
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state) -> None:
        """Save ``state`` as step ``step`` (no-op if that step is already saved); waits until written."""
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave(self.meta)), force=True)
        self._manager.wait_until_finished()

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest), laid out like ``template``.

        ``template`` may hold arrays or ``jax.ShapeDtypeStruct``s (a jitted initialiser's
        ``eval_shape()``: nothing is computed or compiled to restore).
        """
        step = self.latest_step() if step is None else step
        path = self.path(step)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            flax.serialization.to_state_dict(template))
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - any failure to read is the same problem for the user
            raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}). It may be "
                                  "corrupt; move it away to resume from an earlier one, or use a new workdir.") from e
        for key in ("model", "dataset", "param_shapes"):
            if meta.get(key) != self.meta.get(key):
                raise CheckpointError(
                    f"checkpoint {path} was written by another run: its {key} is {_short(meta.get(key))}, this "
                    f"run's is {_short(self.meta.get(key))}. Use a new workdir, or the config that wrote it.")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path} cannot be restored into this run's state "
                                  f"({type(e).__name__}: {e}). It may be corrupt or from an incompatible "
                                  "version; move it away or use a new workdir.") from e
        return flax.serialization.from_state_dict(template, restored)

    def read_state(self, step: int) -> dict:
        """The state saved at ``step`` as a plain nested dict of arrays (no template needed)."""
        return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def close(self):
        self._manager.close()


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
