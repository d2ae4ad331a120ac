"""Data parallelism: one device, jit over a mesh, or an explicit per-device program with shard_map.

* ``none``: one device, plain ``jaxcnn.runtime.jit`` (``jax.jit`` with jaxcnn's CPU options).
* ``jit``: a 1-D ``Mesh`` over every device (of every process) on the ``data`` axis; the
  batch is sharded on it, the state replicated, and XLA inserts the gradient all-reduce.
  BatchNorm statistics are means over the (global) batch axis, so they cover the whole batch.
* ``shard_map`` (``pmap`` is accepted as its name): the step is written per device;
  gradients and metrics are averaged with ``lax.pmean`` over ``data`` and BatchNorm
  synchronises its statistics over ``data`` (the model gets ``bn_axis_name="data"``).

All three give the result of one device up to float rounding (dropout masks differ in
``shard_map``, where each device draws its own).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcnn import runtime

AXIS = "data"


def resolve_mode(parallel: str) -> str:
    if parallel == "pmap":
        return "shard_map"
    if parallel == "auto":
        return "jit" if jax.device_count() > 1 else "none"
    return parallel


def make_mesh() -> Mesh:
    """Every device of every process on one ``data`` axis."""
    return Mesh(np.array(jax.devices()), (AXIS,))


def batch_sharding(mesh: Mesh | None):
    return None if mesh is None else NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh | None):
    return None if mesh is None else NamedSharding(mesh, P())


def one_step_in_flight(mesh: Mesh | None) -> bool:
    """Whether the loop must wait for each step before dispatching the next.

    XLA's CPU devices share one thread pool; with several steps queued, a device
    blocked in one step's gradient all-reduce can hold the threads its peer needs
    to reach that all-reduce, and both wait forever (seen with 2 devices on 2 cores).
    """
    return mesh is not None and mesh.devices.size > 1 and jax.default_backend() == "cpu"


def compile_steps(mode: str, mesh: Mesh | None, train_step, eval_step):
    """Jit ``train_step(state, batch)`` (state donated) and ``eval_step(state, batch)`` for ``mode``.

    For ``shard_map`` the steps must have been bound with ``axis_name=AXIS``. Compiled
    with :func:`jaxcnn.runtime.jit` (XLA's own convolutions on CPU).
    """
    if mode == "none":
        return runtime.jit(train_step, donate_argnums=0), runtime.jit(eval_step)
    rep, data = replicated(mesh), batch_sharding(mesh)
    if mode == "jit":
        train = runtime.jit(train_step, donate_argnums=0, in_shardings=(rep, data), out_shardings=(rep, rep))
        return train, runtime.jit(eval_step, in_shardings=(rep, data), out_shardings=rep)
    # check_vma=False: the classic pmap semantics. Each device differentiates its own replica of the
    # parameters and the step averages the gradients itself with lax.pmean (with vma checking on, JAX
    # would instead sum them implicitly when transposing the parameters' broadcast).
    per_device = functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(),
                                   check_vma=False)
    train = runtime.jit(per_device(train_step, out_specs=(P(), P())), donate_argnums=0)
    return train, runtime.jit(per_device(eval_step))


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run (``jax.distributed.initialize``); gloo collectives on CPU.

    With no arguments it relies on JAX's cluster detection (SLURM, Cloud TPU, ...).
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
