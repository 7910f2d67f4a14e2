"""Shard plans: which shard owns which catalogue item (DESIGN 14.3, semantic sharding).

* :func:`semantic_plan` - shards are **subtrees of the semantic-ID trie**: every item whose first
  ``depth`` codes are the same prefix lives on the same shard (a prefix is a k-means cluster, so
  related items share a shard, and a query's beams touch few shards). Prefixes are packed onto
  shards largest-first onto the lightest shard (LPT), weighted by item count, by measured query
  load, or by both; the ``hot`` most-requested items are replicated to every shard.
* :func:`hash_plan` - the baseline: consistent hashing of item ids with virtual nodes.
* :meth:`ShardPlan.stats` - items and load per shard (max / mean), replication.

>>> from edge_gr.ids import SemanticIds
>>> ids = SemanticIds([f"i{j}" for j in range(8)], np.array([[j // 2, j % 2] for j in range(8)]), (4, 2))
>>> p = semantic_plan(ids, 2)
>>> sorted(len(p.items_of(s)) for s in range(2)), p.kind
([4, 4], 'semantic')
>>> hash_plan(ids, 2).n_shards
2
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from edge_gr.errors import InputError
from edge_gr.ids import SemanticIds

__all__ = ["ShardPlan", "semantic_plan", "hash_plan"]


@dataclass
class ShardPlan:
    """``owner[i]``: the primary shard of item row ``i``; ``replicas``: extra shards holding hot items."""

    n_shards: int
    owner: np.ndarray                       # (n_items,) int
    kind: str                               # semantic | hash
    depth: int = 0                          # semantic: prefix length that decides the shard
    prefix_owner: dict = field(default_factory=dict)   # semantic: prefix tuple -> shard
    replicas: dict = field(default_factory=dict)       # item row -> [extra shards]

    def items_of(self, shard: int) -> np.ndarray:
        """Item rows a shard holds (its own and the replicated hot ones), ascending."""
        own = np.flatnonzero(self.owner == shard)
        extra = [r for r, ss in self.replicas.items() if shard in ss]
        return np.union1d(own, np.asarray(extra, dtype=np.int64))

    def shards_of_prefix(self, prefix: tuple) -> int | None:
        return self.prefix_owner.get(tuple(prefix))

    def stats(self, load: np.ndarray | None = None) -> dict:
        """Items per shard and (given per-item query load) load per shard: max, mean, max/mean."""
        counts = np.array([len(self.items_of(s)) for s in range(self.n_shards)], dtype=float)
        out = {"kind": self.kind, "shards": self.n_shards, "items_max": int(counts.max()), "items_mean": float(counts.mean()),
               "items_imbalance": float(counts.max() / counts.mean()), "replicated_items": len(self.replicas)}
        if load is not None:
            per = np.zeros(self.n_shards)
            np.add.at(per, self.owner, load)  # a replicated item's requests go to its primary here (routers may spread them)
            out.update(load_max=float(per.max()), load_mean=float(per.mean()), load_imbalance=float(per.max() / max(per.mean(), 1e-12)))
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n_shards": self.n_shards, "depth": self.depth, "owner": self.owner.tolist(),
                "prefix_owner": [[list(p), s] for p, s in self.prefix_owner.items()],
                "replicas": {str(r): ss for r, ss in self.replicas.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardPlan":
        return cls(n_shards=int(d["n_shards"]), owner=np.asarray(d["owner"], dtype=np.int64), kind=d["kind"], depth=int(d.get("depth", 0)),
                   prefix_owner={tuple(p): int(s) for p, s in d.get("prefix_owner", [])},
                   replicas={int(r): list(ss) for r, ss in d.get("replicas", {}).items()})


def _check(n_shards: int, ids: SemanticIds) -> None:
    if not isinstance(n_shards, int) or n_shards < 1:
        raise InputError(f"n_shards must be a positive integer, got {n_shards!r}", hint="e.g. 4")
    if len(ids) == 0:
        raise InputError("the catalogue is empty", hint="build IDs over at least one item")


def semantic_plan(ids: SemanticIds, n_shards: int, *, load: np.ndarray | None = None, depth: int = 1, hot: int = 0,
                  balance: str = "items") -> ShardPlan:
    """Whole prefix subtrees per shard, packed largest-first onto the lightest shard.

    ``balance``: ``items`` (item count), ``load`` (measured requests per item, ``load``) or ``both``
    (the normalised sum). ``hot``: the most-requested items replicated to every shard.
    """
    _check(n_shards, ids)
    if not 1 <= depth < len(ids.levels):
        raise InputError(f"depth must be in 1..{len(ids.levels) - 1}, got {depth}", hint="depth 1 = shard by the first code")
    if balance != "items" and load is None:
        raise InputError(f"balance={balance!r} needs the per-item load", hint="pass load= (requests per item row)")
    keys, inv = np.unique(ids.codes[:, :depth], axis=0, return_inverse=True)
    inv = inv.ravel()
    items_w = np.bincount(inv, minlength=len(keys)).astype(float)
    if balance == "items":
        w = items_w
    else:
        load_w = np.bincount(inv, weights=np.asarray(load, dtype=float), minlength=len(keys))
        w = load_w if balance == "load" else items_w / items_w.sum() + load_w / max(load_w.sum(), 1e-12)
    bins = np.zeros(n_shards)
    prefix_shard = np.zeros(len(keys), dtype=np.int64)
    for g in np.argsort(-w, kind="stable"):  # LPT: the heaviest prefix onto the lightest shard
        s = int(np.argmin(bins))
        prefix_shard[g] = s
        bins[s] += w[g]
    owner = prefix_shard[inv]
    replicas = {}
    if hot and load is not None and n_shards > 1:
        for r in np.argsort(-np.asarray(load, dtype=float), kind="stable")[:hot]:
            replicas[int(r)] = [s for s in range(n_shards) if s != owner[r]]
    return ShardPlan(n_shards, owner, "semantic", depth, {tuple(int(c) for c in k): int(s) for k, s in zip(keys, prefix_shard)}, replicas)


def _h(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big")


def hash_plan(ids: SemanticIds, n_shards: int, *, vnodes: int = 64) -> ShardPlan:
    """Consistent hashing with ``vnodes`` virtual nodes per shard (the baseline: ignores the semantics).

    Our own ~10 lines, vectorised over the catalogue: the PyPI rings (uhashring, hash_ring) hash one key
    per Python call and add a dependency for what ``np.searchsorted`` over a sorted ring does here.
    """
    _check(n_shards, ids)
    ring = np.array(sorted((_h(f"shard-{s}-vnode-{v}"), s) for s in range(n_shards) for v in range(vnodes)), dtype=np.uint64)
    keys = np.array([_h(i) for i in ids.items], dtype=np.uint64)
    pos = np.searchsorted(ring[:, 0], keys) % len(ring)  # the first virtual node clockwise
    return ShardPlan(n_shards, ring[pos, 1].astype(np.int64), "hash")
