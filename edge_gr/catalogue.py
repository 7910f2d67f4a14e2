"""The bundle's compact index: semantic IDs, trie and catalogue offsets as arrays (no JSON parsing at load).

``ids.json`` and ``catalogue.jsonl`` stay the readable contract (the Kotlin core reads them); a bundle may
also carry ``index.safetensors`` (role ``index``) holding the same IDs as arrays, the trie's child tables
and the byte offset of every item's line in ``catalogue.jsonl``. With it, loading a 31k-item catalogue is
a few array reads instead of ~31k ``json.loads`` calls, and a title is parsed only when a hit needs it.
safetensors (not ``np.load``) because it is a flat, non-executable format with a JSON header and is
already a device dependency.

>>> import tempfile, pathlib
>>> from edge_gr.ids import SemanticIds
>>> ids = SemanticIds(["a", "b"], np.array([[0, 1], [1, 0]]), (2, 2))
>>> lines = catalogue_lines([("a", "Alpha"), ("b", "Beta")])
>>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "catalogue.jsonl").write_bytes(lines)
>>> _ = (d / "index.safetensors").write_bytes(index_bytes(ids, lines))
>>> ids2, titles = load_index(d / "index.safetensors", d / "catalogue.jsonl")
>>> ids2.items, ids2.format_id("b"), titles("b")
(['a', 'b'], '1-0', 'Beta')
"""

from __future__ import annotations

import json
import mmap
import os
from typing import Callable, Iterable

import numpy as np

from .errors import FormatError
from .ids import SemanticIds, Trie

__all__ = ["index_bytes", "load_index", "catalogue_lines", "INDEX_FORMAT"]

INDEX_FORMAT = "edge-gr-index/1"


def catalogue_lines(items: Iterable[tuple[str, str] | tuple[str, str, dict]]) -> bytes:
    """``catalogue.jsonl`` bytes: one ``{"id", "title", "meta"}`` object per line."""
    out = []
    for it in items:
        i, title, meta = (*it, {})[:3]
        out.append(json.dumps({"id": i, "title": title, "meta": meta}, ensure_ascii=False) + "\n")
    return "".join(out).encode()


def _blob(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [s.encode() for s in strings]
    off = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in enc], out=off[1:])
    return np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), off


def index_bytes(ids: SemanticIds, catalogue: bytes) -> bytes:
    """The index of ``ids`` and of the ``catalogue.jsonl`` bytes (every id must have a line)."""
    from safetensors.numpy import save

    starts, pos = {}, 0
    for line in catalogue.split(b"\n"):
        if line.strip():
            starts[json.loads(line)["id"]] = pos
        pos += len(line) + 1
    missing = [i for i in ids.items if i not in starts]
    if missing:
        raise FormatError(f"{len(missing)} ids have no catalogue line (e.g. {missing[0]!r})", hint="export the catalogue the IDs were built on")
    blob, off = _blob(ids.items)
    t = {"codes": ids.codes.astype(np.int32), "levels": np.asarray(ids.levels, dtype=np.int64), "items": blob, "item_offsets": off,
         "line_offsets": np.array([starts[i] for i in ids.items], dtype=np.int64)}
    t.update({f"trie_{lv}": c for lv, c in enumerate(ids.trie().children)})
    return save(t, metadata={"format": INDEX_FORMAT})


def load_index(index: str | os.PathLike, catalogue: str | os.PathLike) -> tuple[SemanticIds, Callable[[str], str]]:
    """``(ids, title_of)`` from an index file and its catalogue; titles are parsed on first use (the catalogue is mapped)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(index), framework="numpy") as f:
            meta = f.metadata() or {}
            t = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError) as e:
        raise FormatError(f"{index} is not an edge-gr index ({e})", hint="re-export the bundle") from None
    if meta.get("format") != INDEX_FORMAT:
        raise FormatError(f"{index} has format {meta.get('format')!r}, this edge-gr reads {INDEX_FORMAT}", hint="re-export the bundle")
    blob, off = t["items"].tobytes(), t["item_offsets"]
    items = [blob[off[i]:off[i + 1]].decode() for i in range(len(off) - 1)]
    levels = tuple(int(x) for x in t["levels"])
    ids = SemanticIds.trusted(items, t["codes"], levels)
    children = tuple(t[f"trie_{lv}"] for lv in range(len(levels)))
    ids._trie = Trie(levels=levels, children=children)
    f = open(catalogue, "rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if os.fstat(f.fileno()).st_size else b""
    f.close()
    starts = t["line_offsets"]
    row = ids._index
    cache: dict[str, str] = {}

    def title_of(item: str) -> str:
        if item not in cache:
            r = row.get(item)
            if r is None:
                return ""
            s = int(starts[r])
            e = mm.find(b"\n", s)
            cache[item] = json.loads(mm[s:e if e >= 0 else len(mm)]).get("title", "")
        return cache[item]

    return ids, title_of
