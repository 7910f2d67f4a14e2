"""Build semantic IDs: embeddings -> codes (residual or hierarchical k-means) + a collision-free suffix.

Embeddings come from text (all-MiniLM-L6-v2), from collaborative signal (PPMI over
item co-occurrence in users' histories + truncated SVD, i.e. an item2vec-style
factorisation) or their fusion. k-means is faiss'.

* ``rq``  residual k-means (RQ-VAE-like without the VAE): level l clusters the residual
  left by levels < l; ``levels=(64, 64, 64)`` gives 262k cells.
* ``hkm`` hierarchical k-means (DSI / NCI): level l re-clusters the members of each
  level-(l-1) cluster on their own.

* ``bhkm`` balanced (capacity-constrained) hierarchical k-means: as ``hkm``, but each
  node's members are assigned to its k centroids under a capacity of ``ceil(n / k)``, so
  every leaf holds about ``n / prod(levels)`` items. With ``levels=(32, 32)`` on 31k
  verses the appended digit (the rank in the leaf) ranges over <= 31 codes, where plain
  ``hkm`` leaves held up to 181 items.

All three append one more digit that numbers the items sharing a prefix (closest to the
cell centre first), so every ID is unique; that digit's range is the largest bucket.

>>> X = np.random.default_rng(0).normal(size=(200, 8)).astype("float32")
>>> ids = build_ids([str(i) for i in range(200)], X, levels=(8, 8), method="rq", seed=0)
>>> len(ids), len(ids.levels), ids.stats()["n_items"]
(200, 3, 200)
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

from edge_gr.errors import InputError
from edge_gr.ids import SemanticIds

__all__ = ["build_ids", "residual_kmeans", "hierarchical_kmeans", "balanced_hierarchical_kmeans", "collab_embeddings", "fuse", "add_suffix"]


def _kmeans(X: np.ndarray, k: int, seed: int, niter: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means; returns (centroids (k', d), assignment (n,)). k' = min(k, n)."""
    import faiss

    X = np.ascontiguousarray(X, dtype=np.float32)
    k = max(1, min(k, len(X)))
    if k == 1:
        return X.mean(0, keepdims=True), np.zeros(len(X), dtype=np.int64)
    km = faiss.Kmeans(X.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1, max_points_per_centroid=100000)
    km.train(X)
    _, assign = km.index.search(X, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def residual_kmeans(X: np.ndarray, levels: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``(n, L)`` and the final residual norms (used to order collisions)."""
    R = np.asarray(X, dtype=np.float32).copy()
    codes = np.zeros((len(R), len(levels)), dtype=np.int64)
    for l, k in enumerate(levels):
        C, a = _kmeans(R, k, seed + l)
        codes[:, l] = a
        R -= C[a]
    return codes, np.linalg.norm(R, axis=1)


def hierarchical_kmeans(X: np.ndarray, levels: Sequence[int], seed: int = 0, *, balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """NCI-style: cluster, then cluster each cluster's members on their own. With ``balanced``
    every node assigns its members under a capacity of ``ceil(n / k)`` per cluster."""
    X = np.asarray(X, dtype=np.float32)
    codes = np.zeros((len(X), len(levels)), dtype=np.int64)
    dist = np.zeros(len(X), dtype=np.float32)

    def rec(idx: np.ndarray, depth: int) -> None:
        if depth == len(levels) or len(idx) <= 1:  # a single member keeps code 0, distance 0
            return
        C, a = _kmeans(X[idx], levels[depth], seed + depth)
        if balanced:
            a = _balanced_assign(X[idx], C, -(-len(idx) // len(C)))
        codes[idx, depth] = a
        dist[idx] = np.linalg.norm(X[idx] - C[a], axis=1)
        for c in np.unique(a):
            rec(idx[a == c], depth + 1)

    rec(np.arange(len(X)), 0)
    return codes, dist


def _balanced_assign(X: np.ndarray, C: np.ndarray, cap: int) -> np.ndarray:
    """Nearest-centroid assignment with at most ``cap`` points per centroid: all (point,
    centroid) pairs in order of distance, each taken if the point is free and the centroid
    has room (greedy; faiss has no capacity-constrained assignment)."""
    D = (X * X).sum(1)[:, None] - 2 * X @ C.T + (C * C).sum(1)[None, :]  # (n, k) squared distances
    order = np.argsort(D, axis=None, kind="stable")
    pts, cls = np.unravel_index(order, D.shape)
    assign = np.full(len(X), -1, dtype=np.int64)
    room = np.full(len(C), cap, dtype=np.int64)
    left = len(X)
    for p, c in zip(pts.tolist(), cls.tolist()):
        if assign[p] < 0 and room[c] > 0:
            assign[p] = c
            room[c] -= 1
            left -= 1
            if left == 0:
                break
    return assign


def balanced_hierarchical_kmeans(X: np.ndarray, levels: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical k-means with capacity ``ceil(n / k)`` per cluster at every node."""
    return hierarchical_kmeans(X, levels, seed, balanced=True)


def add_suffix(codes: np.ndarray, order_key: np.ndarray) -> tuple[np.ndarray, int]:
    """Append a digit numbering items within each identical prefix (smallest ``order_key`` first)."""
    n = len(codes)
    order = np.lexsort((np.arange(n), order_key, *codes.T[::-1]))  # group by prefix, then by key
    sorted_codes = codes[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (sorted_codes[1:] != sorted_codes[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - group_start
    return np.concatenate([codes, suffix[:, None]], axis=1), int(suffix.max()) + 1


def collab_embeddings(sequences: Sequence[Sequence[str]], items: Sequence[str], *, dim: int = 64, window: int = 10) -> np.ndarray:
    """Item vectors from co-occurrence: counts within ``window`` steps -> PPMI -> rank-``dim`` SVD.

    Pass *training* histories only, so the IDs leak nothing of validation / test.
    Items never seen get a zero vector (their IDs then come from the other signal in a fusion).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    index = {it: i for i, it in enumerate(items)}
    rows, cols = [], []
    for seq in sequences:
        ix = [index[s] for s in seq if s in index]
        for off in range(1, window + 1):
            if len(ix) > off:
                a, b = np.array(ix[:-off]), np.array(ix[off:])
                rows += [a, b]
                cols += [b, a]
    n = len(items)
    if not rows:
        return np.zeros((n, dim), dtype=np.float32)
    r, c = np.concatenate(rows), np.concatenate(cols)
    M = sp.coo_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=(n, n)).tocsr()
    M.sum_duplicates()
    total = M.sum()
    row = np.asarray(M.sum(1)).ravel()
    col = np.asarray(M.sum(0)).ravel()
    M = M.tocoo()
    pmi = np.log(M.data * total / (row[M.row] * col[M.col] + 1e-12) + 1e-12)
    keep = pmi > 0
    P = sp.coo_matrix((pmi[keep], (M.row[keep], M.col[keep])), shape=(n, n)).tocsr()
    k = min(dim, n - 2)
    U, S, _ = svds(P, k=k, random_state=0)
    E = (U * np.sqrt(S)).astype(np.float32)
    if k < dim:
        E = np.pad(E, ((0, 0), (0, dim - k)))
    return E


def _normalise(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)


def fuse(*parts: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Concatenate L2-normalised embeddings, each scaled by its weight."""
    weights = weights or [1.0] * len(parts)
    return np.concatenate([w * _normalise(p) for w, p in zip(weights, parts)], axis=1).astype(np.float32)


def build_ids(
    items: Sequence[str],
    embeddings: np.ndarray,
    *,
    levels: Sequence[int] = (64, 64, 64),
    method: Literal["rq", "hkm", "bhkm"] = "rq",
    seed: int = 0,
    meta: dict | None = None,
) -> SemanticIds:
    """Semantic IDs for ``items`` from their ``embeddings`` (one row each)."""
    E = np.asarray(embeddings, dtype=np.float32)
    if E.ndim != 2 or len(E) != len(items):
        raise InputError(f"need one embedding row per item: {len(items)} items, embeddings {E.shape}", hint="embed every item")
    if len(items) == 0:
        raise InputError("the catalogue is empty", hint="pass at least one item")
    if any(k < 1 for k in levels):
        raise InputError(f"every level needs >= 1 code, got {tuple(levels)}", hint="use e.g. --levels 64,64,64")
    fn = {"rq": residual_kmeans, "hkm": hierarchical_kmeans, "bhkm": balanced_hierarchical_kmeans}.get(method)
    if fn is None:
        raise InputError(f"unknown ID method {method!r}", hint="use 'rq', 'hkm' or 'bhkm'")
    codes, key = fn(E, levels, seed)
    codes, n_suffix = add_suffix(codes, key)
    # Shrink each level to the codes k-means actually produced (k' <= k when n is small).
    lv = tuple(int(max(codes[:, l].max() + 1, 1)) for l in range(len(levels))) + (n_suffix,)
    return SemanticIds(items=list(items), codes=codes, levels=lv, meta={"method": method, "seed": seed, **(meta or {})})
