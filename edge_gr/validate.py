"""One check of search arguments, shared by the cloud model and the device runtime.

``server.generative.GenerativeModel`` and :class:`edge_gr.Retriever` (and ``server.search``)
run every request through these functions before any tensor is built, so a bad argument is
an :class:`~edge_gr.errors.InputError` that says what to pass, never a traceback from numpy,
torch or ONNX Runtime, and never a huge allocation.

* ``k``: an ``int`` (numpy integers too, ``bool`` not), ``1 <= k <=`` :data:`MAX_K`; a ``k``
  above the catalogue size is lowered to it (all items, best first).
* ``beam``: ``None`` (:data:`~edge_gr.search.DEFAULT_BEAM`) or an ``int``,
  ``1 <= beam <=`` :data:`MAX_BEAM`; raised to ``k`` (the search keeps at least ``k`` beams).
* a text query: :func:`edge_gr.text.check_query` (non-empty, at most 10,000 characters, valid Unicode).
* a history: a list (or tuple) of item ids, oldest first. Item ids are ``str``; any other
  scalar (an ``int``, ``None``) is an unknown id and dropped, as unknown ids are; a nested list
  (several histories passed to ``search``) is refused.
* ``search_many``: a list or tuple of queries (an iterator or generator is read once, into a
  list); a single string, a dict, a set or ``None`` is refused.

>>> check_k(10, n_items=4), check_beam(None, k=4), check_beam(2, k=4)
(4, 20, 4)
>>> check_queries(iter([["a", 7, "b"], ()]), "rec")
[['a', 'b'], []]
>>> for bad in (0, True, 2.5, MAX_K + 1):
...     try:
...         check_k(bad)
...     except InputError as e:
...         print(e.message)
k must be at least 1, got 0
k must be an integer, got bool
k must be an integer, got float
k=513 is over the limit of 512 results
>>> try:
...     check_queries([["a"], [["a"]]], "rec")
... except InputError as e:
...     print(e)
query 1: history item 0 is a list, not an item id. To fix: a history is a flat list of item ids; pass several histories to search_many(histories)
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from .bundle import TASKS
from .errors import InputError
from .search import DEFAULT_BEAM
from .text import check_query

__all__ = ["MAX_K", "MAX_BEAM", "TASKS", "check_k", "check_beam", "check_flag", "check_history", "check_queries",
           "check_query", "check_batch_size"]

# The beams of one level cost memory in proportion to batch x beam x vocabulary; the exported graphs
# are traced for at most 512 beams (server.export._common.dynamic_shapes), so a request is held to that.
MAX_BEAM = 512
MAX_K = MAX_BEAM  # the search keeps at least k beams, so k cannot exceed the beam limit


def _show(v: Any) -> str:
    """A short, always-printable picture of a caller's value (never the whole of a huge one)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"a {v.bit_length()}-bit integer"
    try:
        s = repr(v)
    except Exception:  # a caller's object whose __repr__ fails: its type is enough
        return f"a {type(v).__name__}"
    return s if len(s) <= 40 else s[:37] + "..."


def _int(name: str, v: Any, hint: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {type(v).__name__}", hint=hint)
    return int(v)


def check_k(k: Any, n_items: int | None = None) -> int:
    """``k`` as an ``int`` in ``[1, MAX_K]``, lowered to ``n_items`` (the catalogue size) when given."""
    hint = f"pass an integer k from 1 to {MAX_K}, e.g. k=10"
    k = _int("k", k, hint)
    if k < 1:
        raise InputError(f"k must be at least 1, got {_show(k)}", hint=hint)
    if k > MAX_K:
        raise InputError(f"k={_show(k)} is over the limit of {MAX_K} results", hint=hint)
    return min(k, n_items) if n_items else k


def check_beam(beam: Any, k: int = 1) -> int:
    """Beams per level: ``None`` -> :data:`DEFAULT_BEAM`; else an ``int`` in ``[1, MAX_BEAM]``; at least ``k``."""
    if beam is None:
        return max(DEFAULT_BEAM, k)
    hint = f"pass an integer beam from 1 to {MAX_BEAM} (or none: {DEFAULT_BEAM})"
    beam = _int("beam", beam, hint)
    if beam < 1:
        raise InputError(f"beam must be at least 1, got {_show(beam)}", hint=hint)
    if beam > MAX_BEAM:
        raise InputError(f"beam={_show(beam)} is over the limit of {MAX_BEAM}", hint=hint)
    return max(beam, k)


def check_batch_size(n: Any) -> int:
    """Queries per model call: an ``int >= 1``."""
    n = _int("batch_size", n, "pass e.g. batch_size=128")
    if n < 1:
        raise InputError(f"batch_size must be at least 1, got {_show(n)}", hint="pass e.g. batch_size=128")
    return n


def check_flag(v: Any, name: str = "exclude_seen") -> bool:
    """A yes/no option: ``True`` or ``False`` only (``"no"`` would otherwise count as yes)."""
    if not isinstance(v, bool):
        raise InputError(f"{name} must be True or False, got {_show(v)}", hint=f"pass {name}=True or {name}=False")
    return v


def check_history(history: Any) -> list[str]:
    """A recommender's input: the ``str`` item ids of a list / tuple, oldest first (other scalars dropped)."""
    if isinstance(history, (str, bytes, bytearray)):
        raise InputError("a recommender takes a history (a list of item ids, oldest first), not text",
                         hint="pass e.g. ['Toy Story (1995)']")
    if not isinstance(history, Sequence):
        raise InputError(f"a history must be a list of item ids, got {type(history).__name__}",
                         hint="pass e.g. ['Toy Story (1995)', 'Alien (1979)'] (oldest first)")
    out = []
    for i, item in enumerate(history):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (Sequence, Mapping, Set)) and not isinstance(item, (bytes, bytearray)):
            raise InputError(f"history item {i} is a {type(item).__name__}, not an item id",
                             hint="a history is a flat list of item ids; pass several histories to search_many(histories)")
        # any other scalar (int, None, float, bytes) names no catalogue item: dropped like an unknown id
    return out


def check_queries(queries: Any, task: str) -> list:
    """A batch for ``search_many``: materialised into a list, each query checked for ``task``
    (``"retrieval"``: texts, :func:`check_query`; ``"rec"``: histories, :func:`check_history`)."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}", hint=f"use one of {', '.join(TASKS)}")
    if isinstance(queries, (str, bytes, bytearray)):
        raise InputError("search_many takes a list of queries, not one query", hint="use search(query) for one query")
    if queries is None or isinstance(queries, (Mapping, Set)) or not isinstance(queries, Iterable):
        raise InputError(f"search_many takes a list of queries, got {type(queries).__name__}",
                         hint="pass a list, e.g. search_many(['first query', 'second query'])")
    qs = list(queries)  # an iterator / generator is read once, here
    check = check_history if task == "rec" else check_query
    out = []
    for n, q in enumerate(qs):
        try:
            out.append(check(q))
        except InputError as e:
            if len(qs) == 1:
                raise
            raise InputError(f"query {n}: {e.message}", hint=e.hint) from None
    return out
