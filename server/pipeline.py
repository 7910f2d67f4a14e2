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
from .embed import default_cache_dir
from .semantic_ids import build_ids, collab_embeddings, fuse
from .peers.dense import DenseFinetuneConfig
from .sampling import SamplerConfig
from .train import TrainConfig, retrieval_texts, train_rec, train_retrieval

__all__ = ["RecPreset", "RetrievalPreset", "REC_PRESETS", "RETRIEVAL_PRESETS", "run_rec", "run_retrieval",
           "rec_ids", "retrieval_ids", "load_rec_data", "load_retrieval_data", "docs_only", "retrieval_peers"]


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
    seeds: tuple[int, ...] = (0, 1, 2)
    latency_queries: int = 200
    # the device student `edge-gr build` distils (its int8 variant ships); None = export the teacher only
    student: GRConfig | None = field(default_factory=lambda: GRConfig(d_model=64, n_heads=2, max_len=200, dropout=0.1))
    student_train: TrainConfig | None = field(default_factory=lambda: TrainConfig(epochs=30, batch_size=128, lr=2e-3, eval_queries=1000,
                                                                                  patience=5, max_minutes=6.0))


@dataclass
class RetrievalPreset:
    dataset: str = "bible"          # bible | a folder with docs.jsonl[.gz] (+ optional query / doc_texts files)
    books: list[str] | None = None
    max_verses: int | None = None
    max_valid: int = 2000           # Bible validation verses (their held-out translation is not trained on)
    train_windows: int = 0          # fixed windows per verse per training translation (> 0 only for the fixed-list ablation)
    docs_only: bool = False         # ablation: train on the documents' own text only (a user with no queries)
    levels: tuple[int, ...] = (32, 32)
    id_method: Literal["rq", "hkm", "bhkm"] = "bhkm"
    beam: int = 20
    vocab_size: int = 8000
    index_windows: int = 2          # fixed-list ablation only
    # examples cut afresh every step (server.sampling); None = the fixed-list ablation
    sampler: SamplerConfig | None = field(default_factory=lambda: SamplerConfig(batch_size=4096, whole_per_batch=256, window=(3, 12)))
    model: GRConfig = field(default_factory=lambda: GRConfig(d_model=256, n_heads=4, max_len=32, dropout=0.1, n_enc_layers=4, n_dec_layers=2))
    # 18 x 1000 steps of 4,352 examples (a GPU: bf16, fused AdamW, EMA); the time cap keeps a slow GPU within 15 minutes
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=18, steps_per_epoch=1000, lr=2e-3, warmup_steps=500, ema=0.999,
                                                                   eval_queries=2000, beam=20, patience=4, max_minutes=14.0))
    dense_finetune: DenseFinetuneConfig | None = field(default_factory=lambda: DenseFinetuneConfig(steps=1500, batch_size=512))
    seeds: tuple[int, ...] = (0,)
    latency_queries: int = 200
    # the device student `edge-gr build` distils on the same sampled stream (its int8 variant ships)
    # (a 128-wide 2+2 student reached only 0.60x the teacher's validation R@10 in 7 H200-minutes: docs/benchmarks.md)
    student: GRConfig | None = field(default_factory=lambda: GRConfig(d_model=192, n_heads=4, max_len=32, dropout=0.1, n_enc_layers=3, n_dec_layers=2))
    student_train: TrainConfig | None = field(default_factory=lambda: TrainConfig(epochs=12, steps_per_epoch=1000, lr=2e-3, warmup_steps=300,
                                                                                  ema=0.999, eval_queries=2000, beam=20, patience=3, max_minutes=9.0))


