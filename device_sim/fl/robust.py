"""Robust federated aggregation: check every reply, bound its weight, and aggregate with a robust rule.

A federated server must not trust a phone. Three attacks break plain FedAvg (measured on 2026-12-01):
one NaN update makes the global model non-finite, one update x1e6 moves it to max |w| ~2,000, one client
claiming 1e9 examples makes the aggregate equal its own update. The defences here:

* :func:`check_update` (pure): a reply's arrays must have the global model's keys and shapes, be finite,
  and (with ``max_update_norm``) move the model by at most that L2 norm - else it is rejected and logged
  with the reason, before any aggregation.
* ``num-examples`` is clipped to ``max_examples`` (a weight, not a claim to be believed).
* the aggregation rule is Flower's own (:func:`make_aggregator`): ``fedavg``, ``median`` (FedMedian),
  ``trimmed`` (FedTrimmedAvg, ``beta`` per side), ``krum`` / ``multikrum`` / ``bulyan`` (``byzantine`` = f,
  the number of malicious clients tolerated) - composable with Flower's central-DP wrapper and
  :class:`~device_sim.fl.flower.EdgeStrategy`, which applies the checks.
* the aggregate itself must be finite, else the round is skipped and the model stays as it was.

>>> g = {"w": np.zeros(3, dtype=np.float32)}
>>> check_update({"w": np.ones(3, dtype=np.float32)}, g, ReplyGuard(max_update_norm=10))
>>> check_update({"w": np.array([1, np.nan, 0], dtype=np.float32)}, g, ReplyGuard())
'non-finite values in w'
>>> check_update({"w": np.full(3, 1e6, dtype=np.float32)}, g, ReplyGuard(max_update_norm=10))
'update norm 1.732e+06 > 10'
>>> clip_examples(10**9, ReplyGuard(max_examples=500))
500
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .errors import FederationError

__all__ = ["ReplyGuard", "check_update", "clip_examples", "make_aggregator", "AGGREGATORS"]

AGGREGATORS = ("fedavg", "fedadam", "median", "trimmed", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class ReplyGuard:
    """Server-side limits on one reply. ``max_update_norm`` None = no norm bound (finite check only)."""

    max_examples: int = 10_000
    max_update_norm: float | None = None

    def __post_init__(self):
        if self.max_examples < 1:
            raise FederationError(f"max_examples is {self.max_examples}", hint="use a positive bound, e.g. 10000")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise FederationError(f"max_update_norm is {self.max_update_norm}", hint="use a positive L2 bound or None")


def check_update(arrays: Mapping[str, np.ndarray], global_arrays: Mapping[str, np.ndarray] | None, guard: ReplyGuard) -> str | None:
    """Why a reply must be rejected, or None if it may be aggregated (a pure function)."""
    if global_arrays is not None:
        if set(arrays) != set(global_arrays):
            return f"keys {sorted(set(arrays) ^ set(global_arrays))[:3]} differ from the global model's"
        for k, v in arrays.items():
            if np.shape(v) != np.shape(global_arrays[k]):
                return f"{k} has shape {list(np.shape(v))}, the global model {list(np.shape(global_arrays[k]))}"
    sq = 0.0
    for k, v in arrays.items():
        a = np.asarray(v, dtype=np.float64)
        if not np.isfinite(a).all():
            return f"non-finite values in {k}"
        d = a - np.asarray(global_arrays[k], dtype=np.float64) if global_arrays is not None else a
        sq += float(np.dot(d.ravel(), d.ravel()))
    norm = sq ** 0.5
    if guard.max_update_norm is not None and norm > guard.max_update_norm:
        return f"update norm {norm:.4g} > {guard.max_update_norm:g}"
    return None


def clip_examples(n, guard: ReplyGuard) -> int:
    """The weight a reply gets: its ``num-examples``, at least 1, at most ``guard.max_examples``."""
    try:
        v = float(n)
    except (TypeError, ValueError):
        return 1
    if not np.isfinite(v):
        return 1
    return int(min(max(v, 1.0), guard.max_examples))


def make_aggregator(name: str, *, beta: float = 0.2, byzantine: int = 1, server_lr: float = 1e-3, **fedavg_args):
    """Flower's strategy for ``name`` (see :data:`AGGREGATORS`) with the sampling arguments of FedAvg.
    ``fedadam``: Flower's FedAdam with ``eta = server_lr`` and tau 1e-9 (the recipe docs/federated.md chose)."""
    from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    if name == "fedavg":
        return FedAvg(**fedavg_args)
    if name == "fedadam":
        if not server_lr > 0:
            raise FederationError(f"server learning rate {server_lr}", hint="FedAdam needs eta > 0, e.g. --server-lr 1e-3")
        return FedAdam(eta=server_lr, tau=1e-9, **fedavg_args)
    if name == "median":
        return FedMedian(**fedavg_args)
    if name == "trimmed":
        if not 0 <= beta < 0.5:
            raise FederationError(f"trim beta {beta}", hint="trim a fraction in [0, 0.5) from each side, e.g. 0.2")
        return FedTrimmedAvg(beta=beta, **fedavg_args)
    if name in ("krum", "multikrum", "bulyan"):
        if byzantine < 0:
            raise FederationError(f"byzantine = {byzantine}", hint="the number of malicious clients tolerated, >= 0")
        if name == "krum":
            return Krum(num_malicious_nodes=byzantine, **fedavg_args)
        if name == "multikrum":
            return MultiKrum(num_malicious_nodes=byzantine, num_nodes_to_select=max(1, fedavg_args.get("min_train_nodes", 2) - byzantine),
                             **fedavg_args)
        return Bulyan(num_malicious_nodes=byzantine, **fedavg_args)
    raise FederationError(f"unknown aggregation {name!r}", hint=f"use one of {', '.join(AGGREGATORS)}")
