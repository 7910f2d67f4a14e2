"""Grouped (block-diagonal) linear layers: ``groups`` times fewer weights than a dense layer.

A dense ``Linear(768, 768)`` has 768*768 + 768 = 590,592 parameters; with ``groups=8`` each of
the 8 blocks maps 96 inputs to 96 outputs: 8 * 96*96 = 73,728 weights + 768 bias = 74,496
(the chapter's "590K -> 74K"). Blocks never mix channels of different groups, so a channel
shuffle (ShuffleNet) interleaves the groups' outputs and the next grouped layer sees all of them.

>>> dense, grouped = nn.Linear(768, 768), GroupedLinear(768, 768, groups=8)
>>> sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in grouped.parameters())
(590592, 74496)
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn as nn

from edge_gr.errors import InputError

from ._util import set_module

__all__ = ["GroupedLinear", "channel_shuffle", "from_linear", "replace_linear_"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the last dim's ``groups`` blocks: ``[a0 a1 b0 b1] -> [a0 b0 a1 b1]`` for 2 groups.

    >>> channel_shuffle(torch.arange(6), 2).tolist()
    [0, 3, 1, 4, 2, 5]
    """
    *lead, c = x.shape
    if c % groups:
        raise InputError(f"channel_shuffle: {c} channels are not divisible by {groups} groups")
    return x.reshape(*lead, groups, c // groups).transpose(-1, -2).reshape(*lead, c)


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer: input split into ``groups`` chunks, each mapped by its own
    ``(out/groups, in/groups)`` block (one batched ``einsum``), then optionally channel-shuffled;
    the bias is added last (per output channel, after the shuffle).

    ``weight`` has shape ``(groups, out/groups, in/groups)``.

    >>> g = GroupedLinear(8, 4, groups=2)
    >>> g(torch.ones(3, 5, 8)).shape, tuple(g.weight.shape)
    (torch.Size([3, 5, 4]), (2, 2, 4))
    """

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True, shuffle: bool = True):
        super().__init__()
        if not isinstance(groups, int) or groups < 1:
            raise InputError(f"groups must be a positive int, got {groups!r}")
        if in_features % groups or out_features % groups:
            raise InputError(f"GroupedLinear({in_features}, {out_features}): both sizes must be divisible by groups={groups}",
                             hint=f"use a groups value dividing both (e.g. {math.gcd(in_features, out_features)} or one of its divisors)")
        self.in_features, self.out_features, self.groups, self.shuffle = in_features, out_features, groups, shuffle
        self.weight = nn.Parameter(torch.empty(groups, out_features // groups, in_features // groups))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init per block: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in/groups."""
        bound = 1 / math.sqrt(self.in_features // self.groups)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, c = x.shape
        xg = x.reshape(*lead, self.groups, c // self.groups)
        y = torch.einsum("...gi,goi->...go", xg, self.weight).reshape(*lead, self.out_features)
        if self.shuffle and self.groups > 1:
            y = channel_shuffle(y, self.groups)
        return y if self.bias is None else y + self.bias

    def dense_weight(self) -> torch.Tensor:
        """The equivalent dense ``(out, in)`` weight (block-diagonal; rows permuted when shuffled)."""
        w = torch.block_diag(*self.weight)
        if self.shuffle and self.groups > 1:
            w = channel_shuffle(w.T, self.groups).T
        return w

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}, "
                f"bias={self.bias is not None}, shuffle={self.shuffle}")


def from_linear(linear: nn.Linear, groups: int, shuffle: bool = False) -> GroupedLinear:
    """A :class:`GroupedLinear` whose blocks are the diagonal blocks of ``linear``'s weight (and the same bias).

    With ``shuffle=False`` (the default here) output channels keep their meaning, so it is a drop-in
    block-diagonal approximation - exact when the dense weight is block-diagonal. With
    ``shuffle=True`` outputs are permuted: only for layers (re-)trained afterwards.

    >>> dense = nn.Linear(4, 4)
    >>> with torch.no_grad():
    ...     _ = dense.weight.copy_(torch.block_diag(torch.ones(2, 2), 2 * torch.ones(2, 2)))
    ...     _ = dense.bias.zero_()
    >>> from_linear(dense, 2)(torch.ones(1, 4)).tolist()
    [[2.0, 2.0, 4.0, 4.0]]
    """
    if not isinstance(linear, nn.Linear):
        raise InputError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
    g = GroupedLinear(linear.in_features, linear.out_features, groups, bias=linear.bias is not None, shuffle=shuffle)
    o, i = linear.out_features // groups, linear.in_features // groups
    w = linear.weight.detach()
    with torch.no_grad():
        g.weight.copy_(torch.stack([w[k * o:(k + 1) * o, k * i:(k + 1) * i] for k in range(groups)]))
        if linear.bias is not None:
            g.bias.copy_(linear.bias.detach())
    return g.to(device=w.device, dtype=w.dtype)


def replace_linear_(model: nn.Module, pattern: str, groups: int, shuffle: bool = False) -> list[str]:
    """Replace every ``nn.Linear`` whose name matches ``pattern`` (``fnmatch``) by :func:`from_linear`, in place.

    Returns the replaced names. Checks every match before replacing any (an error leaves the model as it was).

    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> replace_linear_(m, "*", groups=2), type(m[2]).__name__
    (['0', '2'], 'GroupedLinear')
    """
    hits = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.Linear) and fnmatch.fnmatchcase(n, pattern)]
    new = []
    for name, lin in hits:
        try:
            new.append((name, from_linear(lin, groups, shuffle)))
        except InputError as e:
            raise InputError(f"{name}: {e.message}", hint=e.hint) from None
    for name, g in new:
        set_module(model, name, g)
    return [n for n, _ in new]
