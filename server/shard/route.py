"""Query routing over semantic shards: a shard's model knows only its subtree of the trie.

Each shard runs the same model with the trie of its own items (:meth:`~edge_gr.ids.SemanticIds.trie_of`),
so it can only generate IDs it holds. Two strategies:

* ``prefix`` - a router runs the model's first decoder step (:meth:`GenerativeModel.first_level`), keeps
  the ``beam`` best valid first codes (the beam's level-0 prefixes) and sends the query only to the shards
  owning them, best prefix first, at most ``max_fanout`` shards; the shards' answers are merged by score.
* ``scatter`` - every shard answers; merge by score (the upper bound on recall, fan-out = all shards).

Both are measured against the unsharded model by :func:`compare` (Recall@10 ratio, shards per query).

>>> ShardedSearcher.__name__
'ShardedSearcher'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edge_gr.errors import InputError

from .plan import ShardPlan

__all__ = ["ShardedSearcher", "merge", "compare"]


def merge(answers, k: int) -> list[tuple[str, float]]:
    """Merge shards' ``(id, score)`` lists by score: a replicated item keeps its best score; ties by id.

    >>> merge([[("a", -1.0), ("b", -3.0)], [("c", -2.0), ("a", -0.5)]], 2)
    [('a', -0.5), ('c', -2.0)]
    """
    best: dict[str, float] = {}
    for ans in answers:
        for i, sc in ans:
            if sc > best.get(i, -np.inf):
                best[i] = float(sc)
    return sorted(best.items(), key=lambda t: (-t[1], t[0]))[:k]


class ShardedSearcher:
    """The catalogue split by ``plan``; ``search_many`` routes, runs the shards and merges."""

    def __init__(self, gm, plan: ShardPlan):
        if len(plan.owner) != len(gm.ids):
            raise InputError(f"the plan covers {len(plan.owner)} items, the model's catalogue has {len(gm.ids)}",
                             hint="build the plan from this model's IDs")
        self.gm, self.plan = gm, plan
        self.shards = [s for s in range(plan.n_shards) if len(plan.items_of(s))]
        self.tries = {s: gm.ids.trie_of(plan.items_of(s)) for s in self.shards}

    def route(self, src, *, beam: int, max_fanout: int | None = None) -> list[list[int]]:
        """The shards of each query, best prefix first (semantic plans; a hash plan needs every shard)."""
        if self.plan.kind != "semantic" or self.plan.depth != 1 or len(self.shards) == 1:  # nothing to choose
            return [list(self.shards) for _ in range(src.shape[0])]
        logp = self.gm.first_level(src)
        allowed = self.gm.ids.trie().children[0][0] >= 0
        logp = np.where(allowed, logp, -np.inf)
        out = []
        for row in logp:
            order = np.argsort(-row, kind="stable")[: min(beam, int(allowed.sum()))]
            seen: list[int] = []
            for c in order:
                s = self.plan.prefix_owner.get((int(c),))
                if s is not None and s not in seen:
                    seen.append(s)
            out.append(seen[:max_fanout] if max_fanout else seen)
        return out

    def search_many(self, queries: Sequence, k: int = 10, *, beam: int = 20, strategy: str = "prefix",
                    max_fanout: int | None = None) -> tuple[list[list[tuple[str, float]]], list[int]]:
        """Top-``k`` ``(id, score)`` per query and the number of shards each query went to."""
        if strategy not in ("prefix", "scatter"):
            raise InputError(f"unknown strategy {strategy!r}", hint="use prefix or scatter")
        src = self.gm.source(queries)
        routes = self.route(src, beam=beam, max_fanout=max_fanout) if strategy == "prefix" else [list(self.shards)] * len(queries)
        answers: list[list[list[tuple[str, float]]]] = [[] for _ in queries]
        for s in self.shards:
            rows = [r for r, rs in enumerate(routes) if s in rs]
            if not rows:
                continue
            items, scores = self.gm._decode(src[rows], k, max(beam, k), trie=self.tries[s])
            for r, ir, sr in zip(rows, items, scores):
                answers[r].append([(self.gm.ids.items[i], float(sc)) for i, sc in zip(ir, sr) if i >= 0])
        out = [merge(a, k) for a in answers]
        return out, [len(r) for r in routes]


def compare(gm, plan: ShardPlan, inputs: Sequence, relevant: Sequence[set], *, k: int = 10, beam: int = 20,
            fanouts: Sequence[int | None] = (1, 2, None)) -> dict:
    """Recall@k of the unsharded model, scatter-all and prefix routing at each ``max_fanout`` (None = every
    shard the beam's prefixes reach), with the mean / max shards per query and the ratio to unsharded."""
    from server.metrics import rank_metrics

    def recall(ranked) -> float:
        return rank_metrics([[i for i, _ in r] for r in ranked], relevant)[f"recall@{k}"]

    base = gm.rank(list(inputs), k, beam=beam) if gm.task == "rec" else gm.rank_texts(list(inputs), k, beam=beam)
    r0 = recall(base)
    sh = ShardedSearcher(gm, plan)
    rows = {"unsharded": {f"recall@{k}": r0, "shards_per_query": 1.0}}
    got, fan = sh.search_many(inputs, k, beam=beam, strategy="scatter")
    rows["scatter"] = {f"recall@{k}": recall(got), "shards_per_query": float(np.mean(fan))}
    for f in fanouts:
        got, fan = sh.search_many(inputs, k, beam=beam, strategy="prefix", max_fanout=f)
        rows[f"prefix(max_fanout={f or 'beam'})"] = {f"recall@{k}": recall(got), "shards_per_query": float(np.mean(fan)),
                                                     "shards_per_query_max": int(np.max(fan))}
    for v in rows.values():
        v["recall_ratio"] = v[f"recall@{k}"] / r0 if r0 else None
    return rows
