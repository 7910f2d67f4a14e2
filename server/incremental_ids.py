"""Semantic IDs for new items, without rebuilding the old ones: nearest codes, a free suffix, no reuse.

A new item gets the code prefix whose centroid is nearest to its embedding, then the
smallest suffix that no live *and no retired* item of that prefix has ever held. Old
items keep their IDs (and their rows: new items are appended), so a model trained on
the old IDs still decodes them and the trie only grows.

* **Codebooks** are rebuilt from the existing assignment (the mean of the members of
  each cell - k-means' fixed point), for ``rq`` (residual: level l's centroids are means
  of the residuals left by levels < l) and ``hkm`` (a cell's centroid is the mean of the
  items under that prefix). Any embedding space in which the old items are embedded
  works (e.g. collaborative vectors recomputed on data that includes the new items).
* **Nearest codes**: a small beam over the levels gives the ``candidates`` nearest
  prefixes; the nearest with a free suffix slot wins.
* **Code space**: the suffix level has ``levels[-1]`` slots; :func:`with_headroom`
  reserves extra slots when the IDs are first built (before the model is trained, as
  the decoder's vocabulary depends on it). A prefix that is full spills to the next
  nearest prefix (``spilled`` in the report), so the levels - and the model - never
  change shape. Only if all candidates are full does it fail, saying to add headroom.
* **Retired IDs are never reused**: :func:`retire` removes items and records their IDs
  in ``meta["retired"]``; every change bumps ``meta["id_version"]``.

>>> X = np.random.default_rng(0).normal(size=(60, 4)).astype("float32")
>>> from server.semantic_ids import build_ids
>>> ids = with_headroom(build_ids([f"i{k}" for k in range(50)], X[:50], levels=(4, 4), seed=0), 8)
>>> new, report = assign_new_ids(ids, X[:50], [f"n{k}" for k in range(10)], X[50:], method="rq")
>>> len(new), new.items[:50] == ids.items, report["collisions"], new.meta["id_version"]
(60, True, 0, 1)
"""

from __future__ import annotations

import copy
from typing import Literal, Sequence

import numpy as np

from edge_gr.errors import InputError
from edge_gr.ids import SemanticIds

__all__ = ["rq_codebooks", "hkm_centroids", "nearest_prefixes", "assign_new_ids", "with_headroom", "retire", "utilisation", "row_map"]


def rq_codebooks(X: np.ndarray, codes: np.ndarray, levels: Sequence[int]) -> list[np.ndarray]:
    """Residual codebooks ``[(levels[l], d), ...]`` from an assignment ``codes (n, L')`` (prefix levels only).

    Unused codes get NaN rows (never nearest).
    """
    R = np.asarray(X, dtype=np.float64).copy()
    books = []
    for l, k in enumerate(levels):
        cnt = np.bincount(codes[:, l], minlength=k).astype(np.float64)
        C = np.zeros((k, R.shape[1]))
        np.add.at(C, codes[:, l], R)
        with np.errstate(invalid="ignore", divide="ignore"):
            C = C / cnt[:, None]
        books.append(C)
        R -= C[codes[:, l]]
    return books


def hkm_centroids(X: np.ndarray, codes: np.ndarray) -> list[dict[tuple[int, ...], np.ndarray]]:
    """Per depth l: prefix ``codes[:l+1]`` -> mean embedding of the items under it."""
    X = np.asarray(X, dtype=np.float64)
    out = []
    for l in range(codes.shape[1]):
        keys, inv = np.unique(codes[:, : l + 1], axis=0, return_inverse=True)
        inv = inv.ravel()
        sums = np.zeros((len(keys), X.shape[1]))
        np.add.at(sums, inv, X)
        means = sums / np.bincount(inv)[:, None]
        out.append({tuple(int(c) for c in k): m for k, m in zip(keys, means)})
    return out


