"""The most federated learning could gain: the base model (what the cloud saw) against a model trained centrally,
without DP, on every user's training history (what federated rounds could at best learn from the devices).

Both models have the same semantic IDs (the base's), architecture and training budget; both are scored on the same
device users' held-out test items (context = their whole history), so the per-user NDCG@10 differences are paired
(95% bootstrap interval). Measured first, before any federated run: a federated run cannot beat this gap.

>>> from device_sim.fl.setup import FLData
>>> # measure_ceiling(FLData(dataset="ml-1m", scenario="users", cloud_users=0.25))   # ~2 GPU-minutes per model
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .setup import FLData, FLSetup, ndcg_eval, paired, prepare

__all__ = ["measure_ceiling", "central_model", "device_cohort"]


def device_cohort(setup: FLSetup, n: int, *, seed: int = 0, min_history: int = 3) -> list[str]:
    """A seeded sample of ``n`` device users with at least ``min_history`` training items (the evaluation cohort)."""
    users = [u for u in setup.users if len(setup.split.train[u]) >= min_history]
    rng = np.random.default_rng([seed, 11])
    return sorted(rng.choice(users, min(n, len(users)), replace=False).tolist())


def central_model(setup: FLSetup, d: FLData, cache: str | Path | None, progress: bool = True):
    """The base's architecture and IDs trained on every user's training history (cloud and device users), no DP."""
    from server.data.base import RecData
    from server.generative import GenerativeModel
    from server.model import GRConfig
    from server.train import TrainConfig, train_rec

    path = Path(cache) / d.key() / "central" if cache else None
    if path is not None and path.is_dir():
        try:
            return GenerativeModel.load(path)
        except Exception:  # a stale or partial cache: retrain
            pass
    everyone = RecData("all-users", setup.gm.items, {u: list(h) for u, h in setup.split.train.items()})
    mcfg = GRConfig(**{**d.model.to_dict(), "levels": tuple(setup.gm.ids.levels)})
    gm, _ = train_rec(everyone.split(min_len=3), setup.gm.items, setup.gm.ids, mcfg, TrainConfig(**{**asdict(d.train), "progress": progress}))
    if path is not None:
        gm.save(path)
    gm.model.eval()
    return gm


def measure_ceiling(d: FLData, *, eval_users: int = 1000, cache: str | Path | None = ".cache/edge_gr/fl", beam: int = 20,
                    progress: bool = True, seed: int = 0) -> dict:
    """``{"scenario", "base", "centralized", "gain": {gain, ci_low, ci_high}, ...}`` on ``eval_users`` device users."""
    t0 = time.time()
    setup = prepare(d, cache, progress=progress)
    t_base = time.time() - t0
    central = central_model(setup, d, cache, progress=progress)
    t_central = time.time() - t0 - t_base
    users = device_cohort(setup, eval_users, seed=seed)
    base = ndcg_eval(setup, setup.gm, users, beam=beam, per_user=True)
    cent = ndcg_eval(setup, central, users, beam=beam, per_user=True)
    diff = paired(cent.pop("per_user"), base.pop("per_user"))
    split = setup.split
    return {"scenario": split.scenario, "cloud_users": (len(split.cloud_users) if split.cloud_users is not None else None),
            "device_users": len(setup.users), "eval_users": len(users), "base": base, "centralized": cent,
            "gain": {"epsilon": None, "gain": diff["mean"], "ci_low": diff["ci95"][0], "ci_high": diff["ci95"][1]},
            "significant": bool(diff["ci95"][0] > 0 or diff["ci95"][1] < 0), "train_s": {"base": t_base, "centralized": t_central},
            "data": asdict(d)}
