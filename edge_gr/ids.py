"""Semantic IDs: the codec, the prefix trie and their versioned file format.

A semantic ID is a tuple of ``L`` small integers, one per level (``17-203-4``);
level ``l`` has ``levels[l]`` possible codes. Every catalogue item has exactly one
ID and no two items share one (the last level is a collision-free suffix).

The trie is stored as dense child tables, one per level:
``children[l][node, code]`` is the node reached from ``node`` by ``code`` (or -1).
Node 0 of level 0 is the root; a node at depth ``L`` is a leaf and its number is
the index of the item in ``SemanticIds.items``. Dense tables make the
constrained-decoding mask a single gather (``children[l][nodes] >= 0``), which is
what a beam search over a batch wants.

>>> ids = SemanticIds(items=["a", "b", "c"], codes=np.array([[0, 1], [0, 2], [1, 0]]), levels=(2, 3))
>>> ids.format_id("b")
'0-2'
>>> trie = ids.trie()
>>> trie.allowed(0, np.array([0])).tolist()
[[True, True]]
>>> trie.allowed(1, np.array([trie.step(0, np.array([0]), np.array([0]))[0]])).tolist()
[[False, True, True]]
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import FormatError, InputError

__all__ = ["SemanticIds", "Trie", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "edge-gr-semantic-ids"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Trie:
    """Prefix trie over all valid IDs, as dense per-level child tables."""

    levels: tuple[int, ...]
    children: tuple[np.ndarray, ...]  # children[l]: (n_nodes_at_depth_l, levels[l]) int32, -1 = none

    def allowed(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """Boolean mask ``(..., levels[level])`` of codes that extend ``nodes`` to a valid prefix."""
        return self.children[level][nodes] >= 0

    def step(self, level: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Node ids after appending ``codes`` to ``nodes`` (-1 where invalid)."""
        return self.children[level][nodes, codes]

    def __contains__(self, code: Sequence[int]) -> bool:
        node = 0
        if len(code) != len(self.levels):
            return False
        for level, c in enumerate(code):
            if not 0 <= c < self.levels[level]:
                return False
            node = int(self.children[level][node, c])
            if node < 0:
                return False
        return True