def nearest_prefixes(x: np.ndarray, model, method: Literal["rq", "hkm"], *, beam: int = 8) -> list[tuple[tuple[int, ...], float]]:
    """The ``beam`` nearest code prefixes of one embedding ``x``, nearest first: ``[(prefix, distance), ...]``.

    ``model`` is :func:`rq_codebooks`' list (rq) or :func:`hkm_centroids`' (hkm).
    """
    x = np.asarray(x, dtype=np.float64)
    cands: list[tuple[tuple[int, ...], np.ndarray, float]] = [((), x.copy(), 0.0)]  # prefix, residual, distance
    depth = len(model)
    for l in range(depth):
        nxt = []
        for prefix, r, _ in cands:
            if method == "rq":
                C = model[l]
                d = np.linalg.norm(C - r, axis=1)
                for c in np.argsort(np.where(np.isnan(d), np.inf, d))[:beam]:
                    if np.isfinite(d[c]):
                        nxt.append((prefix + (int(c),), r - C[c], float(d[c])))
            else:
                for key, cen in model[l].items():
                    if key[:-1] == prefix:
                        nxt.append((key, r, float(np.linalg.norm(x - cen))))
        nxt.sort(key=lambda t: (t[2], t[0]))
        cands = nxt[:beam]
    return [(p, d) for p, _, d in cands]


def with_headroom(ids: SemanticIds, extra: int) -> SemanticIds:
    """The same IDs with ``extra`` more slots in the suffix level (reserved code space for new items).

    >>> s = SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (1, 2))
    >>> with_headroom(s, 3).levels
    (1, 5)
    """
    if extra < 0:
        raise InputError(f"extra is {extra}", hint="reserve a non-negative number of suffix slots")
    meta = dict(ids.meta, suffix_headroom=int(ids.meta.get("suffix_headroom", 0)) + int(extra))
    return SemanticIds(list(ids.items), ids.codes.copy(), ids.levels[:-1] + (ids.levels[-1] + int(extra),), meta)


def _retired_codes(ids: SemanticIds) -> set[tuple[int, ...]]:
    return {tuple(int(c) for c in r["code"]) for r in ids.meta.get("retired", [])}


def assign_new_ids(ids: SemanticIds, old_embeddings: np.ndarray, new_items: Sequence[str], new_embeddings: np.ndarray, *,
                   method: Literal["rq", "hkm"] | None = None, candidates: int = 16) -> tuple[SemanticIds, dict]:
    """IDs for ``new_items`` appended after the existing ones; returns ``(new ids, report)``.

    ``old_embeddings`` are the existing items' vectors (row i = ``ids.items[i]``) in the
    same space as ``new_embeddings``. ``method`` defaults to ``ids.meta["method"]``.
    The report: ``n_new``, ``nearest`` (got their nearest prefix), ``spilled`` (a full
    prefix sent them to a farther one), ``collisions`` (always 0: checked), ``utilisation``.
    """
    method = method or ids.meta.get("method", "rq")
    if method not in ("rq", "hkm"):
        raise InputError(f"unknown ID method {method!r}", hint="use 'rq' or 'hkm'")
    X_old, X_new = np.asarray(old_embeddings, np.float64), np.asarray(new_embeddings, np.float64)
    if X_old.shape[0] != len(ids) or X_new.shape[0] != len(new_items) or (len(new_items) and X_new.shape[1] != X_old.shape[1]):
        raise InputError(f"need one embedding row per item: {len(ids)} old items / {X_old.shape}, {len(new_items)} new / {X_new.shape}",
                         hint="embed old and new items in the same space")
    dup = sorted(set(new_items) & set(ids.items)) or sorted({i for i in new_items if list(new_items).count(i) > 1})
    if dup:
        raise InputError(f"items already have IDs or are repeated: {dup[:3]}", hint="pass only new, distinct item ids")
    L = len(ids.levels)
    prefix_codes = ids.codes[:, :-1]
    model = rq_codebooks(X_old, prefix_codes, ids.levels[:-1]) if method == "rq" else hkm_centroids(X_old, prefix_codes)
    taken: dict[tuple[int, ...], set[int]] = {}
    for code in list(map(tuple, ids.codes.tolist())) + sorted(_retired_codes(ids)):
        taken.setdefault(tuple(code[:-1]), set()).add(int(code[-1]))
    n_suffix = ids.levels[-1]
    new_codes, nearest, spilled = [], 0, 0
    for item, x in zip(new_items, X_new):
        for rank, (prefix, _) in enumerate(nearest_prefixes(x, model, method, beam=candidates)):
            used = taken.setdefault(prefix, set())
            free = next((s for s in range(n_suffix) if s not in used), None)
            if free is not None:
                used.add(free)
                new_codes.append(prefix + (free,))
                nearest += rank == 0
                spilled += rank > 0
                break
        else:
            raise InputError(f"no free ID near {item!r}: its {candidates} nearest prefixes have all {n_suffix} suffix slots used",
                             hint="rebuild the base IDs with more headroom (with_headroom) or pass a larger `candidates`")
    codes = np.concatenate([ids.codes, np.array(new_codes, dtype=np.int64).reshape(-1, L)])
    all_codes = set(map(tuple, codes.tolist()))
    collisions = len(codes) - len(all_codes) + len(all_codes & _retired_codes(ids))
    assert collisions == 0, "internal error: a new ID collides"  # guaranteed by `taken`
    meta = copy.deepcopy(ids.meta)
    meta["id_version"] = int(meta.get("id_version", 0)) + 1
    meta.setdefault("added", []).append({"id_version": meta["id_version"], "n": len(new_items)})
    out = SemanticIds(list(ids.items) + list(new_items), codes, ids.levels, meta)
    return out, {"n_new": len(new_items), "nearest": nearest, "spilled": spilled, "collisions": collisions,
                 "utilisation": utilisation(out)}