REC_PRESETS = {
    "demo": RecPreset(dataset="ml-100k", levels=(32, 32, 32), collab_dim=32, beam=50,
                      model=GRConfig(d_model=64, n_heads=2, max_len=50, dropout=0.2),
                      train=TrainConfig(epochs=20, batch_size=64, lr=2e-3, eval_queries=300, threads=2),
                      sasrec={"max_len": 50, "epochs": 40, "patience": 5, "d_model": 64}, seeds=(0,),
                      student=GRConfig(d_model=32, n_heads=2, max_len=50, dropout=0.1),
                      student_train=TrainConfig(epochs=10, batch_size=64, lr=2e-3, eval_queries=300, threads=2, patience=3)),
    "full": RecPreset(),
    "tiny": RecPreset(dataset="ml-100k", max_users=120, levels=(8, 8), collab_dim=8, beam=10,
                      model=GRConfig(d_model=32, n_heads=2, max_len=20, dropout=0.1, n_enc_layers=1, n_dec_layers=1),
                      train=TrainConfig(epochs=2, batch_size=32, eval_queries=20, progress=False),
                      sasrec={"max_len": 20, "epochs": 2, "patience": 1, "d_model": 32}, latency_queries=10, seeds=(0,),
                      student=GRConfig(d_model=16, n_heads=2, max_len=20, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                      student_train=TrainConfig(epochs=2, batch_size=32, eval_queries=20, progress=False)),
}
RETRIEVAL_PRESETS = {
    # CPU: bounded by steps (10 x 150 of 288 examples), never by the clock
    "demo": RetrievalPreset(books=["John"], levels=(10, 10), beam=20, max_valid=200,
                            sampler=SamplerConfig(batch_size=256, whole_per_batch=32, window=(3, 12)),
                            model=GRConfig(d_model=128, n_heads=4, max_len=24, dropout=0.1, n_enc_layers=2, n_dec_layers=2),
                            train=TrainConfig(epochs=10, steps_per_epoch=150, lr=2e-3, warmup_steps=100, ema=0.99, eval_queries=200,
                                              beam=20, patience=4, threads=2),
                            dense_finetune=DenseFinetuneConfig(steps=150, batch_size=64, warmup_steps=15),
                            vocab_size=4000,
                            student=GRConfig(d_model=64, n_heads=2, max_len=24, dropout=0.1, n_enc_layers=2, n_dec_layers=2),
                            student_train=TrainConfig(epochs=6, steps_per_epoch=150, lr=2e-3, warmup_steps=100, ema=0.99, eval_queries=200,
                                                      beam=20, patience=3, threads=2)),
    "full": RetrievalPreset(),
    "tiny": RetrievalPreset(books=["Jude"], levels=(4, 4), beam=10, max_valid=8, vocab_size=300,
                            sampler=SamplerConfig(batch_size=32, whole_per_batch=8, window=(2, 8)),
                            model=GRConfig(d_model=32, n_heads=2, max_len=16, n_enc_layers=1, n_dec_layers=1),
                            train=TrainConfig(epochs=2, steps_per_epoch=5, eval_queries=8, beam=10, progress=False),
                            dense_finetune=DenseFinetuneConfig(steps=2, batch_size=8, warmup_steps=1, progress=False),
                            latency_queries=10,
                            student=GRConfig(d_model=16, n_heads=2, max_len=16, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                            student_train=TrainConfig(epochs=2, steps_per_epoch=5, eval_queries=8, beam=10, progress=False)),
}


# -- data ------------------------------------------------------------------------
def load_rec_data(p: RecPreset) -> RecData:
    from .data.jsonl import load_rec_jsonl
    from .data.movielens import DATASETS, load_movielens

    if p.dataset in DATASETS:
        return load_movielens(p.dataset, max_users=p.max_users)
    from edge_gr.errors import DataError

    from .data.jsonl import find_jsonl

    folder = Path(p.dataset)
    items, inter = (find_jsonl(folder, "items"), find_jsonl(folder, "interactions")) if folder.is_dir() else (None, None)
    if items is None or inter is None:
        raise DataError(f"{p.dataset!r} is not a recommendation data set",
                        hint="use ml-1m, ml-100k or a folder holding items.jsonl[.gz] and interactions.jsonl[.gz]")
    return load_rec_jsonl(items, inter, name=folder.name)


def load_retrieval_data(p: RetrievalPreset) -> RetrievalData:
    """The Bible (``dataset="bible"``) or a user's folder (:func:`server.data.jsonl.load_retrieval_folder`)."""
    from edge_gr.errors import DataError

    from .data.bible import load_bible
    from .data.jsonl import load_retrieval_folder

    if p.dataset == "bible":
        data = load_bible(books=p.books, max_verses=p.max_verses, train_windows=p.train_windows, max_valid=p.max_valid)
    elif Path(p.dataset).is_dir():
        data = load_retrieval_folder(p.dataset)
    else:
        raise DataError(f"unknown retrieval data set {p.dataset!r}",
                        hint="use bible, or a folder holding docs.jsonl[.gz] (+ optional train_queries / test_queries)")
    return docs_only(data) if p.docs_only else data


def docs_only(data: RetrievalData) -> RetrievalData:
    """The ablation of a user with documents and nothing else: no other texts, no training queries."""
    data.doc_texts, data.train = {}, []
    data.notes += "; docs-only ablation: trained on windows of the documents' own text only"
    return data


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

    def for_latency(self):
        self.gm.model.to("cpu")

    def n_params(self):
        return self.gm.model.n_params()

    def size_bytes(self):
        return self.gm.size_bytes()


class _GenSearch(_GenRec):
    def search(self, texts, k=10):
        return self.gm.rank_texts(texts, k, beam=self.beam)


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

    def for_latency(self):
        self.peer.model.to("cpu")

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
def _train_info(log: list[dict], minutes: float, device: str) -> dict:
    eps = [e["examples_per_s"] for e in log if "examples_per_s" in e]
    info = {"train_minutes": minutes, "train_examples_per_s": float(np.mean(eps)) if eps else None}
    if device.startswith("cuda"):
        info["gpu_minutes"] = minutes
    return info


def run_rec(p: RecPreset, *, out_dir: str | Path | None = None, device: str | None = None) -> dict:
    """IDs -> generative model -> popularity + SASRec peers -> same-run comparison, one run per seed
    of ``p.seeds`` for both trained methods (means, std, and a paired bootstrap CI over users)."""
    from .evaluate import combine_seeds, compare_methods
    from .peers.popularity import PopularityPeer
    from .peers.sasrec import SASRecConfig, train_sasrec

    device = device or _device()
    t0 = time.time()
    data = load_rec_data(p)
    split = data.split()
    _say(f"{data.name}: {len(data.items):,} items, {len(split.train):,} users; seeds {list(p.seeds)}")
    ids = rec_ids(data, split, p)
    _say(f"semantic IDs ({p.id_source}, {p.id_method}) levels={ids.levels} stats={ids.stats()}")
    pop = PopularityPeer().fit(split, [i.id for i in data.items], include_valid=True)
    per_seed: dict[str, list] = {"edge-gr-teacher": [], "sasrec": []}
    logs = []
    for seed in p.seeds:
        t = time.time()
        gm, log = train_rec(split, data.items, ids, replace(p.model), replace(p.train, device=device, seed=seed))
        gm.meta["dataset"] = p.dataset
        gen = _train_info(log, (time.time() - t) / 60, device)
        gm.model.to("cpu")
        if out_dir:
            gm.save(Path(out_dir) / ("rec-model" if seed == p.seeds[0] else f"rec-model-seed{seed}"))
        t = time.time()
        scfg = SASRecConfig(**{"max_minutes": p.train.max_minutes, **p.sasrec, "device": device, "seed": seed})
        sas = train_sasrec(split, [i.id for i in data.items], scfg, progress=p.train.progress)
        sas_info = {"train_minutes": (time.time() - t) / 60}
        sas.model.to("cpu")
        sas.cfg.device = "cpu"
        methods = {"edge-gr-teacher": _GenRec(gm, p.beam), "sasrec": _SafeRec(sas, pop)}
        res = evaluate_rec(methods, split, latency_queries=p.latency_queries)
        per_seed["edge-gr-teacher"].append(res["edge-gr-teacher"] | gen | {"seed": seed})
        per_seed["sasrec"].append(res["sasrec"] | sas_info | {"seed": seed})
        logs.append(log)
    res = {name: combine_seeds(runs) for name, runs in per_seed.items()}
    res["popularity"] = evaluate_rec({"popularity": pop}, split, latency_queries=p.latency_queries)["popularity"]
    comparison = {"edge-gr-teacher - sasrec": compare_methods(res["edge-gr-teacher"], res["sasrec"])}
    return {"dataset": data.name, "n_items": len(data.items), "n_users": len(split.test_target),
            "protocol": "leave-one-out by timestamp; full ranking over all items; main keys keep seen items, 'seen_removed' removes them",
            "ids": ids.stats() | {"source": p.id_source, "method": p.id_method},
            "sasrec_impl": "own faithful SASRec (server/peers/sasrec.py), full-softmax CE on all positions",
            "train_device": device, "preset": _preset_dict(p), "minutes": (time.time() - t0) / 60, "seeds": list(p.seeds),
            "comparison": comparison, "generative_log": logs[0], "methods": res}


def retrieval_peers(data: RetrievalData, p: RetrievalPreset, *, device: str, out_dir: Path | None = None,
                    finetuned: Path | None = None, dense: bool = True) -> dict:
    """The peers a user would pick instead, all on the same data: BM25 over the docs, BM25 over
    the docs expanded with the texts edge-gr trains on, dense MiniLM pretrained, and (with
    ``p.dense_finetune``, or a saved ``finetuned`` folder) MiniLM fine-tuned on the same examples."""
    from .peers.bm25 import BM25Peer
    from .peers.dense import DensePeer, finetune_minilm, load_finetuned

    texts, _, queries = retrieval_texts(data)
    expansions = {d.id: [*data.doc_texts.get(d.id, [])] for d in data.docs}
    for q, row in queries:
        expansions[data.docs[row].id].append(q)
    peers = {"bm25": BM25Peer().fit(data.docs)}
    if any(expansions.values()):
        peers["bm25-expanded"] = BM25Peer().fit(data.docs, expansions)
    if not dense:
        return peers
    peers["dense-minilm"] = DensePeer().fit(data.docs)
    if finetuned is None and p.dense_finetune is not None:
        folder = Path(out_dir or default_cache_dir() / "dense") / "dense-minilm-finetuned"
        t = time.time()
        finetuned = finetune_minilm(texts, [d.text for d in data.docs], folder, replace(p.dense_finetune, device=device), queries)
        _say(f"fine-tuned MiniLM in {(time.time() - t) / 60:.1f} min -> {finetuned}")
    if finetuned is not None:
        peers["dense-minilm-finetuned"] = load_finetuned(finetuned).fit(data.docs)
    return peers


def run_retrieval(p: RetrievalPreset, *, out_dir: str | Path | None = None, device: str | None = None) -> dict:
    """IDs -> generative retriever (examples sampled afresh every step) -> BM25 (+ expanded) and
    dense MiniLM (pretrained + fine-tuned on the same examples) -> same-run comparison."""
    from .evaluate import combine_seeds

    device = device or _device()
    t0 = time.time()
    data = load_retrieval_data(p)
    _say(f"{data.name}: {len(data.docs):,} docs, {len(data.train):,} train queries, "
         f"{sum(len(v) for v in data.doc_texts.values()):,} extra doc texts, {len(data.valid):,} valid / {len(data.test):,} test queries")
    ids = retrieval_ids(data, p)
    _say(f"semantic IDs ({p.id_method}) levels={ids.levels} stats={ids.stats()}")
    runs, logs = [], []
    for seed in p.seeds:
        t = time.time()
        gm, log = train_retrieval(data, ids, replace(p.model), replace(p.train, device=device, seed=seed), vocab_size=p.vocab_size,
                                  sampler=p.sampler, index_windows=p.index_windows)
        info = _train_info(log, (time.time() - t) / 60, device)
        gm.model.to("cpu")
        if out_dir:
            gm.save(Path(out_dir) / ("retrieval-model" if seed == p.seeds[0] else f"retrieval-model-seed{seed}"))
        r = evaluate_retrieval({"edge-gr-teacher": _GenSearch(gm, p.beam)}, data.test, latency_queries=p.latency_queries)
        runs.append(r["edge-gr-teacher"] | info | {"seed": seed})
        logs.append(log)
    peers = retrieval_peers(data, p, device=device, out_dir=Path(out_dir) if out_dir else None)
    res = {"edge-gr-teacher": combine_seeds(runs)} | evaluate_retrieval(peers, data.test, latency_queries=p.latency_queries)
    return {"dataset": data.name, "n_docs": len(data.docs), "n_test_queries": len(data.test),
            "protocol": data.test_label + "; full ranking over all docs" +
                        ("; a hit on any verse with identical KJV text counts" if data.name == "bible" else ""),
            "notes": data.notes, "ids": ids.stats() | {"method": p.id_method}, "train_device": device, "preset": _preset_dict(p),
            "minutes": (time.time() - t0) / 60, "seeds": list(p.seeds), "generative_log": logs[0], "methods": res}


def _preset_dict(p) -> dict:
    d = asdict(p)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
