"""The model zoo: ``create(name, num_classes=...)``, ``names()``, ``summary(...)``.

Every model maps an NHWC float batch to float32 logits ``(N, num_classes)``:
``model.apply(variables, x, train=False)``; ``train=True`` needs a ``"dropout"``
rng where there is dropout and returns updated ``"batch_stats"`` where there is
BatchNorm (``mutable=["batch_stats"]``). Every model takes ``conv_backend``
(``"xla"``, ``"im2col"`` or ``"auto"``) and ``dtype`` (the compute dtype; parameters stay
float32).
"""

from __future__ import annotations

import difflib
from typing import Any

import flax.linen as nn

from jaxcnn.layers import check_backend
from jaxcnn.models import alexnet, densenet, googlenet, lenet, nin, resnet, textbook, vgg
from jaxcnn.models.common import check_num_classes
from jaxcnn.models.summary import LayerRow, layer_table, summary

_REGISTRY: dict[str, Any] = {}
_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {}
for _family in (lenet, alexnet, vgg, nin, googlenet, resnet, densenet, textbook):
    _REGISTRY.update(_family.MODELS)
    _INPUT_SHAPES.update(_family.INPUT_SHAPES)


def names() -> list[str]:
    """Every model name ``create`` accepts, in zoo order (LeNet first)."""
    return list(_REGISTRY)


def input_shape(name: str) -> tuple[int, int, int]:
    """The ``(H, W, C)`` input a model is defined on (its parameter counts refer to it)."""
    _check_name(name)
    return _INPUT_SHAPES[name]


def _check_name(name) -> None:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}")


def create(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """The model called ``name`` with ``num_classes`` outputs.

    ``kwargs`` set the model's other fields: ``conv_backend``, ``dtype``, and
    family options such as ``classic`` (lenet5), ``lrn`` (alexnet/zfnet),
    ``head`` (vgg), ``aux_logits`` (googlenet), ``bn_axis_name``.
    """
    _check_name(name)
    check_num_classes(num_classes, name)
    if "conv_backend" in kwargs:
        check_backend(kwargs["conv_backend"], "conv_backend")
    try:
        return _REGISTRY[name](num_classes=num_classes, name=name, **kwargs)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None


__all__ = ["LayerRow", "create", "input_shape", "layer_table", "names", "summary"]
