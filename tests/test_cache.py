"""Device caches: prediction, embedding, encoder memo, cached retriever (issue #4, item 5)."""

import doctest
import threading

import numpy as np
import pytest

import edge_gr.cache
from edge_gr.cache import (BoundedCache, CachedRetriever, EmbeddingCache, PredictionCache, array_key, estimate_bytes,
                           memo, normalize_text)
from edge_gr.errors import InputError


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class CountingRetriever:
    def __init__(self):
        self.calls = []

    def search(self, q, k=10):
        self.calls.append(q)
        key = q if isinstance(q, str) else "|".join(q)
        return [(f"{key}#{i}", -float(i)) for i in range(k)]


def test_docstring_examples():
    r = doctest.testmod(edge_gr.cache, optionflags=doctest.ELLIPSIS)
    assert r.attempted > 0 and r.failed == 0


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_eviction_order(policy):
    c = BoundedCache(max_entries=3, max_bytes=None, policy=policy)
    for k in "abc":
        c.put(k, k)
    for _ in range(3):
        c.get("a")          # a: used often and recently
    c.get("b")              # b: used once, recently; c: never used after insertion
    c.put("d", "d")
    assert sorted(c.keys()) == ["a", "b", "d"]   # both evict c
    c.get("d"), c.get("d"), c.get("d"), c.get("b")
    c.put("e", "e")
    # lru: a was read before d and b -> a goes; lfu (put counts as a use): b 3 uses, d 4, a 4 -> b goes
    assert sorted(c.keys()) == (["b", "d", "e"] if policy == "lru" else ["a", "d", "e"])
    assert c.stats()["evictions"] == 2


def test_ttl_expiry_with_a_fake_clock():
    clock = FakeClock()
    c = PredictionCache(ttl_s=60, clock=clock)
    c.put("q", 5, ["x"])
    clock.t = 59.9
    assert c.get("q", 5) == ["x"]
    clock.t = 60.0
    assert c.get("q", 5) is None and len(c) == 0
    s = c.stats()
    assert (s["hits"], s["misses"], s["expirations"]) == (1, 1, 1)
    c.put("q", 5, ["y"])      # re-put restarts the TTL
    clock.t = 100
    assert c.get("q", 5) == ["y"]


def test_byte_bound_is_respected():
    c = EmbeddingCache(max_bytes=20_000, policy="lru")
    one = estimate_bytes(np.zeros(256, np.float32)) + estimate_bytes("item-000")
    for i in range(100):
        c.put(f"item-{i:03d}", np.full(256, i, np.float32))
        assert c.stats()["bytes"] <= 20_000
    assert len(c) == 20_000 // one and c.get("item-099")[0] == 99 and c.get("item-000") is None
    assert not c.put("huge", np.zeros(10_000, np.float32)) and c.stats()["rejected"] == 1  # larger than the whole cache
    p = PredictionCache(max_entries=None, max_bytes=5_000)
    for i in range(200):
        p.put(f"query number {i}", 10, [(f"doc{j}", -1.0 * j) for j in range(10)])
        assert p.store.nbytes <= 5_000
    assert 0 < len(p) < 200
    with pytest.raises(InputError):
        BoundedCache(max_bytes=0)


def test_near_duplicate_keys():
    assert normalize_text("Ｆor GOD so   loved,\tthe World!") == "for god so loved the world"
    c = PredictionCache(history_suffix=3)
    c.put("For God so loved the world", 10, ["John.3.16"])
    assert c.get("for god so loved the world!!", 5) == ["John.3.16"]
    assert c.get("  FOR god, so loved the   world ", 5) == ["John.3.16"]
    assert c.get("for god so loved the word", 5) is None
    c.put(["i1", "i2", "i3", "i4"], 1, ["i5"])
    assert c.get(["i9", "i2", "i3", "i4"], 1) == ["i5"]        # same last 3 items
    assert c.get(["i2", "i3", "i4", "i1"], 1) is None           # order matters
    assert c.get(("i1", "i2", "i3", "i4"), 2) is None           # asked for more than was computed
    c.put(["i1"], 5, ["i2", "i3"])                              # fewer than k came back: that is all there is
    assert c.get(["i1"], 50) == ["i2", "i3"]
    s = c.stats()
    assert (s["hits"], s["near_hits"], s["misses"]) == (4, 3, 3)
    exact = PredictionCache(near_duplicates=False)
    exact.put("Star Wars", 10, ["x"])
    assert exact.get("star wars", 10) is None and exact.get("Star Wars", 10) == ["x"]
    exact.put(["a", "b"], 10, ["c"])
    assert exact.get(["z", "b"], 10) is None and exact.get(["a", "b"], 10) == ["c"]


