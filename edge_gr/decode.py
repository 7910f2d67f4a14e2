"""Trie-constrained beam search in numpy (the device path imports no torch).

``step(prefix)`` is any function mapping the current beams' ID prefixes
``(N, B, l)`` (int codes, level by level) to log-probabilities of the next level's
codes ``(N, B, levels[l])``. Codes that would leave the trie are masked before
the top-B selection, so every returned ID is a catalogue item. Ties are broken by
beam order then code (stable sort), so the search is deterministic.

>>> from edge_gr.ids import SemanticIds
>>> ids = SemanticIds(["a", "b", "c"], np.array([[0, 0], [0, 1], [1, 0]]), (2, 2))
>>> rng = np.random.default_rng(0)
>>> items, scores = beam_search(lambda p: np.log(rng.dirichlet(np.ones(2), p.shape[:2])), ids.trie(), n=4, beam=3, k=3)
>>> bool((items[items >= 0] < 3).all()), items.shape
(True, (4, 3))
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .ids import Trie

__all__ = ["beam_search", "StepFn"]

StepFn = Callable[[np.ndarray], np.ndarray]


def _top(total: np.ndarray, width: int) -> np.ndarray:
    """Column indices of the ``width`` largest entries of each row, best first, ties by column (the order
    a stable full sort gives) - without sorting the whole row: a partition finds them, only they are
    sorted. NaN sorts last (never chosen over a number)."""
    neg = -total
    m = neg.shape[1]
    if width >= m or m <= 64:
        return np.argsort(neg, axis=1, kind="stable")[:, :width]
    idx = np.argpartition(neg, width - 1, axis=1)[:, :width]
    val = np.take_along_axis(neg, idx, 1)
    kth = val.max(1, keepdims=True)
    # a tie at the boundary: the partition may have picked any of the tied columns; a stable sort takes the lowest
    tied = (neg == kth).sum(1) != (val == kth).sum(1)
    if tied.any():
        idx[tied] = np.argsort(neg[tied], axis=1, kind="stable")[:, :width]
        val[tied] = np.take_along_axis(neg[tied], idx[tied], 1)
    order = np.lexsort((idx, val), axis=-1)  # by value, then by column
    return np.take_along_axis(idx, order, 1)


def beam_search(step: StepFn, trie: Trie, *, n: int, beam: int, k: int,
                on_select: Callable[[np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for each of ``n`` queries.

    ``on_select(parent)`` (optional) is called after each level with the parent beam of every
    surviving beam ``(n, b)``: a stateful ``step`` (a KV cache per beam) reorders its state by it.

    Returns ``items (n, k)`` leaf indices (row numbers of :class:`~edge_gr.ids.SemanticIds`),
    ``-1`` where fewer than ``k`` valid IDs exist, and ``scores (n, k)`` (sum of
    log-probabilities in float32, ``-inf`` for the padding), best first. A NaN or infinite
    log-probability counts as -1e30, so it never wins over a finite one.
    """
    if beam < k:
        raise ValueError(f"beam ({beam}) must be >= k ({k})")
    L = len(trie.levels)
    prefix = np.zeros((n, 1, 0), dtype=np.int64)
    nodes = np.zeros((n, 1), dtype=np.int64)
    scores = np.zeros((n, 1), dtype=np.float32)
    for level in range(L):
        K = trie.levels[level]
        logp = np.asarray(step(prefix), dtype=np.float32)  # (n, b, K)
        if logp.shape != (n, prefix.shape[1], K):
            raise ValueError(f"step returned shape {logp.shape}, expected {(n, prefix.shape[1], K)}")
        if not np.isfinite(logp).all():  # a NaN / infinite logit must never win: it scores -1e30 (as the Kotlin core)
            logp = np.nan_to_num(logp, nan=-1e30, posinf=-1e30, neginf=-1e30)
        alive = nodes >= 0
        allowed = trie.children[level][np.where(alive, nodes, 0)] >= 0  # (n, b, K)
        if not alive.all():
            allowed &= alive[..., None]
        total = scores[..., None] + logp
        total[~allowed] = -np.inf
        total = total.reshape(n, -1)  # (n, b*K)
        width = min(beam if level < L - 1 else max(k, 1), total.shape[1])
        order = _top(total, width)  # (n, width)
        scores = np.take_along_axis(total, order, 1)
        src_beam, code = np.divmod(order, K)
        if on_select is not None:
            on_select(src_beam)
        parent = np.take_along_axis(nodes, src_beam, 1)
        nodes = np.where(scores > -np.inf, trie.children[level][np.maximum(parent, 0), code], -1)
        prefix = np.concatenate([np.take_along_axis(prefix, src_beam[..., None], 1), code[..., None]], axis=2)
    items = np.where(scores > -np.inf, nodes, -1)
    if items.shape[1] < k:
        pad = k - items.shape[1]
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return items, scores
