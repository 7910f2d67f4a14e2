"""Ranking metrics keyed by IDs (pure functions, no model code).

Each query has a ranked list of ids and a set of relevant ids; a hit is any
relevant id (so duplicate documents all count).

>>> m = rank_metrics([["a", "b"], ["c", "d"]], [{"b"}, {"x"}])
>>> round(m["recall@1"], 3), round(m["recall@10"], 3), round(m["mrr@10"], 3)
(0.0, 0.5, 0.25)
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["rank_metrics", "first_hit_rank", "hit_positions", "per_query", "paired_bootstrap"]


def first_hit_rank(ranked: Sequence[str], relevant: set[str] | frozenset[str]) -> int | None:
    """0-based position of the first relevant id in ``ranked`` (``None`` if absent)."""
    for i, r in enumerate(ranked):
        if r in relevant:
            return i
    return None


def rank_metrics(
    ranked: Iterable[Sequence[str]], relevant: Iterable[set[str] | frozenset[str]], ks: Sequence[int] = (1, 10)
) -> dict[str, float]:
    """Recall@k (hit rate: any relevant id in the top k), NDCG@10 and MRR@10.

    NDCG uses the first hit only (binary relevance, one target per query), which is
    the leave-one-out convention of SASRec / TIGER papers.
    """
    n = 0
    hits = {k: 0 for k in ks}
    ndcg = mrr = 0.0
    for ranks, rel in zip(ranked, relevant):
        n += 1
        pos = first_hit_rank(list(ranks)[:max(max(ks), 10)], rel)
        if pos is None:
            continue
        for k in ks:
            hits[k] += pos < k
        if pos < 10:
            ndcg += 1.0 / math.log2(pos + 2)
            mrr += 1.0 / (pos + 1)
    n = max(n, 1)
    out = {f"recall@{k}": hits[k] / n for k in ks}
    out["ndcg@10"] = ndcg / n
    out["mrr@10"] = mrr / n
    return out


def hit_positions(ranked: Iterable[Sequence[str]], relevant: Iterable[set[str] | frozenset[str]], depth: int = 10) -> list[int]:
    """Per query, the 0-based rank of the first relevant id in the top ``depth``, or -1.

    >>> hit_positions([["a", "b"], ["c"]], [{"b"}, {"x"}])
    [1, -1]
    """
    out = []
    for ranks, rel in zip(ranked, relevant):
        pos = first_hit_rank(list(ranks)[:depth], rel)
        out.append(-1 if pos is None else pos)
    return out


def per_query(positions: Sequence[int], metric: str) -> list[float]:
    """One metric per query from :func:`hit_positions` (``recall@k``, ``ndcg@10``, ``mrr@10``).

    >>> per_query([0, 3, -1], "recall@1"), [round(x, 3) for x in per_query([0, 3, -1], "ndcg@10")]
    ([1.0, 0.0, 0.0], [1.0, 0.431, 0.0])
    """
    if metric.startswith("recall@"):
        k = int(metric.split("@")[1])
        return [1.0 if 0 <= p < k else 0.0 for p in positions]
    if metric == "ndcg@10":
        return [1.0 / math.log2(p + 2) if 0 <= p < 10 else 0.0 for p in positions]
    if metric == "mrr@10":
        return [1.0 / (p + 1) if 0 <= p < 10 else 0.0 for p in positions]
    raise ValueError(f"unknown metric {metric!r}")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Mean of ``a - b`` over paired queries and its percentile bootstrap CI (queries resampled).

    >>> r = paired_bootstrap([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], n_boot=200)
    >>> r["diff"], r["ci_low"] <= r["diff"] <= r["ci_high"]
    (0.5, True)
    """
    import numpy as np

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "n": int(len(d)), "n_boot": n_boot}
