"""Helpers shared by the compression modules: swapping a submodule by its dotted name.

>>> import torch.nn as nn
>>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
>>> set_module(m, "1", nn.Tanh())
>>> type(m[1]).__name__
'Tanh'
"""

from __future__ import annotations

import torch.nn as nn

from edge_gr.errors import InputError

__all__ = ["set_module"]


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted, as in ``named_modules()``) of ``root`` in place."""
    if not name:
        raise InputError("cannot replace the root module in place", hint="wrap it, e.g. nn.Sequential(layer)")
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)
