"""bench/runtime.py's row building, acceptance lines, report and plot on synthetic rows (no models)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location("bench_runtime", ROOT / "bench" / "runtime.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_runtime"] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(backend, precision, p50, p99, size=1.0, task="rec", **kw):
    return {"name": f"{'ML-1M rec' if task == 'rec' else 'Bible retrieval'} / {backend}-{precision}", "task": task, "backend": backend,
            "precision": precision, "size_mb": size, "cold_load_ms": 1.0, "p50_ms": p50, "p99_ms": p99, "overlap@10": 1.0, **kw}


def test_measure_overlap(rt):
    row, out = rt.measure("x", lambda q: ["a", "b"] if q else ["c"], [1, 0], ref=[["a", "z"], ["c"]], warmup=1, task="rec")
    assert out == [["a", "b"], ["c"]] and row["n_queries"] == 2
    assert row["overlap@10"] == pytest.approx(0.75)


def test_acceptance_and_report(rt, tmp_path):
    dense = _row("dense-minilm", "fp32", 10.0, 12.0, size=5.0)
    et = _row("executorch", "int8", 4.0, 6.0, deploy_mb=4.4, speedup_p50_vs_dense=2.5)
    lt = _row("litert", "int8", 1.5, 2.0, deploy_mb=6.0, speedup_p50_vs_dense=10 / 1.5)
    cloud = _row("cloud-http", "fp32", 20.0, 25.0, size=None, cold_load_ms=None, note="loopback", server_decode_p50_ms=15.0)
    res = {"date": "2026-11-26", "machine": "test", "n_queries": 2, "rows": [dense, et, lt, cloud],
           "cache": {"rec": [{"retriever": "executorch-int8", "max_bytes": 4 << 20, "events": 6, "hit_rate": 2 / 3,
                              "exact_hit_rate": 1.0, "near_hit_rate": 1.0, "evictions": 0, "mean_entry_bytes": 2000.0,
                              "p50_hit_ms": 0.01, "p99_hit_ms": 0.02, "p50_miss_ms": 4.0, "near_hit_overlap@10_vs_fresh": 0.9}]}}
    acc = {a["line"]: a for a in rt.acceptance(res)}
    p99 = acc["ML-1M rec: int8 on ExecuTorch p99 <= 3 ms"]
    assert not p99["met"] and p99["gap"].startswith("+3.00 ms")
    assert not acc["ML-1M rec: executorch int8 p50 >= 5x faster than dense (this dense peer has no query encoder: not a like-for-like latency)"]["met"]
    assert acc["ML-1M rec: litert int8 p50 >= 5x faster than dense (this dense peer has no query encoder: not a like-for-like latency)"]["met"]
    assert acc["ML-1M bundle <= 5 MB (executorch int8 + shared files)"]["met"]
    assert not acc["ML-1M bundle <= 5 MB (litert int8 + shared files)"]["met"]
    res["acceptance"] = list(acc.values())
    md = rt.markdown(res)
    assert "| ML-1M rec | cloud-http | fp32 | - | - | 20.00 |" in md and "NOT met" in md and "2.50x" in md and "| executorch-int8 | 4 | 6 | 0.667 |" in md
    rt.plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_near_duplicate_hits_cache(rt):
    class R:
        calls = 0

        def search(self, q, k=10, beam=20):
            R.calls += 1
            from edge_gr.runtime import Hit
            return [Hit(str(len(q)), 0.0, "")]

    hist = [str(i) for i in range(12)]
    assert rt.near_duplicate(hist) == hist[1:] and rt.near_duplicate(hist[:5]) is None
    assert rt.near_duplicate("god so loved") == "God so loved?"
    c = rt.cache_telemetry(R(), [hist, list(reversed(hist))])
    assert c["events"] == 6 and c["misses"] == 2 and c["hits"] == 4 and c["near_hits"] == 2
    assert c["exact_hit_rate"] == 1.0 and c["near_hit_rate"] == 1.0
    assert c["near_hit_overlap@10_vs_fresh"] == 0.0  # the fake's answer depends on the history's length
