"""Structural transforms a checkpoint records, so that loading rebuilds skeleton -> transforms -> weights.

The model (:mod:`server.model`) knows only itself; a compressed student is a plain model with some
layers swapped (today: :class:`~server.compress.grouped.GroupedLinear` blocks) or with pruned
shapes (those live in ``GRConfig.layer_shapes``, since they are the architecture). Saving a
checkpoint calls :func:`describe` on the model; loading calls :func:`apply_transforms` on a fresh
skeleton before the weights are read. Quantization is not a checkpoint transform: compression
saves fp32 weights plus a recipe, and each exporter quantizes with its backend's own tool.

>>> import torch.nn as nn
>>> from server.compress.grouped import replace_linear_
>>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
>>> _ = replace_linear_(m, "2", groups=2, shuffle=True)
>>> t = describe(m); t
[{'kind': 'grouped', 'module': '2', 'groups': 2, 'shuffle': True}]
>>> fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
>>> type(apply_transforms(fresh, t)[2]).__name__
'GroupedLinear'
"""

from __future__ import annotations

import torch.nn as nn

from edge_gr.errors import FormatError, InputError

from ._util import set_module
from .grouped import GroupedLinear, from_linear

__all__ = ["describe", "apply_transforms", "TRANSFORM_KINDS"]

TRANSFORM_KINDS = ("grouped",)


def describe(model: nn.Module) -> list[dict]:
    """The transforms that turn a fresh skeleton of ``model``'s config into ``model`` (JSON-able, in module order)."""
    from .quantize import Fp16Embedding, Fp16Linear, QuantEmbedding, QuantLinear

    out: list[dict] = []
    for name, m in model.named_modules():
        if isinstance(m, GroupedLinear):
            out.append({"kind": "grouped", "module": name, "groups": int(m.groups), "shuffle": bool(m.shuffle)})
        elif isinstance(m, (QuantLinear, QuantEmbedding, Fp16Linear, Fp16Embedding)):
            raise InputError(f"{name} is a reference fake-quant layer: such models are not saved as checkpoints",
                             hint="save the fp32 model and pass the quantization recipe to the exporter "
                                  "(edge-gr compress writes recipe.json; edge-gr export/build quantize per backend)")
    return out


def apply_transforms(model: nn.Module, transforms: list[dict]) -> nn.Module:
    """Apply recorded ``transforms`` to a fresh skeleton, in place (the weights are loaded afterwards)."""
    modules = dict(model.named_modules())
    for t in transforms or []:
        kind = t.get("kind") if isinstance(t, dict) else None
        if kind != "grouped":
            raise FormatError(f"unknown checkpoint transform {t!r}", hint=f"known kinds: {', '.join(TRANSFORM_KINDS)}; "
                              "the checkpoint was written by a newer edge-gr, upgrade it")
        lin = modules.get(t["module"])
        if not isinstance(lin, nn.Linear):
            raise FormatError(f"transform {t!r}: no Linear layer {t['module']!r} in the model", hint="the checkpoint does not match its config")
        set_module(model, t["module"], from_linear(lin, int(t["groups"]), shuffle=bool(t.get("shuffle", False))))
    return model
