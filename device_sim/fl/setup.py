"""The federated experiment's fixed parts: the cloud-trained base model, who holds
which data, per-device records and the held-out evaluation.

``prepare(FLData(...))`` trains (or loads from its cache) the base recommender on the
cloud's share of MovieLens (see :class:`~device_sim.fl.records.FederatedSplit`) and
returns an :class:`FLSetup` every part of the simulation shares.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from server.model import GRConfig
from server.train import TrainConfig

from .adapters import AdapterConfig, add_adapters, set_adapter
from .records import FederatedSplit, device_records, device_sequence, split_for_federation

__all__ = ["FLData", "FLSetup", "prepare", "ndcg_eval", "paired"]


@dataclass
class FLData:
    """What to federate over and the base model to start from."""

    dataset: str = "ml-1m"                 # ml-1m | ml-100k
    max_users: int | None = None           # first N users (None = all 6,040)
    cloud_fraction: float = 0.5            # "history": share of each training history the cloud logged
    scenario: str = "history"              # "history" | "users" (FederatedSplit: who the cloud saw)
    cloud_users: float = 0.25              # "users": share of users who opted in (full histories in the cloud)
    levels: tuple[int, ...] = (64, 64, 64)
    collab_dim: int = 64
    # the ML-1M recommender of the issue "Win on quality" (bench/core.py's teacher recipe: 128 wide, 2+2 layers, the last
    # 200 items, 60 x 200 steps within 4 minutes; bf16 on a GPU). Runs before 2026-12-02 used 50 items / 30 epochs / 15 min.
    model: GRConfig = field(default_factory=lambda: GRConfig(d_model=128, n_heads=4, n_enc_layers=2, n_dec_layers=2,
                                                               max_len=200, dropout=0.2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, batch_size=128, lr=2e-3, eval_queries=1000,
                                                                   patience=10, max_minutes=4.0, steps_per_epoch=200, threads=2))

    def key(self) -> str:
        import hashlib

        d = asdict(self)
        for k in ("progress", "device", "threads"):  # where and how fast it trains, not what: a GPU-trained base serves a CPU run
            d["train"].pop(k, None)
        if d["scenario"] == "history":  # the key of every base model cached before the "users" scenario existed
            d.pop("scenario"), d.pop("cloud_users")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class FLSetup:
    gm: object                      # server.generative.GenerativeModel (the frozen base)
    split: FederatedSplit
    codes: np.ndarray               # (n_items, L) semantic codes of item rows 1..n
    row: dict[str, int]             # item id -> 1-based row
    users: list[str]

    def device_rows(self, user: str) -> list[int]:
        return [self.row[i] for i in self.split.device_history(user) if i in self.row]

    def records(self, user: str, max_len: int | None = None, max_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The device-only records of ``user`` (targets past the cloud cut; context = whole history)."""
        rows = self.device_rows(user)
        start = min(self.split.device_start(user), len(rows))
        return device_records(rows, self.codes, max_len or self.gm.model.cfg.max_len, start=max(start, 1),
                              max_records=max_records)

    def local_data(self, user: str, local) -> tuple[np.ndarray, np.ndarray]:
        """What ``user``'s device trains on under ``local`` (a :class:`~device_sim.fl.local.LocalConfig`): its
        records (``objective="records"``), or its history as one sequence ``(seq (1, S+1), empty targets)``
        (``"sequence"``: the whole device history; in the ``history`` scenario that includes the cloud-logged start)."""
        if getattr(local, "objective", "records") == "sequence":
            return device_sequence(self.device_rows(user), self.gm.model.cfg.max_len), np.zeros((1, 0), dtype=np.int64)
        return self.records(user, max_records=local.max_records)

    def adapted_model(self, acfg: AdapterConfig):
        """A private copy of the base GenerativeModel with (zero) adapters."""
        gm = copy.copy(self.gm)
        gm.model = add_adapters(copy.deepcopy(self.gm.model), acfg).eval()
        return gm


def prepare(d: FLData, cache: str | Path | None = ".cache/edge_gr/fl", progress: bool = True) -> FLSetup:
    """Load the data, split it cloud/device and train (or load) the base model."""
    from server.data.base import RecData
    from server.generative import GenerativeModel
    from server.pipeline import RecPreset, load_rec_data, rec_ids
    from server.train import train_rec

    data = load_rec_data(RecPreset(dataset=d.dataset, max_users=d.max_users))
    fsplit = split_for_federation(data.split(), d.cloud_fraction, scenario=d.scenario, cloud_users=d.cloud_users)
    cloud = RecData(data.name + "-cloud", data.items, {u: fsplit.cloud_history(u) for u in fsplit.train if fsplit.cloud_history(u)})
    cloud_split = cloud.split(min_len=3)
    path = Path(cache) / d.key() / "base" if cache else None
    gm = None
    if path is not None and path.is_dir():
        try:
            gm = GenerativeModel.load(path)
        except Exception:  # a stale or partial cache: retrain
            gm = None
    if gm is None:
        ids = rec_ids(cloud, cloud_split, RecPreset(dataset=d.dataset, levels=d.levels, collab_dim=d.collab_dim))
        mcfg = GRConfig(**{**d.model.to_dict(), "levels": tuple(d.model.levels)})
        gm, _ = train_rec(cloud_split, data.items, ids, mcfg, TrainConfig(**{**asdict(d.train), "progress": progress}))
        if path is not None:
            gm.save(path)
    gm.model.eval()
    row = {it: i + 1 for i, it in enumerate(gm.ids.items)}
    return FLSetup(gm=gm, split=fsplit, codes=np.asarray(gm.ids.codes), row=row, users=fsplit.device_users)


def ndcg_eval(setup: FLSetup, gm, users: Sequence[str], arrays: Mapping[str, np.ndarray] | None = None,
              beam: int = 20, per_user: bool = False, target: str = "test") -> dict:
    """Held-out next-item NDCG@10 / Recall@10 of ``gm`` (optionally loaded with ``arrays``).

    ``target="valid"`` scores each user's validation item from the training history (the one to choose
    settings on); ``"test"`` the test item from training history + validation item (reported only).
    """
    from server.metrics import rank_metrics

    if target not in ("test", "valid"):
        raise ValueError(f"target must be 'test' or 'valid', got {target!r}")
    if arrays is not None:
        set_adapter(gm.model, arrays)
    split = setup.split
    hist = [split.test_history(u) if target == "test" else split.train[u] for u in users]
    ranked = gm.rank(hist, 10, beam=beam)
    ids = [[i for i, _ in r] for r in ranked]
    rel = [{(split.test if target == "test" else split.valid)[u]} for u in users]
    out = rank_metrics(ids, rel)
    if per_user:
        out["per_user"] = [rank_metrics([a], [b])["ndcg@10"] for a, b in zip(ids, rel)]
    return out


def paired(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-user ``a - b`` with a 95% paired bootstrap interval (same users, same items)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    return {"mean": float(d.mean()), "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}
