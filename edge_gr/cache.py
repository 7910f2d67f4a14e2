"""Device caches (DESIGN 14.5): predictions for similar contexts, embeddings of frequent
items/queries, and encoder outputs - each bounded by entries *and* estimated bytes, each
with hit/miss statistics for telemetry. numpy and the standard library only.

* :class:`BoundedCache` - the store: LRU or LFU eviction, optional TTL, injectable clock, thread-safe.
* :class:`PredictionCache` - search results keyed by the exact context, or by a
  near-duplicate key: the last ``history_suffix`` items of a history, the normalized
  form of a text query (:func:`normalize_text`). A cached answer for k=20 also serves k=10.
* :class:`EmbeddingCache` - key -> read-only numpy vector (LFU by default).
* :func:`memo` - wraps an encoder ``fn(array) -> output``, keyed by the bytes of the input.
* :class:`CachedRetriever` - drop-in wrapper of any retriever (same ``search`` signature).

>>> c = PredictionCache(ttl_s=10, clock=lambda: 0)
>>> c.put("Star  Wars!", 2, [("a", -0.1), ("b", -0.5)])
True
>>> c.get("star wars", 1), c.get("alien", 1)
([('a', -0.1)], None)
>>> c.stats()["hits"], c.stats()["near_hits"], c.stats()["misses"]
(1, 1, 1)
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from .errors import InputError

__all__ = ["BoundedCache", "PredictionCache", "EmbeddingCache", "CachedRetriever", "memo", "normalize_text",
           "estimate_bytes", "array_key"]


def estimate_bytes(obj: Any, _seen: set | None = None) -> int:
    """Rough bytes held by ``obj`` (numpy buffers, strings, containers, dataclass fields).

    >>> estimate_bytes(np.zeros(1000, dtype=np.float32)) >= 4000
    True
    """
    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return sys.getsizeof(obj) + (obj.nbytes if obj.base is None else estimate_bytes(obj.base, seen))
    n = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, bytearray, int, float, bool, type(None))):
        return n
    if isinstance(obj, dict):
        return n + sum(estimate_bytes(k, seen) + estimate_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return n + sum(estimate_bytes(x, seen) for x in obj)
    fields = getattr(obj, "__dict__", None)
    if fields is not None:
        n += estimate_bytes(fields, seen)
    for s in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, s):
            n += estimate_bytes(getattr(obj, s), seen)
    return n


def normalize_text(text: str) -> str:
    """The near-duplicate form of a query: NFKC, casefold, punctuation -> space, whitespace collapsed.

    >>> normalize_text("  Ｇod so LOVED,   the world!! ")
    'god so loved the world'
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in t)
    return re.sub(r"\s+", " ", t).strip()


def array_key(x: np.ndarray) -> bytes:
    """A 16-byte digest of an array's dtype, shape and contents (the key of :func:`memo`)."""
    x = np.ascontiguousarray(x)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.data)  # no copy for contiguous arrays
    return h.digest()


@dataclass
class _Entry:
    value: Any
    nbytes: int
    expires: float  # clock time; inf = never
    freq: int = 1