def _build_trie(codes: np.ndarray, levels: tuple[int, ...]) -> Trie:
    n, depth = codes.shape
    children = []
    # prefix -> node id at each depth; the leaf numbering is the item index.
    node_of = np.zeros(n, dtype=np.int64)  # node of each item's prefix at current depth
    n_nodes = 1
    for level in range(depth):
        table = np.full((n_nodes, levels[level]), -1, dtype=np.int32)
        if level == depth - 1:
            table[node_of, codes[:, level]] = np.arange(n, dtype=np.int32)
            children.append(table)
            break
        keys = node_of * levels[level] + codes[:, level]
        uniq, inverse = np.unique(keys, return_inverse=True)
        table[uniq // levels[level], uniq % levels[level]] = np.arange(len(uniq), dtype=np.int32)
        children.append(table)
        node_of = inverse.astype(np.int64)
        n_nodes = len(uniq)
    return Trie(levels=levels, children=tuple(children))


@dataclass
class SemanticIds:
    """The ID of every catalogue item: ``codes[i]`` is the ID of ``items[i]``.

    ``meta`` records how the IDs were built (method, embedding, seed) and their
    quality statistics (see :meth:`stats`).
    """

    items: list[str]
    codes: np.ndarray  # (n_items, L) int
    levels: tuple[int, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        self.levels = tuple(int(k) for k in self.levels)
        if self.codes.ndim != 2 or self.codes.shape != (len(self.items), len(self.levels)):
            raise FormatError(
                f"codes must have shape (n_items={len(self.items)}, L={len(self.levels)}), got {self.codes.shape}",
                hint="rebuild the IDs with `edge-gr ids`",
            )
        if len(self.items) and ((self.codes < 0).any() or (self.codes >= np.array(self.levels)).any()):
            raise FormatError("a code is outside its level's range", hint="rebuild the IDs with `edge-gr ids`")
        if len(set(self.items)) != len(self.items):
            raise FormatError("duplicate item ids in the catalogue", hint="make catalogue ids unique")
        if len(self.items) and len(np.unique(self.codes, axis=0)) != len(self.items):
            raise FormatError("two items share a semantic ID", hint="rebuild the IDs: the last level must be collision-free")
        self._index = {item: i for i, item in enumerate(self.items)}

    @classmethod
    def trusted(cls, items: list[str], codes: np.ndarray, levels: tuple[int, ...], meta: dict | None = None) -> "SemanticIds":
        """Build from arrays already checked when they were written (a hash-verified bundle index): only the
        shape is checked here, not uniqueness (a sort of every ID), so a large catalogue loads in milliseconds."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape != (len(items), len(levels)):
            raise FormatError(f"codes must have shape (n_items={len(items)}, L={len(levels)}), got {codes.shape}",
                              hint="re-export the bundle")
        self = cls.__new__(cls)
        self.items, self.codes, self.levels, self.meta = items, codes, tuple(int(k) for k in levels), meta or {}
        self._index = {item: i for i, item in enumerate(items)}
        return self

    # -- lookups -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def index(self, item: str) -> int:
        """Row of ``item``; raises :class:`InputError` for an unknown item."""
        try:
            return self._index[item]
        except KeyError:
            raise InputError(f"unknown item id {item!r}", hint="use an id from the catalogue the IDs were built on") from None

    def has(self, item: str) -> bool:
        return item in self._index

    def format_id(self, item: str) -> str:
        return "-".join(str(int(c)) for c in self.codes[self.index(item)])

    def trie(self) -> Trie:
        if not hasattr(self, "_trie"):
            self._trie = _build_trie(self.codes, self.levels)
        return self._trie

    def trie_of(self, rows: np.ndarray) -> Trie:
        """The trie of a subset of the items (a shard's), its leaves numbered by the rows of the whole catalogue."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            raise InputError("a trie needs at least one item", hint="give the shard some items")
        t = _build_trie(self.codes[rows], self.levels)
        last = t.children[-1]
        return Trie(self.levels, t.children[:-1] + (np.where(last >= 0, rows[np.maximum(last, 0)], -1).astype(np.int32),))

    # -- quality -----------------------------------------------------------
    def stats(self) -> dict:
        """Codebook utilisation per level and the collision rate before the suffix level.

        ``collision_rate`` is the share of items whose prefix (all levels but the
        last, collision-free one) is shared with another item.
        """
        out: dict = {"n_items": len(self.items), "levels": list(self.levels)}
        out["utilisation"] = [float(len(np.unique(self.codes[:, l])) / k) for l, k in enumerate(self.levels)]
        if len(self.levels) > 1 and len(self.items):
            _, inv, counts = np.unique(self.codes[:, :-1], axis=0, return_inverse=True, return_counts=True)
            out["collision_rate"] = float((counts[inv.ravel()] > 1).mean())
            out["max_bucket"] = int(counts.max())
        return out

    # -- file format -------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "levels": list(self.levels),
            "meta": self.meta,
            "stats": self.stats(),
            "items": self.items,
            "codes": self.codes.tolist(),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SemanticIds":
        """Read a file written by :meth:`save`, checking its format name and version."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FormatError(f"no semantic-ID file at {path}", hint="build one with `edge-gr ids`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path} is not a semantic-ID file ({e})", hint="rebuild it with `edge-gr ids`") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError(f"{path} is not an {FORMAT_NAME} file", hint="rebuild it with `edge-gr ids`")
        if doc.get("version") != FORMAT_VERSION:
            raise FormatError(
                f"{path} has format version {doc.get('version')}, this edge-gr reads version {FORMAT_VERSION}",
                hint="rebuild it with this version's `edge-gr ids`",
            )
        return cls(items=list(doc["items"]), codes=np.array(doc["codes"], dtype=np.int64).reshape(len(doc["items"]), len(doc["levels"])),
                   levels=tuple(doc["levels"]), meta=doc.get("meta", {}))
