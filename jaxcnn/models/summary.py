"""Layer-by-layer summary of a model: output shapes, parameters and FLOPs, from shapes alone.

Nothing is compiled or computed: the model is traced once under ``jax.eval_shape``
while ``flax.linen.intercept_methods`` records what every innermost layer returns.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.ops import autotune


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One innermost layer: its path in the parameter tree, class, per-example output shape,
    parameter count, and FLOPs per example (2 per multiply-add of Conv and Dense layers)."""

    path: str
    kind: str
    output_shape: tuple
    params: int
    flops: int


def _subtree(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return {}
        tree = tree[key]
    return tree


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _flops(kind: str, params, output_shape) -> int:
    kernel = params.get("kernel") if isinstance(params, dict) else None
    if kernel is None or kind not in ("Conv", "Dense"):
        return 0
    # Conv kernel (KH, KW, C/groups, O): each output pixel does KH*KW*C/groups MACs per channel.
    # Dense kernel (in, out): in MACs per output unit.
    per_output = math.prod(kernel.shape[:-1])
    return 2 * per_output * math.prod(output_shape)


def layer_table(model: nn.Module, input_shape, *, dtype=jnp.float32) -> tuple[list[LayerRow], dict]:
    """Rows for the innermost layers of ``model`` on one example of ``input_shape``.

    ``input_shape`` is ``(H, W, C)`` or ``(N, H, W, C)`` (the batch size is ignored).
    Returns the rows in execution order and the variables' shapes.
    """
    shape = tuple(input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"summary: input_shape must be (H, W, C) or (N, H, W, C), got {tuple(input_shape)}")
    calls: list[tuple[tuple, str, Any]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            calls.append((tuple(context.module.path), type(context.module).__name__,
                          jax.tree_util.tree_map(lambda a: tuple(a.shape), out)))
        return out

    def init():
        key = jax.random.key(0)
        return model.init({"params": key, "dropout": key}, jnp.zeros((1, *shape), dtype), train=False)

    with nn.intercept_methods(record), autotune.measuring_paused():
        variables = jax.eval_shape(init)
    params = variables.get("params", {})
    paths = [path for path, _, _ in calls]
    rows = []
    for path, kind, out in calls:
        is_leaf = path and not any(len(p) > len(path) and p[: len(path)] == path for p in paths)
        if not is_leaf:
            continue
        out_shape = out[1:] if isinstance(out, tuple) and all(isinstance(v, int) for v in out) else out
        own = _subtree(params, path)
        rows.append(LayerRow("/".join(path), kind, out_shape, _count(own), _flops(kind, own, out_shape)))
    return rows, variables


def _shape_str(shape) -> str:
    if isinstance(shape, tuple) and all(isinstance(v, int) for v in shape):
        return "x".join(map(str, shape))
    return str(shape)


def summary(model_or_name, input_shape, **kwargs) -> str:
    """A table with one row per layer (output shape, parameters, FLOPs) and totals last.

    ``model_or_name`` is a module or a name for :func:`jaxcnn.models.create`, to which
    ``kwargs`` go (``num_classes`` defaults to 10 there).
    """
    if isinstance(model_or_name, str):
        from jaxcnn.models import create

        kwargs.setdefault("num_classes", 10)
        model = create(model_or_name, **kwargs)
        title = model_or_name
    else:
        model, title = model_or_name, type(model_or_name).__name__
    rows, variables = layer_table(model, input_shape, dtype=jnp.float32)
    total = _count(variables.get("params", {}))
    state = _count({k: v for k, v in variables.items() if k != "params"})
    flops = sum(r.flops for r in rows)
    w_path = max([len("layer"), *(len(r.path) for r in rows)])
    w_kind = max([len("type"), *(len(r.kind) for r in rows)])
    w_shape = max([len("output"), *(len(_shape_str(r.output_shape)) for r in rows)])
    header = f"{'layer':<{w_path}}  {'type':<{w_kind}}  {'output':<{w_shape}}  {'params':>12}  {'FLOPs':>15}"
    lines = [f"{title} on input {_shape_str(tuple(input_shape)[-3:])}", header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.path:<{w_path}}  {r.kind:<{w_kind}}  {_shape_str(r.output_shape):<{w_shape}}  "
                     f"{r.params:>12,}  {r.flops:>15,}")
    lines.append("-" * len(header))
    lines.append(f"total params: {total:,}   non-trainable state: {state:,}   FLOPs per example: {flops:,}")
    return "\n".join(lines)