class BoundedCache:
    """LRU (or LFU) cache bounded by ``max_entries`` and ``max_bytes`` (estimated), optional TTL.

    ``policy="lfu"`` evicts the least frequently used entry other than the one being
    put (ties: least recently used; an O(n) scan, fine for the thousands of entries a device keeps). Entries larger than
    ``max_bytes`` are refused (counted as ``rejected``). Thread-safe (one lock).

    >>> c = BoundedCache(max_entries=2)
    >>> c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
    True
    True
    1
    True
    >>> sorted(c.keys())     # "b" was the least recently used
    ['a', 'c']
    """

    def __init__(self, max_entries: int | None = 1024, max_bytes: int | None = 1 << 20, *, ttl_s: float | None = None,
                 policy: str = "lru", clock: Callable[[], float] = time.monotonic, sizeof: Callable[[Any], int] = estimate_bytes):
        if policy not in ("lru", "lfu"):
            raise InputError(f"unknown cache policy {policy!r}", hint="use 'lru' or 'lfu'")
        if (max_entries is not None and max_entries < 1) or (max_bytes is not None and max_bytes < 1):
            raise InputError("a cache needs room for at least one entry", hint="pass max_entries >= 1 and max_bytes >= 1 (or None)")
        self.max_entries, self.max_bytes, self.ttl_s, self.policy = max_entries, max_bytes, ttl_s, policy
        self.clock, self.sizeof = clock, sizeof
        self._d: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        self._n = dict(hits=0, misses=0, evictions=0, expirations=0, rejected=0)

    # -- core ------------------------------------------------------------------
    def _lookup(self, key: Hashable) -> _Entry | None:
        """The live entry (touched) or None; no hit/miss counting. Call with the lock held."""
        e = self._d.get(key)
        if e is None:
            return None
        if e.expires <= self.clock():
            self._drop(key)
            self._n["expirations"] += 1
            return None
        e.freq += 1
        self._d.move_to_end(key)
        return e

    def _drop(self, key: Hashable) -> None:
        self._bytes -= self._d.pop(key).nbytes

    def record(self, hit: bool) -> None:
        with self._lock:
            self._n["hits" if hit else "misses"] += 1

    def get(self, key: Hashable, default: Any = None) -> Any:
        with self._lock:
            e = self._lookup(key)
            self._n["hits" if e is not None else "misses"] += 1
            return default if e is None else e.value

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value``; False if it alone exceeds ``max_bytes`` (then nothing is stored)."""
        nbytes = self.sizeof(key) + self.sizeof(value)
        with self._lock:
            if key in self._d:
                self._drop(key)
            if self.max_bytes is not None and nbytes > self.max_bytes:
                self._n["rejected"] += 1
                return False
            expires = self.clock() + self.ttl_s if self.ttl_s is not None else float("inf")
            self._d[key] = _Entry(value, nbytes, expires)
            self._bytes += nbytes
            self._evict()
            return True

    def _evict(self) -> None:
        while self._d and ((self.max_entries is not None and len(self._d) > self.max_entries)
                           or (self.max_bytes is not None and self._bytes > self.max_bytes)):
            if self.policy == "lru":
                victim = next(iter(self._d))
            else:  # the entry just put (the last) is spared, else a new key would always be the victim
                older = list(self._d.items())[:-1] or list(self._d.items())
                victim = min(enumerate(older), key=lambda ie: (ie[1][1].freq, ie[0]))[1][0]
            self._drop(victim)
            self._n["evictions"] += 1

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """The cached value, else ``fn()`` stored (computed outside the lock)."""
        with self._lock:
            e = self._lookup(key)
            self._n["hits" if e is not None else "misses"] += 1
        if e is not None:
            return e.value
        value = fn()
        self.put(key, value)
        return value

    # -- housekeeping ----------------------------------------------------------
    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return self._lookup(key) is not None

    def __len__(self) -> int:
        return len(self._d)

    def keys(self) -> list:
        with self._lock:
            return list(self._d)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self, *_ignored) -> None:
        """Drop every entry (statistics are kept). Accepts and ignores arguments, so it can be
        an ``on_switch`` callback of :class:`edge_gr.policy.VariantSwitcher`."""
        with self._lock:
            self._d.clear()
            self._bytes = 0

    def stats(self) -> dict:
        """hits, misses, hit_rate, entries, bytes, evictions, expirations, rejected."""
        with self._lock:
            n = dict(self._n)
            total = n["hits"] + n["misses"]
            return {**n, "hit_rate": n["hits"] / total if total else 0.0, "entries": len(self._d), "bytes": self._bytes,
                    "max_entries": self.max_entries, "max_bytes": self.max_bytes}


class PredictionCache:
    """Search results for exact and near-duplicate contexts.

    A text query's key is :func:`normalize_text` of it; a history's key is its last
    ``history_suffix`` items (None: the whole history, exact). ``near_duplicates=False``
    keys on the exact context only. Results are stored with the ``k`` they were computed
    for and serve any request with a smaller or equal ``k``. Hits on a different exact
    context that shares the key count as ``near_hits`` too.

    >>> c = PredictionCache(history_suffix=2)
    >>> _ = c.put(["a", "b", "c"], 10, ["x", "y"])
    >>> c.get(["z", "b", "c"], 10)          # same last two items -> near-duplicate hit
    ['x', 'y']
    """

    def __init__(self, max_entries: int | None = 1024, max_bytes: int | None = 4 << 20, *, ttl_s: float | None = 600.0,
                 history_suffix: int | None = 10, near_duplicates: bool = True, clock: Callable[[], float] = time.monotonic):
        if history_suffix is not None and history_suffix < 1:
            raise InputError(f"history_suffix must be >= 1, got {history_suffix}", hint="pass e.g. 10, or None for whole histories")
        self.store = BoundedCache(max_entries, max_bytes, ttl_s=ttl_s, clock=clock)
        self.history_suffix, self.near_duplicates = history_suffix, near_duplicates
        self.near_hits = 0

    def key(self, context) -> tuple | None:
        """The cache key of a query (str) or history (sequence of item ids); None = not cacheable."""
        if isinstance(context, bytes):
            try:
                context = context.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if isinstance(context, str):
            if self.near_duplicates:
                norm = normalize_text(context)
                if norm:
                    return ("text", norm)
            return ("text-exact", context)
        if isinstance(context, Sequence) or isinstance(context, np.ndarray):
            items = tuple(str(x) for x in context)
            if self.near_duplicates and self.history_suffix is not None:
                items = items[-self.history_suffix:]
            return ("history", items)
        return None

    @staticmethod
    def _exact(context) -> Hashable:
        return context if isinstance(context, (str, bytes)) else tuple(str(x) for x in context)

    def get(self, context, k: int) -> list | None:
        """The cached top-``k`` for ``context`` (a new list), or None."""
        key = self.key(context)
        if key is None:
            return None
        s = self.store
        with s._lock:
            e = s._lookup(key)
            exact, stored_k, hits = e.value if e is not None else (None, -1, None)
            ok = e is not None and (stored_k >= k or len(hits) < stored_k)  # fewer than stored_k = all there is
            s.record(ok)
            if ok and exact != self._exact(context):
                self.near_hits += 1
        return list(hits[:k]) if ok else None

    def put(self, context, k: int, hits: Sequence) -> bool:
        """Store the top-``k`` answer for ``context``; False if not cacheable or too large."""
        key = self.key(context)
        return False if key is None else self.store.put(key, (self._exact(context), k, tuple(hits)))

    def clear(self, *_ignored) -> None:
        self.store.clear()

    def __len__(self) -> int:
        return len(self.store)

    def stats(self) -> dict:
        return {**self.store.stats(), "near_hits": self.near_hits}


class EmbeddingCache:
    """Frequent items / queries -> numpy vectors, bytes-bounded (LFU by default).

    Stored vectors are read-only copies, so a caller cannot corrupt the cache.

    >>> c = EmbeddingCache(max_bytes=10_000)
    >>> v = c.get_or_compute("i1", lambda: np.ones(4, np.float32))
    >>> c.get("i1").tolist(), c.get("i1").flags.writeable
    ([1.0, 1.0, 1.0, 1.0], False)
    """

    def __init__(self, max_bytes: int = 8 << 20, max_entries: int | None = None, *, policy: str = "lfu",
                 ttl_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = BoundedCache(max_entries, max_bytes, ttl_s=ttl_s, policy=policy, clock=clock)

    @staticmethod
    def _frozen(v) -> np.ndarray:
        a = np.array(v, copy=True)
        a.setflags(write=False)
        return a

    def get(self, key: Hashable) -> np.ndarray | None:
        return self.store.get(key)

    def put(self, key: Hashable, vector) -> bool:
        return self.store.put(key, self._frozen(vector))

    def get_or_compute(self, key: Hashable, fn: Callable[[], Any]) -> np.ndarray:
        return self.store.get_or_compute(key, lambda: self._frozen(fn()))

    def __len__(self) -> int:
        return len(self.store)

    def clear(self, *_ignored) -> None:
        self.store.clear()

    def stats(self) -> dict:
        return self.store.stats()


def memo(fn: Callable[[np.ndarray], Any], cache: BoundedCache | None = None) -> Callable[[np.ndarray], Any]:
    """Encoder-output cache hook: ``memo(encode)(x)`` computes ``encode(x)`` once per distinct
    input array (keyed by :func:`array_key`). Array outputs come back read-only. The
    wrapper's ``.cache`` gives ``stats()``.

    >>> calls = []
    >>> enc = memo(lambda x: calls.append(1) or x * 2)
    >>> enc(np.arange(3)).tolist(), enc(np.arange(3)).tolist(), len(calls), enc.cache.stats()["hits"]
    ([0, 2, 4], [0, 2, 4], 1, 1)
    """
    cache = cache if cache is not None else BoundedCache(max_entries=None, max_bytes=16 << 20)

    def compute(x):
        out = fn(x)
        if isinstance(out, np.ndarray):
            out.setflags(write=False)
        return out

    def wrapper(x):
        x = np.asarray(x)
        return cache.get_or_compute(array_key(x), lambda: compute(x))

    wrapper.cache = cache
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    return wrapper


class CachedRetriever:
    """A retriever with a :class:`PredictionCache` in front: same ``search`` signature,
    other attributes (``variants``, ``switch`` ...) delegated to the wrapped retriever.
    Errors are never cached; two concurrent misses on one key both compute.

    >>> class R:
    ...     calls = 0
    ...     def search(self, q, k=10):
    ...         R.calls += 1
    ...         return [("John.3.16", -0.1)][:k]
    >>> r = CachedRetriever(R())
    >>> r.search("God so loved"), r.search("god so loved!"), R.calls
    ([('John.3.16', -0.1)], [('John.3.16', -0.1)], 1)
    """

    def __init__(self, retriever, cache: PredictionCache | None = None):
        self.retriever = retriever
        self.cache = cache if cache is not None else PredictionCache()

    def search(self, query, k: int = 10) -> list:
        hits = self.cache.get(query, k)
        if hits is None:
            hits = self.retriever.search(query, k)
            self.cache.put(query, k, hits)
        return hits

    def search_many(self, queries: Sequence, k: int = 10) -> list[list]:
        """Cached answers where there are; the misses go to the retriever in one ``search_many`` (if it has one)."""
        out = [self.cache.get(q, k) for q in queries]
        todo = [i for i, h in enumerate(out) if h is None]
        if todo:
            many = getattr(self.retriever, "search_many", None)
            fresh = many([queries[i] for i in todo], k) if many else [self.retriever.search(queries[i], k) for i in todo]
            for i, hits in zip(todo, fresh):
                self.cache.put(queries[i], k, hits)
                out[i] = list(hits)
        return out

    def clear(self, *_ignored) -> None:
        self.cache.clear()

    def stats(self) -> dict:
        return {"prediction": self.cache.stats()}

    def __getattr__(self, name):
        if name == "retriever":  # not yet set (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.retriever, name)
