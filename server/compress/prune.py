"""Structured pruning that physically shrinks the model: FFN hidden channels and attention heads.

* :func:`prune_` - in place: scores every FFN channel / attention head with the first-order
  Taylor importance ``sum |w * dL/dw|`` over its weights (accumulated over calibration batches,
  ``loss = model(*batch)``), drops the lowest ``amount`` fraction per pruning unit (rounded, at
  least one kept), optionally in ``steps`` rounds (importance re-scored between rounds, no
  fine-tuning), and records the new per-layer sizes in ``model.cfg.layer_shapes`` so
  ``GenerativeModel.save`` / ``load`` rebuild the pruned shapes.
* :func:`layer_sensitivity` - calibration-loss increase when each unit alone is pruned.

Units are named ``enc.{i}.attn``, ``enc.{i}.ffn``, ``dec.{i}.self_attn``, ``dec.{i}.cross_attn``,
``dec.{i}.ffn``; their block is ``enc.{i}`` / ``dec.{i}``. ``protect`` / ``per_layer`` patterns
(fnmatch) match a unit's name or its block's name.

>>> from server.model import GenerativeRetriever, GRConfig
>>> m = GenerativeRetriever(GRConfig(task="rec", levels=(4, 4), n_items=8, d_model=16, n_heads=4, max_len=4,
...                                  n_enc_layers=1, n_dec_layers=1), codes=torch.zeros(8, 2, dtype=torch.long))
>>> rep = prune_(m, PruneConfig(amount=0.5), [(torch.randint(1, 9, (2, 5)),)])
>>> m.enc[0].attn.nh, m.enc[0].ffn.net[0].out_features, m.cfg.layer_shapes["enc.0.attn"]
(2, 32, [2, 4])
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from edge_gr.errors import InputError

from ..model import FFN, Attention, GenerativeRetriever

__all__ = ["PruneConfig", "prune_", "layer_sensitivity", "prunable_units"]


@dataclass
class PruneConfig:
    """``amount``: fraction of channels / heads removed per unit; ``targets``: ``"ffn"`` and/or ``"heads"``;
    ``steps``: pruning rounds; ``protect``: patterns of units/blocks left alone; ``per_layer``:
    pattern -> amount overrides (first match wins).

    >>> PruneConfig(amount=0.3).targets
    ('ffn', 'heads')
    """

    amount: float
    targets: tuple[str, ...] = ("ffn", "heads")
    steps: int = 1
    protect: list[str] = field(default_factory=list)
    per_layer: dict[str, float] | None = None

    def __post_init__(self):
        self.targets = tuple(self.targets)
        bad = [t for t in self.targets if t not in ("ffn", "heads")]
        if bad:
            raise InputError(f"unknown prune targets {bad}", hint="use 'ffn' and/or 'heads'")
        for a in [self.amount, *(self.per_layer or {}).values()]:
            if not 0.0 <= a < 1.0:
                raise InputError(f"prune amounts must be in [0, 1), got {a}")
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")

    def amount_for(self, unit: str) -> float:
        """The fraction to remove from ``unit`` (0 when protected)."""
        block = unit.rsplit(".", 1)[0]
        if any(fnmatch.fnmatchcase(n, p) for p in self.protect for n in (unit, block)):
            return 0.0
        for p, a in (self.per_layer or {}).items():
            if fnmatch.fnmatchcase(unit, p) or fnmatch.fnmatchcase(block, p):
                return float(a)
        return self.amount


def prunable_units(model: GenerativeRetriever, targets: tuple[str, ...] = ("ffn", "heads")) -> dict[str, nn.Module]:
    """Unit name -> its :class:`Attention` or :class:`FFN` module, encoder first."""
    out: dict[str, nn.Module] = {}
    for side, blocks in (("enc", model.enc), ("dec", model.dec)):
        for i, blk in enumerate(blocks):
            for attr in ("attn", "self_attn", "cross_attn", "ffn"):
                mod = getattr(blk, attr, None)
                if mod is None or ("ffn" if attr == "ffn" else "heads") not in targets:
                    continue
                out[f"{side}.{i}.{attr}"] = mod
    return out


def _groups(mod: nn.Module) -> list[tuple[nn.Linear, str, int, int]]:
    """(linear, 'row' | 'col', group size, offset stride) describing each unit's weights: group g of
    a 'row' entry is rows ``g*size .. (g+1)*size`` (plus the same at ``+stride`` for kv's v half)."""
    if isinstance(mod, FFN):
        return [(mod.net[0], "row", 1, 0), (mod.net[2], "col", 1, 0)]
    return [(mod.q, "row", mod.hs, 0), (mod.kv, "row", mod.hs, mod.nh * mod.hs), (mod.o, "col", mod.hs, 0)]


def _n_groups(mod: nn.Module) -> int:
    return mod.net[0].out_features if isinstance(mod, FFN) else mod.nh


def _index(size: int, stride: int, keep: torch.Tensor) -> torch.Tensor:
    idx = (keep[:, None] * size + torch.arange(size)[None]).reshape(-1)
    return torch.cat([idx, idx + stride]) if stride else idx


def _importance(model: GenerativeRetriever, units: dict[str, nn.Module], calib_batches: list[tuple[torch.Tensor, ...]]) -> dict[str, torch.Tensor]:
    if not calib_batches:
        raise InputError("pruning needs at least one calibration batch", hint="pass e.g. a few training batches")
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    acc = {n: torch.zeros(_n_groups(m)) for n, m in units.items()}
    dev = next(model.parameters()).device
    try:
        for batch in calib_batches:
            model.zero_grad(set_to_none=True)
            model(*[b.to(dev) for b in batch]).backward()
            for n, m in units.items():
                G = _n_groups(m)
                for lin, kind, size, stride in _groups(m):
                    s = (lin.weight * lin.weight.grad).abs().detach()
                    if kind == "col":
                        acc[n] += s.sum(0).view(G, size).sum(1).cpu()
                        continue
                    rows = s.sum(1) + (lin.bias * lin.bias.grad).abs().detach()
                    if stride:
                        rows = rows.view(2, G, size).sum(0)
                    acc[n] += rows.reshape(G, size).sum(1).cpu()
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in zip(params, saved):
            p.requires_grad_(r)
        model.train(was_training)
    return acc


def _sliced(lin: nn.Linear, kind: str, idx: torch.Tensor) -> nn.Linear:
    w = lin.weight.detach()
    if kind == "row":
        new = nn.Linear(lin.in_features, len(idx), device=w.device, dtype=w.dtype)
        new.weight.data.copy_(w[idx])
        new.bias.data.copy_(lin.bias.detach()[idx])
    else:
        new = nn.Linear(len(idx), lin.out_features, device=w.device, dtype=w.dtype)
        new.weight.data.copy_(w[:, idx])
        new.bias.data.copy_(lin.bias.detach())
    return new


def _keep_(mod: nn.Module, keep: torch.Tensor) -> None:
    """Keep only groups ``keep`` (sorted) of an FFN / Attention module, in place."""
    keep = keep.sort().values
    if isinstance(mod, FFN):
        mod.net[0] = _sliced(mod.net[0], "row", keep)
        mod.net[2] = _sliced(mod.net[2], "col", keep)
        return
    hs, nh = mod.hs, mod.nh
    mod.q = _sliced(mod.q, "row", _index(hs, 0, keep))
    mod.kv = _sliced(mod.kv, "row", _index(hs, nh * hs, keep))
    mod.o = _sliced(mod.o, "col", _index(hs, 0, keep))
    mod.nh = len(keep)


def _record_shapes(model: GenerativeRetriever) -> None:
    shapes: dict = {}
    for name, mod in prunable_units(model).items():
        shapes[name] = mod.net[0].out_features if isinstance(mod, FFN) else [mod.nh, mod.hs]
    model.cfg.layer_shapes = shapes


def prune_(model: GenerativeRetriever, cfg: PruneConfig, calib_batches: list[tuple[torch.Tensor, ...]]) -> dict:
    """Prune ``model`` in place; returns ``{"units": {name: {"before", "after", "removed"}}, "params_before", "params_after"}``.

    ``removed`` lists the original indices (channels or heads) dropped from each unit.
    """
    units = prunable_units(model, cfg.targets)
    before = model.n_params()
    final = {n: max(1, round(_n_groups(m) * (1 - cfg.amount_for(n)))) for n, m in units.items()}
    start = {n: _n_groups(m) for n, m in units.items()}
    alive = {n: torch.arange(start[n]) for n in units}  # original indices still present
    for step in range(1, cfg.steps + 1):
        todo = {n: m for n, m in units.items() if _n_groups(m) > final[n]}
        if not todo:
            break
        scores = _importance(model, todo, calib_batches)
        for n, m in todo.items():
            target = max(final[n], round(start[n] - (start[n] - final[n]) * step / cfg.steps))
            keep = scores[n].topk(target).indices.sort().values
            _keep_(m, keep)
            alive[n] = alive[n][keep]
    _record_shapes(model)
    report = {n: {"before": start[n], "after": len(alive[n]),
                  "removed": sorted(set(range(start[n])) - set(alive[n].tolist()))} for n in units}
    return {"units": report, "params_before": before, "params_after": model.n_params()}


@torch.no_grad()
def _calib_loss(model: GenerativeRetriever, calib_batches: list[tuple[torch.Tensor, ...]]) -> float:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = sum(float(model(*[t.to(dev) for t in b])) for b in calib_batches) / len(calib_batches)
    model.train(was)
    return out


def layer_sensitivity(model: GenerativeRetriever, calib_batches: list[tuple[torch.Tensor, ...]], amount: float,
                      targets: tuple[str, ...] = ("ffn", "heads")) -> dict[str, float]:
    """Unit name -> calibration-loss increase when that unit alone loses ``amount`` of its channels / heads
    (each on a deep copy; ``model`` is untouched). High values: candidates for ``PruneConfig.protect``."""
    base = _calib_loss(model, calib_batches)
    out = {}
    for name in prunable_units(model, targets):
        m = copy.deepcopy(model)
        others = [n for n in prunable_units(m, targets) if n != name]
        prune_(m, PruneConfig(amount=amount, targets=targets, protect=others), calib_batches)
        out[name] = _calib_loss(m, calib_batches) - base
    return out
