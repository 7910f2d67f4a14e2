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

__all__ = ["rank_metrics", "first_hit_rank"]


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
