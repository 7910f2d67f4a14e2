"""Compression that needs training: progressive pruning and grouped layers, each recovered by distillation.

* :func:`progressive_prune` - prune in rounds of ``step`` (cumulative fraction of the original
  channels / heads), each round followed by recovery distillation from the unpruned teacher;
  optionally protect the most sensitive units (:func:`~server.compress.prune.layer_sensitivity`).
* :func:`grouped_variant` - replace chosen Linear layers with :class:`GroupedLinear` (block-diagonal
  weights initialised from the dense ones, channel shuffle) and recover by distillation.
* :func:`calibration_batches` - a few real training batches of either task (importance scores,
  sensitivity and activation ranges are computed on these).

Both return a new :class:`~server.generative.GenerativeModel`; the teacher is left untouched.

>>> # gm30, log = progressive_prune(teacher, 0.3, split, calib, DistillConfig(), TrainConfig(epochs=3))
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from edge_gr.errors import InputError

from .distill import DistillConfig, distill
from .grouped import replace_linear_
from .prune import PruneConfig, layer_sensitivity, prune_

if TYPE_CHECKING:
    from server.data.base import RecSplit, RetrievalData
    from server.generative import GenerativeModel
    from server.train import TrainConfig

__all__ = ["calibration_batches", "progressive_prune", "grouped_variant"]


def calibration_batches(gm: "GenerativeModel", data: "RecSplit | RetrievalData", n: int = 16, batch_size: int = 32,
                        seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """``n`` seeded batches of ``gm``'s own training inputs: rec history windows or retrieval (query tokens, codes)."""
    from server.text import encode
    from server.train import rec_windows

    rng = np.random.default_rng(seed)
    if gm.task == "rec":
        row = {it: i + 1 for i, it in enumerate(gm.ids.items)}
        w = rec_windows([[row[i] for i in h if i in row] for h in data.train.values()], gm.model.cfg.max_len)
        w = w[rng.permutation(len(w))[: n * batch_size]]
        return [(torch.from_numpy(w[i:i + batch_size]),) for i in range(0, len(w), batch_size)]
    qs = [data.train[i] for i in rng.permutation(len(data.train))[: n * batch_size]]
    if not qs:
        raise InputError("no training queries to calibrate on", hint="pass the RetrievalData the teacher was trained on")
    src = encode(gm.tokenizer, [q.text for q in qs], gm.model.cfg.max_len)
    tgt = gm.ids.codes[[gm.ids.index(sorted(q.relevant)[0]) for q in qs]].astype(np.int64)
    return [(torch.from_numpy(src[i:i + batch_size]), torch.from_numpy(tgt[i:i + batch_size])) for i in range(0, len(qs), batch_size)]


def _copy(gm: "GenerativeModel") -> "GenerativeModel":
    out = copy.copy(gm)
    out.model = copy.deepcopy(gm.model).cpu()
    out.meta = {}
    return out


def progressive_prune(teacher: "GenerativeModel", amount: float, data: "RecSplit | RetrievalData",
                      calib: list[tuple[torch.Tensor, ...]], distill_cfg: DistillConfig, train_cfg: "TrainConfig", *,
                      step: float = 0.1, protect_top: int = 0, targets: tuple[str, ...] = ("ffn", "heads"),
                      start: "GenerativeModel | None" = None, progress: bool = True) -> tuple["GenerativeModel", list[dict]]:
    """Prune ``amount`` of every unit's channels / heads in rounds of ``step``, distilling after each round.

    Round ``r`` prunes to a cumulative ``min(amount, r * step)`` of the original units (importance
    re-scored on ``calib`` each round), then trains the pruned model with :func:`distill` from
    ``teacher`` for ``train_cfg`` (keep it short: a few epochs). ``protect_top`` > 0 leaves the
    that many units with the largest :func:`layer_sensitivity` (at ``amount``) unpruned.
    ``start``: the model to prune (default: a copy of the teacher; e.g. a distilled student).
    Returns the pruned model and a per-round log (params, validation score, minutes).
    """
    if not 0 < amount < 1 or not 0 < step <= 1:
        raise InputError(f"amount must be in (0, 1) and step in (0, 1], got {amount}, {step}")
    gm = _copy(start or teacher)
    model = gm.model
    protect: list[str] = []
    if protect_top > 0:
        sens = layer_sensitivity(model, calib, amount, targets)
        protect = sorted(sens, key=sens.get, reverse=True)[:protect_top]
    rounds = int(np.ceil(amount / step - 1e-9))
    done, log = 0.0, []
    for r in range(1, rounds + 1):
        target = min(amount, r * step)
        rel = 1 - (1 - target) / (1 - done)  # fraction of what is left
        rep = prune_(model, PruneConfig(amount=rel, targets=targets, protect=protect), calib)
        done = target
        student = distill(teacher, model, data, distill_cfg, train_cfg)
        model = student.model
        valid = max((e.get("valid", float("nan")) for e in student.meta["log"]), default=float("nan"))
        log.append({"round": r, "amount": target, "params": rep["params_after"], "valid": valid, "log": student.meta["log"],
                    "minutes": student.meta["log"][-1]["minutes"] if student.meta["log"] else 0.0})
        if progress:
            print(f"prune round {r}/{rounds}: amount {target:.2f}, params {rep['params_after']:,}, valid {valid:.4f}", flush=True)
    gm.model = model.eval()
    gm.meta = {"compress": {"kind": "pruned", "amount": amount, "step": step, "protect": protect, "rounds": log},
               "teacher_params": teacher.model.n_params(), "log": [e for r in log for e in r.pop("log")]}
    return gm, log


def grouped_variant(teacher: "GenerativeModel", groups: int, data: "RecSplit | RetrievalData", distill_cfg: DistillConfig,
                    train_cfg: "TrainConfig", *, pattern: str = "*ffn.net.[02]", shuffle: bool = True,
                    start: "GenerativeModel | None" = None) -> "GenerativeModel":
    """A copy of ``start`` (default ``teacher``) whose Linear layers matching ``pattern`` (default: both FFN layers) are
    :class:`GroupedLinear` with ``groups`` groups (and channel shuffle), recovered by distillation."""
    gm = _copy(start or teacher)
    replaced = replace_linear_(gm.model, pattern, groups, shuffle=shuffle)
    if not replaced:
        raise InputError(f"no Linear layer matches {pattern!r}", hint="e.g. '*ffn.net.[02]' for the FFNs")
    student = distill(teacher, gm.model, data, distill_cfg, train_cfg)
    student.meta["compress"] = {"kind": "grouped", "groups": groups, "pattern": pattern, "replaced": replaced}
    return student
