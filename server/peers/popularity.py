"""Most-popular baseline: rank every item by its number of training interactions.

The floor every recommender must beat, and the fallback for users with no usable
history (a cold-start request to SASRec raises :class:`~edge_gr.errors.InputError`).

>>> from server.data.base import RecSplit
>>> split = RecSplit(train={"u": ["a", "b", "a"], "v": ["b", "a"]},
...                  valid_target={"u": "c", "v": "c"}, test_target={"u": "a", "v": "b"})
>>> peer = PopularityPeer().fit(split, ["a", "b", "c"])
>>> peer.rank([["a"]], k=2)
[[('a', 3.0), ('b', 2.0)]]
>>> peer.rank([["a"]], k=2, exclude_seen=True)
[[('b', 2.0), ('c', 0.0)]]
>>> PopularityPeer().fit(split, ["a", "b", "c"], include_valid=True).rank([[]], k=3)
[[('a', 3.0), ('b', 2.0), ('c', 2.0)]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from server.data.base import RecSplit

__all__ = ["PopularityPeer"]


class PopularityPeer:
    """Ranks items by training-interaction count; ties keep catalogue order."""

    def __init__(self, name: str = "popularity"):
        self.name = name
        self.item_ids: list[str] = []
        self.counts = np.zeros(0, dtype=np.int64)  # (n_items,) interactions per item
        self._order = np.zeros(0, dtype=np.int64)  # (n_items,) item indices, most popular first

    def fit(self, split: RecSplit, item_ids: Sequence[str], include_valid: bool = False) -> "PopularityPeer":
        """Count each item's occurrences in ``split.train`` (plus the validation
        targets when ``include_valid``, i.e. everything a test-time model may see).
        Items outside ``item_ids`` are ignored. Returns ``self``."""
        self.item_ids = list(item_ids)
        index = {it: i for i, it in enumerate(self.item_ids)}
        counts = np.zeros(len(self.item_ids), dtype=np.int64)
        seqs: list[Sequence[str]] = list(split.train.values())
        if include_valid:
            seqs.append(list(split.valid_target.values()))
        for seq in seqs:
            for it in seq:
                i = index.get(it)
                if i is not None:
                    counts[i] += 1
        self.counts = counts
        self._order = np.argsort(-counts, kind="stable")
        return self

    def rank(
        self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = False
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(item_id, count)`` per history; the history matters only
        when ``exclude_seen`` drops the items already in it."""
        out = []
        for hist in histories:
            seen = set(hist) if exclude_seen else ()
            row: list[tuple[str, float]] = []
            for i in self._order:
                it = self.item_ids[i]
                if it in seen:
                    continue
                row.append((it, float(self.counts[i])))
                if len(row) >= k:
                    break
            out.append(row)
        return out

    def n_params(self) -> int:
        """One count per item."""
        return int(self.counts.size)

    def size_bytes(self) -> int:
        """Bytes of the count table as stored (int64)."""
        return int(self.counts.nbytes)