def retire(ids: SemanticIds, items: Sequence[str]) -> SemanticIds:
    """Remove ``items``; their IDs go to ``meta["retired"]`` and are never handed out again.

    Rows after a removed item shift up: use :func:`row_map` to move per-item model rows.

    >>> s = SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (1, 3))
    >>> r = retire(s, ["a"])
    >>> r.items, r.meta["retired"][0]["code"]
    (['b'], [0, 0])
    """
    gone = set(items)
    unknown = sorted(gone - set(ids.items))
    if unknown:
        raise InputError(f"unknown items {unknown[:3]}", hint="retire items of this catalogue")
    meta = copy.deepcopy(ids.meta)
    meta["id_version"] = int(meta.get("id_version", 0)) + 1
    keep = [i for i, it in enumerate(ids.items) if it not in gone]
    meta.setdefault("retired", []).extend({"item": ids.items[i], "code": ids.codes[i].tolist(), "id_version": meta["id_version"]}
                                          for i, it in enumerate(ids.items) if it in gone)
    return SemanticIds([ids.items[i] for i in keep], ids.codes[keep], ids.levels, meta)


def row_map(old: SemanticIds, new: SemanticIds) -> np.ndarray:
    """For each item of ``new``, its row in ``old`` (-1 for items ``old`` lacks).

    >>> row_map(SemanticIds(["a", "b"], np.array([[0], [1]]), (2,)), SemanticIds(["b", "c"], np.array([[1], [0]]), (2,))).tolist()
    [1, -1]
    """
    return np.array([old._index.get(it, -1) for it in new.items], dtype=np.int64)


def utilisation(ids: SemanticIds) -> dict:
    """How full the ID space is.

    ``per_level``: used codes / codes, per level; ``suffix_slots``: used suffixes / (used
    prefixes x suffix size); ``space``: items / all possible IDs; ``retired``: IDs retired;
    ``free_in_used_prefixes``: new items that still fit without spilling.

    >>> utilisation(SemanticIds(["a", "b"], np.array([[0, 0], [0, 1]]), (2, 4)))["suffix_slots"]
    0.5
    """
    n = len(ids)
    retired = _retired_codes(ids)
    prefixes = {tuple(c[:-1]) for c in ids.codes.tolist()} | {c[:-1] for c in retired}
    slots = len(prefixes) * ids.levels[-1]
    used = n + len(retired)
    return {"n_items": n, "levels": list(ids.levels),
            "per_level": [float(len(np.unique(ids.codes[:, l])) / k) if n else 0.0 for l, k in enumerate(ids.levels)],
            "prefixes_used": len(prefixes), "prefixes_possible": int(np.prod(ids.levels[:-1])) if len(ids.levels) > 1 else 1,
            "suffix_slots": used / slots if slots else 0.0, "space": used / float(np.prod(ids.levels)),
            "retired": len(retired), "free_in_used_prefixes": slots - used, "id_version": int(ids.meta.get("id_version", 0))}
