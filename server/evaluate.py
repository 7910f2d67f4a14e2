"""Same-run comparisons: every method ranks the same queries over the whole catalogue.

A *method* is anything with ``rank(histories, k, exclude_seen)`` (recommendation) or
``search(texts, k)`` (retrieval) returning ``[(id, score), ...]`` per query, plus
``n_params()`` and ``size_bytes()``. Metrics are :func:`server.metrics.rank_metrics`;
latency is measured per single query with torch limited to one thread (the device
setting), after a warm-up.

>>> from server.data.base import RecSplit
>>> from server.peers.popularity import PopularityPeer
>>> split = RecSplit({"u": ["a", "b"]}, {"u": "a"}, {"u": "a"})
>>> pop = PopularityPeer().fit(split, ["a", "b"], include_valid=True)
>>> r = evaluate_rec({"popularity": pop}, split, latency_queries=2)
>>> r["popularity"]["recall@1"], r["popularity"]["params"]
(1.0, 2)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .data.base import Query, RecSplit
from .metrics import hit_positions, paired_bootstrap, per_query, rank_metrics

__all__ = ["evaluate_rec", "evaluate_retrieval", "latency_ms", "one_thread", "combine_seeds", "compare_methods", "strip_private"]


@contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def latency_ms(fn: Callable[[object], object], inputs: Sequence[object], warmup: int = 5) -> dict[str, float]:
    """p50 / p99 wall time of ``fn(x)`` over ``inputs``, one at a time, at 1 thread."""
    with one_thread():
        for x in inputs[:warmup]:
            fn(x)
        times = []
        for x in inputs:
            t = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99))}


def _ids(ranked: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[i for i, _ in r] for r in ranked]


def _describe(m, metrics: dict, lat: dict) -> dict:
    return {**metrics, **lat, "params": int(m.n_params()), "size_mb": m.size_bytes() / 1e6}


def evaluate_rec(methods: Mapping[str, object], split: RecSplit, *, users: Sequence[str] | None = None,
                 latency_queries: int = 200, seed: int = 0) -> dict[str, dict]:
    """Test-time leave-one-out: history = ``split.test_history(u)``, target = ``test_target[u]``.

    Reports both conventions, labelled: the main keys keep already-seen items in the
    ranking; ``seen_removed`` holds the metrics with them removed.
    """
    users = list(users if users is not None else split.test_target)
    hist = [split.test_history(u) for u in users]
    rel = [{split.test_target[u]} for u in users]
    lat_hist = [hist[i] for i in np.random.default_rng(seed).choice(len(hist), min(latency_queries, len(hist)), replace=False)]
    out = {}
    for name, m in methods.items():
        ranked = _ids(m.rank(hist, 10))
        metrics = rank_metrics(ranked, rel)
        metrics["seen_removed"] = rank_metrics(_ids(m.rank(hist, 10, exclude_seen=True)), rel)
        if callable(getattr(m, "for_latency", None)):
            m.for_latency()  # bulk ranking may run on a GPU; latency is measured on the CPU
        out[name] = _describe(m, metrics, latency_ms(lambda h: m.rank([h], 10), lat_hist))
        out[name]["_hits"] = hit_positions(ranked, rel)  # per user; used for paired CIs, not written out
    return out


def evaluate_retrieval(methods: Mapping[str, object], queries: Sequence[Query], *, latency_queries: int = 200,
                       seed: int = 0) -> dict[str, dict]:
    """Full-catalogue retrieval of ``queries``; a hit is any id in ``query.relevant``."""
    texts = [q.text for q in queries]
    rel = [q.relevant for q in queries]
    lat = [texts[i] for i in np.random.default_rng(seed).choice(len(texts), min(latency_queries, len(texts)), replace=False)]
    out = {}
    for name, m in methods.items():
        ranked = _ids(m.search(texts, 10))
        if callable(getattr(m, "for_latency", None)):
            m.for_latency()
        out[name] = _describe(m, rank_metrics(ranked, rel), latency_ms(lambda t: m.search([t], 10), lat))
        out[name]["_hits"] = hit_positions(ranked, rel)
    return out


_METRICS = ("recall@1", "recall@10", "ndcg@10", "mrr@10")


def combine_seeds(runs: Sequence[dict]) -> dict:
    """Per-seed results of one method -> main keys = the mean over seeds, ``std`` per metric,
    ``seeds`` = the per-seed results (without per-query data), ``_hits`` = every seed's hits.

    >>> r = combine_seeds([{"recall@10": 0.2, "_hits": [0]}, {"recall@10": 0.4, "_hits": [-1]}])
    >>> round(r["recall@10"], 3), round(r["std"]["recall@10"], 3), len(r["seeds"])
    (0.3, 0.1, 2)
    """
    runs = list(runs)
    out = {k: v for k, v in runs[0].items() if k not in ("_hits", "seen_removed")}
    for k in runs[0]:
        if k in _METRICS or k in ("p50_ms", "p99_ms", "train_minutes", "train_examples_per_s", "gpu_minutes"):
            vals = [float(r[k]) for r in runs if k in r]
            out[k] = float(np.mean(vals))
    out["std"] = {k: float(np.std([r[k] for r in runs])) for k in _METRICS if k in runs[0]}
    if "seen_removed" in runs[0]:
        out["seen_removed"] = {k: float(np.mean([r["seen_removed"][k] for r in runs])) for k in _METRICS}
    out["seeds"] = [{k: v for k, v in r.items() if k != "_hits"} for r in runs]
    out["_hits"] = [r["_hits"] for r in runs if "_hits" in r]
    return out


def compare_methods(a: dict, b: dict, metrics: Sequence[str] = ("ndcg@10", "recall@10"), seed: int = 0) -> dict:
    """Paired bootstrap over queries of ``a - b`` (each query's metric averaged over the seeds
    of each method first): ``{metric: {diff, ci_low, ci_high, n, n_boot}}``."""
    def avg(m: dict, metric: str) -> np.ndarray:
        hits = m["_hits"] if m["_hits"] and isinstance(m["_hits"][0], list) else [m["_hits"]]
        return np.mean([per_query(h, metric) for h in hits], axis=0)

    return {metric: paired_bootstrap(avg(a, metric), avg(b, metric), seed=seed) for metric in metrics}


def strip_private(res: dict) -> dict:
    """Drop per-query data (keys starting with ``_``) before writing results."""
    if isinstance(res, dict):
        return {k: strip_private(v) for k, v in res.items() if not str(k).startswith("_")}
    if isinstance(res, list):
        return [strip_private(v) for v in res]
    return res
