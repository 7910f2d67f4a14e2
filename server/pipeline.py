"""The main job: build IDs, train the generative model and its peers, compare them in one run.

Two presets per task: ``demo`` (minutes on 2 CPU cores; MovieLens-100k and the Gospel
of John) and ``full`` (MovieLens-1M and the whole Bible; meant for a GPU or a long
CPU run). Every number in the result was measured in the same call.

>>> res = run_rec(REC_PRESETS["demo"])            # doctest: +SKIP
>>> res["methods"]["edge-gr-teacher"]["ndcg@10"]   # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .data.base import RecData, RetrievalData
from .evaluate import evaluate_rec, evaluate_retrieval
from .generative import GenerativeModel
from .model import GRConfig
from .semantic_ids import build_ids, collab_embeddings, fuse
from .train import TrainConfig, train_rec, train_retrieval

__all__ = ["RecPreset", "RetrievalPreset", "REC_PRESETS", "RETRIEVAL_PRESETS", "run_rec", "run_retrieval",
           "rec_ids", "retrieval_ids", "load_rec_data", "load_retrieval_data"]


@dataclass
class RecPreset:
    dataset: str = "ml-1m"          # ml-1m | ml-100k | path to a folder with items.jsonl + interactions.jsonl
    max_users: int | None = None
    id_source: Literal["collab", "text", "fusion"] = "collab"  # what the semantic IDs are built from
    id_method: Literal["rq", "hkm"] = "rq"
    levels: tuple[int, ...] = (64, 64, 64)
    collab_dim: int = 64
    beam: int = 50
    # full-size defaults: chosen on ML-1M *validation* NDCG@10 among history 50 / 200 and
    # collab / fusion IDs (bench/core.py --variants; README "Benchmarks")
    model: GRConfig = field(default_factory=lambda: GRConfig(d_model=128, n_heads=4, max_len=200, dropout=0.2))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, batch_size=128, lr=2e-3, eval_queries=1000, patience=10))
    # SASRec's strongest setting found on ML-1M validation (dropout 0.1, lr 2e-3, long patience)
    sasrec: dict = field(default_factory=lambda: {"max_len": 200, "epochs": 300, "patience": 30, "dropout": 0.1, "lr": 2e-3})
    latency_queries: int = 200


@dataclass
class RetrievalPreset:
    books: list[str] | None = None
    max_verses: int | None = None
    train_windows: int = 2          # windows per verse per training translation
    levels: tuple[int, ...] = (32, 32, 32)
    id_method: Literal["rq", "hkm"] = "hkm"
    beam: int = 20
    vocab_size: int = 8000
    index_windows: int = 2
    model: GRConfig = field(default_factory=lambda: GRConfig(d_model=256, n_heads=4, max_len=32, dropout=0.1, n_enc_layers=4, n_dec_layers=2))
    # batch 1024 / lr 3e-3 reached validation Recall@10 0.35 after 7.4 H200-minutes vs 0.27 for batch 256 / lr 1e-3 (2026-11-26)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=70, batch_size=1024, lr=3e-3, warmup_steps=200, eval_queries=2000, beam=20, patience=8))
    latency_queries: int = 200


REC_PRESETS = {
    "demo": RecPreset(dataset="ml-100k", levels=(32, 32, 32), collab_dim=32, beam=50,
                      model=GRConfig(d_model=64, n_heads=2, max_len=50, dropout=0.2),
                      train=TrainConfig(epochs=20, batch_size=64, lr=2e-3, eval_queries=300, max_minutes=3.0, threads=2),
                      sasrec={"max_len": 50, "epochs": 40, "patience": 5, "d_model": 64}),
    "full": RecPreset(),
    "tiny": RecPreset(dataset="ml-100k", max_users=120, levels=(8, 8), collab_dim=8, beam=10,
                      model=GRConfig(d_model=32, n_heads=2, max_len=20, dropout=0.1, n_enc_layers=1, n_dec_layers=1),
                      train=TrainConfig(epochs=2, batch_size=32, eval_queries=20, progress=False),
                      sasrec={"max_len": 20, "epochs": 2, "patience": 1, "d_model": 32}, latency_queries=10),
}
RETRIEVAL_PRESETS = {
    "demo": RetrievalPreset(books=["John"], levels=(10, 10, 10), beam=20,
                            model=GRConfig(d_model=128, n_heads=4, max_len=24, dropout=0.1, n_enc_layers=2, n_dec_layers=2),
                            train=TrainConfig(epochs=25, batch_size=128, lr=2e-3, eval_queries=500, beam=20, max_minutes=3.0, threads=2),
                            vocab_size=4000),
    "full": RetrievalPreset(),
    "tiny": RetrievalPreset(books=["Jude"], levels=(4, 4), beam=10, train_windows=1, vocab_size=300, index_windows=1,
                            model=GRConfig(d_model=32, n_heads=2, max_len=16, n_enc_layers=1, n_dec_layers=1),
                            train=TrainConfig(epochs=2, batch_size=32, eval_queries=10, beam=10, progress=False),
                            latency_queries=10),
}


# -- data ------------------------------------------------------------------------
def load_rec_data(p: RecPreset) -> RecData:
    from .data.jsonl import load_rec_jsonl
    from .data.movielens import DATASETS, load_movielens

    if p.dataset in DATASETS:
        return load_movielens(p.dataset, max_users=p.max_users)
    folder = Path(p.dataset)
    return load_rec_jsonl(folder / "items.jsonl", folder / "interactions.jsonl", name=folder.name)


def load_retrieval_data(p: RetrievalPreset) -> RetrievalData:
    from .data.bible import load_bible

    return load_bible(books=p.books, max_verses=p.max_verses, train_windows=p.train_windows)


# -- IDs -------------------------------------------------------------------------
def rec_ids(data: RecData, split, p: RecPreset):
    items = [i.id for i in data.items]
    parts = []
    if p.id_source in ("collab", "fusion"):
        parts.append(collab_embeddings(list(split.train.values()), items, dim=p.collab_dim))
    if p.id_source in ("text", "fusion"):
        from .embed import embed_texts

        parts.append(embed_texts([i.text for i in data.items]))
    return build_ids(items, fuse(*parts), levels=p.levels, method=p.id_method,
                     meta={"source": p.id_source, "embedding": "ppmi-svd" if p.id_source == "collab" else "all-MiniLM-L6-v2"})


def retrieval_ids(data: RetrievalData, p: RetrievalPreset):
    from .embed import embed_texts

    E = embed_texts([d.text for d in data.docs])
    return build_ids([d.id for d in data.docs], E, levels=p.levels, method=p.id_method, meta={"embedding": "all-MiniLM-L6-v2"})


# -- adapters so every method answers the same calls --------------------------------
class _GenRec:
    def __init__(self, gm: GenerativeModel, beam: int):
        self.gm, self.beam = gm, beam

    def rank(self, histories, k=10, exclude_seen=False):
        return self.gm.rank(histories, k, beam=self.beam, exclude_seen=exclude_seen)

    def n_params(self):
        return self.gm.model.n_params()

    def size_bytes(self):
        return self.gm.size_bytes()


class _GenSearch(_GenRec):
    def search(self, texts, k=10):
        return self.gm.search_many(texts, k, beam=self.beam)


class _SafeRec:
    """Peers that refuse empty histories fall back to popularity, as the generative model does."""

    def __init__(self, peer, fallback):
        self.peer, self.fallback = peer, fallback

    def rank(self, histories, k=10, exclude_seen=False):
        ok = [i for i, h in enumerate(histories) if any(x in self.peer._index for x in h)]
        out = self.fallback.rank(histories, k, exclude_seen)
        if ok:
            for i, r in zip(ok, self.peer.rank([histories[i] for i in ok], k, exclude_seen)):
                out[i] = r
        return out

    def n_params(self):
        return self.peer.n_params()

    def size_bytes(self):
        return self.peer.size_bytes()


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]edge-gr[/] {msg}")


# -- the jobs ----------------------------------------------------------------------
def run_rec(p: RecPreset, *, out_dir: str | Path | None = None, device: str | None = None) -> dict:
    """IDs -> generative model -> popularity + SASRec peers -> same-run comparison."""
    from .peers.popularity import PopularityPeer
    from .peers.sasrec import SASRecConfig, train_sasrec

    device = device or _device()
    t0 = time.time()
    data = load_rec_data(p)
    split = data.split()
    _say(f"{data.name}: {len(data.items):,} items, {len(split.train):,} users")
    ids = rec_ids(data, split, p)
    _say(f"semantic IDs ({p.id_source}, {p.id_method}) levels={ids.levels} stats={ids.stats()}")
    tcfg = replace(p.train, device=device)
    t = time.time()
    gm, log = train_rec(split, data.items, ids, replace(p.model), tcfg)
    gm.meta["dataset"] = p.dataset
    gen_minutes = (time.time() - t) / 60
    gm.model.to("cpu")
    if out_dir:
        gm.save(Path(out_dir) / "rec-model")
    t = time.time()
    scfg = SASRecConfig(**{**p.sasrec, "device": device, **({"seed": p.train.seed})})
    sas = train_sasrec(split, [i.id for i in data.items], scfg, progress=p.train.progress)
    sas_minutes = (time.time() - t) / 60
    sas.model.to("cpu")
    sas.cfg.device = "cpu"
    pop = PopularityPeer().fit(split, [i.id for i in data.items], include_valid=True)
    methods = {"edge-gr-teacher": _GenRec(gm, p.beam), "sasrec": _SafeRec(sas, pop), "popularity": pop}
    res = evaluate_rec(methods, split, latency_queries=p.latency_queries)
    res["edge-gr-teacher"]["train_minutes"] = gen_minutes
    res["sasrec"]["train_minutes"] = sas_minutes
    return {"dataset": data.name, "n_items": len(data.items), "n_users": len(split.test_target),
            "protocol": "leave-one-out by timestamp; full ranking over all items; main keys keep seen items, 'seen_removed' removes them",
            "ids": ids.stats() | {"source": p.id_source, "method": p.id_method},
            "sasrec_impl": "own faithful SASRec (server/peers/sasrec.py), full-softmax CE on all positions",
            "train_device": device, "preset": _preset_dict(p), "minutes": (time.time() - t0) / 60,
            "generative_log": log, "methods": res}


def run_retrieval(p: RetrievalPreset, *, out_dir: str | Path | None = None, device: str | None = None) -> dict:
    """IDs -> generative retriever (+ indexing task) -> BM25 + dense MiniLM peers -> same-run comparison."""
    from .peers.bm25 import BM25Peer
    from .peers.dense import DensePeer

    device = device or _device()
    t0 = time.time()
    data = load_retrieval_data(p)
    _say(f"{data.name}: {len(data.docs):,} docs, {len(data.train):,} train / {len(data.test):,} test queries")
    ids = retrieval_ids(data, p)
    _say(f"semantic IDs ({p.id_method}) levels={ids.levels} stats={ids.stats()}")
    t = time.time()
    gm, log = train_retrieval(data, ids, replace(p.model), replace(p.train, device=device), vocab_size=p.vocab_size,
                              index_windows=p.index_windows)
    gen_minutes = (time.time() - t) / 60
    gm.model.to("cpu")
    if out_dir:
        gm.save(Path(out_dir) / "retrieval-model")
    bm25 = BM25Peer().fit(data.docs)
    dense = DensePeer().fit(data.docs)
    methods = {"edge-gr-teacher": _GenSearch(gm, p.beam), "bm25": bm25, "dense-minilm": dense}
    res = evaluate_retrieval(methods, data.test, latency_queries=p.latency_queries)
    res["edge-gr-teacher"]["train_minutes"] = gen_minutes
    return {"dataset": data.name, "n_docs": len(data.docs), "n_test_queries": len(data.test),
            "protocol": "WEB 6-word windows (held-out translation); full ranking over all docs; a hit on any verse with identical KJV text counts",
            "ids": ids.stats() | {"method": p.id_method}, "train_device": device, "preset": _preset_dict(p),
            "minutes": (time.time() - t0) / 60, "generative_log": log, "methods": res}


def _preset_dict(p) -> dict:
    d = asdict(p)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