def test_cached_retriever_hit_rate_and_stats():
    r = CountingRetriever()
    cr = CachedRetriever(r, PredictionCache(history_suffix=2))
    queries = ["star wars", "Star Wars!", "alien", "STAR  WARS", "alien", "heat"]
    answers = [cr.search(q, 3) for q in queries]
    assert r.calls == ["star wars", "alien", "heat"]
    assert answers[1] == answers[0] and len(answers[0]) == 3
    assert cr.search("star wars", 2) == answers[0][:2]           # k=2 served from the k=3 answer
    assert cr.search(["a", "b", "c"], 2) == cr.search(["x", "b", "c"], 2)
    s = cr.stats()["prediction"]
    assert (s["hits"], s["misses"]) == (5, 4) and s["hit_rate"] == pytest.approx(5 / 9)
    many = cr.search_many(["alien", "new one", "heat"], 3)
    assert [m[0][0] for m in many] == ["alien#0", "new one#0", "heat#0"] and r.calls[-1] == "new one"
    cr.clear()
    assert len(cr.cache) == 0


def test_errors_are_not_cached():
    class Failing:
        n = 0

        def search(self, q, k=10):
            Failing.n += 1
            raise InputError("the query is empty", hint="type something")

    cr = CachedRetriever(Failing())
    for _ in range(2):
        with pytest.raises(InputError):
            cr.search("!!!", 3)
    assert Failing.n == 2 and len(cr.cache) == 0


def test_memo_and_array_key():
    calls = []

    def encoder(x):
        calls.append(x.shape)
        return x.astype(np.float32) @ np.ones((x.shape[-1], 2), np.float32)

    enc = memo(encoder, BoundedCache(max_entries=2, max_bytes=None))
    a = np.arange(6).reshape(2, 3)
    out = enc(a)
    assert enc(a.copy()) is out and len(calls) == 1            # same bytes -> same entry
    assert not out.flags.writeable
    enc(a.reshape(3, 2))                                        # same bytes, other shape -> another entry
    enc(a.astype(np.int32))                                     # other dtype -> another entry
    assert len(calls) == 3 and enc.cache.stats()["evictions"] == 1
    assert array_key(np.arange(3)) != array_key(np.arange(3, dtype=np.int8))
    assert array_key(np.arange(10)[::2]) == array_key(np.array([0, 2, 4, 6, 8]))  # non-contiguous views work


def test_thread_safety_basic():
    c = PredictionCache(max_entries=64, max_bytes=64 * 1024)
    emb = EmbeddingCache(max_bytes=32 * 1024)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(2000):
                i = int(rng.integers(0, 200))
                if c.get(f"q{i}", 5) is None:
                    c.put(f"q{i}", 5, [f"d{i}"] * 5)
                emb.get_or_compute(i, lambda: np.full(16, i, np.float32))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s, e = c.stats(), emb.stats()
    assert s["hits"] + s["misses"] == 8000 and e["hits"] + e["misses"] == 8000
    assert s["entries"] <= 64 and s["bytes"] <= 64 * 1024 and e["bytes"] <= 32 * 1024
    assert s["bytes"] == sum(x.nbytes for x in c.store._d.values())   # the byte count stayed consistent
    assert all(emb.get(k)[0] == k for k in emb.store.keys())


def test_mods_compose_cache_clears_on_a_variant_switch():
    """cache -> switcher -> retriever: a switch empties the cache, so answers come from the new variant."""
    from edge_gr.policy import DeviceState, VariantPolicy, VariantSwitcher

    class R:
        variants, variant = ["fp16", "int8", "int4"], "fp16"

        def switch(self, v):
            R.variant = v

        def search(self, q, k=10):
            return [(R.variant, 0.0)]

    sw = VariantSwitcher(R(), VariantPolicy(R.variants))
    cr = CachedRetriever(sw)
    sw.on_switch.append(cr.clear)
    assert cr.search("q") == [("fp16", 0.0)] and cr.search("q") == [("fp16", 0.0)]
    sw.update(DeviceState(0.1))
    assert cr.search("q") == [("int4", 0.0)] and cr.stats()["prediction"]["hits"] == 1
    assert cr.variants == R.variants  # other attributes pass through to the wrapped retriever
