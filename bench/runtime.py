"""Device runtime benchmark (issue #4): every backend x precision of a bundle, at 1 thread,
against the on-device dense peer and the cloud path, measured in one run on the same queries.

For the MovieLens-1M recommender and the Bible retrieval model trained by ``bench/core.py``
(``.cache/bench_ckpts``): export one bundle each (all variants), then per variant measure
the files' size, cold load (verify + open + one test run; Python imports excluded), p50/p99
latency of one top-10 query (beam 20), overlap@10 with the eager fp32 model and Recall@10
against the test targets. In the same run, on the same queries:

* the eager fp32 :class:`GenerativeModel` (cloud code path, in-process) - the reference row;
* the dense peer (the on-device alternative): Bible = ``server.peers.dense.DensePeer``
  (MiniLM query encoding + exact faiss inner product over the 31k verses, both at 1 thread);
  ML-1M = the mean of the history items' MiniLM vectors -> exact faiss search, seen items
  removed (a weak recommender: the point is its latency, there is no query encoder);
* the cloud path over loopback HTTP: ``server/serve.py``'s app under uvicorn on 127.0.0.1
  in a background thread, queried with urllib (round trip), and the hybrid client
  (``HybridClient(mode="refine")``, local = an int8 variant);
* cache telemetry: ``edge_gr.cache.CachedRetriever`` in front of an int8 variant, fed each
  query once, then (shuffled) the same query again and a near-duplicate of it.

Ratios for int8 rows: ``dense_p50 / p50`` and p99 against the 3 ms target.
``measure(name, search_fn, queries)`` is generic: every row is built the same way.

    .venv/bin/python bench/runtime.py [--queries 300] [--variants executorch:fp32,...] [--skip-export]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

RESULTS = ROOT / "bench" / "results"
K, BEAM = 10, 20


def measure(name: str, search_fn: Callable[[object], Sequence[str]], queries: Sequence, *, ref: list[list[str]] | None = None,
            warmup: int = 3, **extra) -> tuple[dict, list[list[str]]]:
    """Run ``search_fn(query) -> top-k ids`` on every query one at a time.

    Returns the row (``name``, p50/p99 ms, overlap@10 with ``ref`` if given, plus ``extra``)
    and the ranked ids (to serve as another row's ``ref``).
    """
    for q in queries[:warmup]:
        search_fn(q)
    times, out = [], []
    for q in queries:
        t = time.perf_counter()
        ids = list(search_fn(q))
        times.append((time.perf_counter() - t) * 1e3)
        out.append(ids)
    row = {"name": name, **extra, "n_queries": len(queries), "p50_ms": float(np.percentile(times, 50)),
           "p99_ms": float(np.percentile(times, 99))}
    if ref is not None:
        row["overlap@10"] = float(np.mean([len(set(a[:K]) & set(b[:K])) / max(1, min(K, len(b))) for a, b in zip(out, ref)]))
    return row, out


def _machine() -> str:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for p in ("torch", "executorch", "torchao", "onnxruntime", "ai-edge-litert", "litert-torch"):
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


P99_TARGET_MS = 3.0  # issue #4 acceptance: int8 on ExecuTorch, p99 <= 3 ms at 1 thread
SPEEDUP_TARGET = 5.0  # p50 >= 5x faster than the dense peer
ML_BUNDLE_TARGET_MB = 5.0  # a one-variant ML-1M bundle (variant + shared files) <= 5 MB
LABEL = {"rec": "ML-1M rec", "retrieval": "Bible retrieval"}


def _queries(task: str, stage: Path, n: int):
    """``(queries, relevant id sets, catalogue items)`` for ``n`` seeded random test queries."""
    from server.data.jsonl import load_rec_jsonl, load_retrieval_jsonl

    rng = np.random.default_rng(0)
    if task == "rec":
        data = load_rec_jsonl(stage / "ml-1m" / "items.jsonl.gz", stage / "ml-1m" / "interactions.jsonl.gz", name="ml-1m")
        split = data.split()
        users = sorted(split.test_target)
        pick = rng.choice(len(users), size=min(n, len(users)), replace=False)
        return ([split.test_history(users[i]) for i in pick], [{split.test_target[users[i]]} for i in pick], data.items)
    b = stage / "bible"
    data = load_retrieval_jsonl(b / "docs.jsonl.gz", b / "train.jsonl.gz", b / "test.jsonl.gz", name="bible")
    pick = rng.choice(len(data.test), size=min(n, len(data.test)), replace=False)
    return [data.test[i].text for i in pick], [set(data.test[i].relevant) for i in pick], data.docs


def _overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x[:K]) & set(y[:K])) / max(1, min(K, len(y))) for x, y in zip(a, b)]))


# -- the dense peer -------------------------------------------------------------------------
def dense_peer(task: str, items) -> tuple[Callable, dict]:
    """``(search_fn, extra row fields)`` of the on-device dense alternative, at 1 thread."""
    import faiss
    import torch

    from server.embed import DIM, embed_texts, load_encoder

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if task == "retrieval":
        from server.peers.dense import DensePeer

        t = time.perf_counter()
        load_encoder.cache_clear()
        load_encoder()
        peer = DensePeer().fit(items)  # corpus vectors from the embedding cache (encoding 31k verses takes ~10 min)
        load_ms = (time.perf_counter() - t) * 1e3
        return (lambda q: [i for i, _ in peer.search([q], K)[0]]), dict(
            backend="dense-minilm", precision="fp32", size_mb=peer.size_bytes() / 1e6, cold_load_ms=load_ms,
            note="MiniLM-L6 query encoding (per query, uncached) + exact faiss IndexFlatIP over 31,102 verses; "
                 "size = MiniLM folder + index")
    vecs = embed_texts([it.text for it in items], show_progress=False)  # item texts (title | genres), cached
    ids = [it.id for it in items]
    pos = {x: i for i, x in enumerate(ids)}
    t = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(vecs)
    load_ms = (time.perf_counter() - t) * 1e3

    def search(h):
        rows = [pos[x] for x in h if x in pos]
        q = vecs[rows].mean(0, keepdims=True) if rows else vecs.mean(0, keepdims=True)
        q /= max(float(np.linalg.norm(q)), 1e-12)
        seen = set(h)
        _, idx = index.search(q, min(len(ids), K + len(seen)))
        return [ids[i] for i in idx[0] if i >= 0 and ids[i] not in seen][:K]

    return search, dict(backend="dense-minilm", precision="fp32", size_mb=vecs.nbytes / 1e6, cold_load_ms=load_ms,
                        note="weak rec peer (the point is latency): mean of the history items' MiniLM vectors "
                             "(item text = title | genres, precomputed, no encoder at query time) -> exact faiss "
                             "IndexFlatIP over 3,706 items, seen items removed; size = item vectors only")


# -- the cloud path ---------------------------------------------------------------------------
class LoopbackServer:
    """``server/serve.py``'s app under uvicorn on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, gm, beam: int = BEAM):
        import socket
        import threading

        import uvicorn

        from server.serve import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(gm, beam=beam), host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="bench-uvicorn")
        self.thread.start()
        t = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t > 60 or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def cloud_fn(url: str, server_ms: list[float]) -> Callable:
    """One POST /search per query (a new connection each, as urllib does), no proxies."""
    import urllib.request

    from edge_gr.hybrid import HybridClient

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def search(q):
        req = urllib.request.Request(url + "/search", data=json.dumps(HybridClient.body(q, K)).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with opener.open(req, timeout=30) as r:
            payload = json.loads(r.read())
        server_ms.append(payload["latency_ms"])
        return [h["item_id"] for h in payload["items"]]

    return search


# -- cache telemetry --------------------------------------------------------------------------
def near_duplicate(q):
    """A near-duplicate the PredictionCache should serve: a history without its oldest item
    (same last 10), or a text with a capital first letter and a trailing '?'."""
    if isinstance(q, str):
        return q[:1].upper() + q[1:] + "?"
    return list(q[1:]) if len(q) > 10 else None


def cache_telemetry(retriever, queries: Sequence, seed: int = 0, max_bytes: int = 4 << 20) -> dict:
    """Each query once (cold), then - shuffled - every query again (exact hit expected) and a
    near-duplicate of it (suffix / normalized-text hit expected), through ``CachedRetriever``
    with a ``PredictionCache`` of default settings (1024 entries, TTL 600 s, history suffix 10)
    and ``max_bytes`` (default 4 MB, the class default)."""
    from edge_gr.cache import CachedRetriever, PredictionCache

    cr = CachedRetriever(retriever, PredictionCache(max_bytes=max_bytes))
    again = [(q, "exact") for q in queries] + [(d, "near") for d in map(near_duplicate, queries) if d is not None]
    order = np.random.default_rng(seed).permutation(len(again))
    events = [(q, "first") for q in queries] + [again[i] for i in order]
    times = {"hit": [], "miss": []}
    kind_hits = {"first": 0, "exact": 0, "near": 0}
    near_pairs = []
    for q, kind in events:
        before = cr.cache.stats()["hits"]
        t = time.perf_counter()
        hits = cr.search(q, K)
        ms = (time.perf_counter() - t) * 1e3
        hit = cr.cache.stats()["hits"] > before
        times["hit" if hit else "miss"].append(ms)
        kind_hits[kind] += hit
        if kind == "near" and hit:
            near_pairs.append((q, [h.item_id for h in hits]))
    fresh = [[h.item_id for h in retriever.search(q, K, beam=BEAM)] for q, _ in near_pairs]  # what the model says without the cache
    st = cr.cache.stats()
    return {"events": len(events), "first": len(queries), "exact_repeats": len(queries),
            "near_duplicates": len(again) - len(queries), "hits": st["hits"], "near_hits": st["near_hits"],
            "misses": st["misses"], "hit_rate": st["hits"] / len(events),
            "first_query_hits": kind_hits["first"],  # test queries that repeat an earlier one (same key)
            "exact_hit_rate": kind_hits["exact"] / max(1, len(queries)),
            "near_hit_rate": kind_hits["near"] / max(1, len(again) - len(queries)),
            "p50_hit_ms": float(np.percentile(times["hit"], 50)) if times["hit"] else None,
            "p99_hit_ms": float(np.percentile(times["hit"], 99)) if times["hit"] else None,
            "p50_miss_ms": float(np.percentile(times["miss"], 50)) if times["miss"] else None,
            "near_hit_overlap@10_vs_fresh": _overlap([h for _, h in near_pairs], fresh) if near_pairs else None,
            "max_bytes": max_bytes, "evictions": st["evictions"], "rejected": st["rejected"],
            "cache_entries": st["entries"], "cache_bytes": st["bytes"], "mean_entry_bytes": st["bytes"] / max(1, st["entries"])}


# -- one model --------------------------------------------------------------------------------
def run(task: str, ckpt: Path, stage: Path, bundle_dir: Path, n: int, variants, skip_export: bool, *,
        local_variant: str = "executorch-int8", peers: bool = True) -> tuple[list[dict], dict]:
    import torch

    import edge_gr
    from edge_gr.bundle import load_manifest
    from edge_gr.hybrid import HybridClient
    from server.export.bundle import export_bundle
    from server.generative import GenerativeModel
    from server.metrics import rank_metrics

    torch.set_num_threads(1)
    gm = GenerativeModel.load(ckpt)
    label = LABEL[task]
    queries, relevant, items = _queries(task, stage, n)
    export_s = None
    if not (skip_export and (bundle_dir / "manifest.json").is_file()):
        t = time.perf_counter()
        export_bundle(gm, bundle_dir, variants, model_version=f"bench-{task}")
        export_s = time.perf_counter() - t
    t = time.perf_counter()
    m = load_manifest(bundle_dir)  # what every load does first: sha256 + size of *every* file of the bundle
    verify_ms = (time.perf_counter() - t) * 1e3
    shared_mb = sum(f.size for f in m.files.values()) / 1e6
    outs: dict[str, list[list[str]]] = {}

    def add(row, out):
        rows.append(row)
        outs[row["name"]] = out
        print(json.dumps(row), flush=True)

    ref_row, ref = measure(f"{label} / eager torch fp32 (server)", lambda q: [i for i, _ in gm.search(q, K, beam=BEAM)], queries,
                           task=task, backend="torch-eager", precision="fp32", size_mb=gm.size_bytes() / 1e6, cold_load_ms=None)
    ref_row["overlap@10"] = 1.0
    rows: list[dict] = []
    add(ref_row, ref)
    retrievers = {}
    for v in m.variants:
        loads = []
        try:
            for _ in range(3):  # single loads are noisy on a shared 2-core machine: report the first and the median of 3
                t = time.perf_counter()
                r = edge_gr.load(bundle_dir, variant=v.name, threads=1)
                loads.append((time.perf_counter() - t) * 1e3)
        except edge_gr.EdgeGRError as e:
            rows.append({"name": f"{label} / {v.name}", "task": task, "backend": v.backend, "precision": v.precision, "error": str(e)})
            continue
        row, out = measure(f"{label} / {v.name}", lambda q: [h.item_id for h in r.search(q, K, beam=BEAM)], queries, ref=ref,
                           task=task, backend=v.backend, precision=v.precision, size_mb=v.size / 1e6,
                           deploy_mb=v.size / 1e6 + shared_mb, cold_load_ms=float(np.median(loads)), first_load_ms=loads[0])
        add(row, out)
        if v.precision == "int8":
            retrievers[v.name] = r
    extra: dict = {}
    if peers:
        fn, fields = dense_peer(task, items)
        row, out = measure(f"{label} / dense MiniLM + faiss (on-device peer)", fn, queries, ref=ref, task=task, **fields)
        add(row, out)
        dense_name = row["name"]
        local_name = local_variant if local_variant in retrievers else next(iter(retrievers), None)
        srv = LoopbackServer(gm, beam=BEAM)
        try:
            server_ms: list[float] = []
            row, out = measure(f"{label} / cloud: eager fp32 over loopback HTTP", cloud_fn(srv.url, server_ms), queries, ref=ref,
                               task=task, backend="cloud-http", precision="fp32", size_mb=None, cold_load_ms=None,
                               note="uvicorn + FastAPI (server/serve.py) on 127.0.0.1, same process and cores; urllib round trip")
            row["server_decode_p50_ms"] = float(np.percentile(server_ms[-len(queries):], 50))
            add(row, out)
            if local_name is not None:
                hc = HybridClient(retrievers[local_name], srv.url, mode="refine", timeout_s=5.0, proxies={})
                row, out = measure(f"{label} / hybrid refine ({local_name} + cloud)",
                                   lambda q: [h.item_id for h in hc.answer(q, K).hits], queries, ref=ref, task=task,
                                   backend="hybrid-refine", precision=f"{local_name} + fp32", size_mb=None, cold_load_ms=None,
                                   note="HybridClient(mode='refine', timeout_s=5): cloud request and local search run concurrently")
                row["hybrid_stats"] = hc.stats()
                add(row, out)
        finally:
            srv.close()
        if local_name is not None:
            # the class default (4 MB) and one large enough for every entry of this pattern
            extra["cache"] = [{"retriever": local_name, **cache_telemetry(retrievers[local_name], queries, max_bytes=mb << 20)}
                              for mb in (4, 64)]
            print(json.dumps(extra["cache"]), flush=True)
        dense = next(r for r in rows if r["name"] == dense_name)
        for row in rows:
            if row["name"] in outs:
                row["overlap@10_vs_dense"] = _overlap(outs[row["name"]], outs[dense_name])
            if row.get("precision") == "int8" and "p50_ms" in row:
                row["speedup_p50_vs_dense"] = dense["p50_ms"] / row["p50_ms"]
                row["p99_target_ms"] = P99_TARGET_MS
                row["p99_over_target"] = row["p99_ms"] / P99_TARGET_MS
                row["meets_p99_target"] = row["p99_ms"] <= P99_TARGET_MS
                row["meets_speedup_target"] = row["speedup_p50_vs_dense"] >= SPEEDUP_TARGET
    for row in rows:
        if row["name"] in outs:
            met = rank_metrics(outs[row["name"]], relevant)
            row["recall@10"], row["ndcg@10"] = met["recall@10"], met["ndcg@10"]
        row["shared_files_mb"] = shared_mb  # ids + catalogue + tokenizer/popularity, common to every variant
        row["bundle_mb"] = shared_mb + sum(v.size for v in m.variants) / 1e6
        row["verify_bundle_ms"] = verify_ms  # part of every cold load
    if export_s is not None:
        rows[0]["export_all_variants_s"] = export_s
    cfg = gm.model.cfg
    extra["model"] = {"d_model": cfg.d_model, "n_enc_layers": cfg.n_enc_layers, "n_dec_layers": cfg.n_dec_layers,
                      "params": int(sum(p.numel() for p in gm.model.parameters())), "fp32_mb": gm.size_bytes() / 1e6,
                      "note": ("the exported model is the 2x128 model (2 encoder + 2 decoder layers, d_model 128) - "
                               "student-sized already" if task == "rec" else
                               "the exported model is the 4+2 layers x 256 teacher-sized Bible model (4 encoder + "
                               "2 decoder layers, d_model 256), not a 2x128 student: its latencies are above a student's")}
    extra["n_queries"] = len(queries)
    return rows, extra


def acceptance(res: dict) -> list[dict]:
    """The issue's acceptance lines, with the measured value and gap."""
    out = []
    rows = [r for r in res["rows"] if "error" not in r]
    for task, label in LABEL.items():
        et = next((r for r in rows if r["task"] == task and r["backend"] == "executorch" and r["precision"] == "int8"), None)
        if et:
            out.append({"line": f"{label}: int8 on ExecuTorch p99 <= {P99_TARGET_MS:g} ms", "measured": f"{et['p99_ms']:.2f} ms",
                        "met": et["p99_ms"] <= P99_TARGET_MS,
                        "gap": f"{et['p99_ms'] - P99_TARGET_MS:+.2f} ms ({et['p99_ms'] / P99_TARGET_MS:.1f}x the target)"})
        for r in rows:
            if r["task"] == task and "speedup_p50_vs_dense" in r:
                out.append({"line": f"{label}: {r['backend']} int8 p50 >= {SPEEDUP_TARGET:g}x faster than dense"
                                    + (" (this dense peer has no query encoder: not a like-for-like latency)" if task == "rec" else ""),
                            "measured": f"{r['speedup_p50_vs_dense']:.2f}x", "met": r["speedup_p50_vs_dense"] >= SPEEDUP_TARGET,
                            "gap": f"needs p50 <= {next(x for x in rows if x['task'] == task and x['backend'] == 'dense-minilm')['p50_ms'] / SPEEDUP_TARGET:.2f} ms, has {r['p50_ms']:.2f} ms"})
    for r in rows:
        if r["task"] == "rec" and r.get("precision") == "int8" and "deploy_mb" in r:
            out.append({"line": f"ML-1M bundle <= {ML_BUNDLE_TARGET_MB:g} MB ({r['backend']} int8 + shared files)",
                        "measured": f"{r['deploy_mb']:.2f} MB", "met": r["deploy_mb"] <= ML_BUNDLE_TARGET_MB,
                        "gap": f"{r['deploy_mb'] - ML_BUNDLE_TARGET_MB:+.2f} MB"})
    return out


def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['machine']} (1 thread, top-{K}, beam {BEAM}, {res['n_queries']} queries per model; "
             "every row of a model on the same queries in one run).", ""]
    if res.get("loadavg_1_5_15_before_after"):
        b, a = res["loadavg_1_5_15_before_after"]
        lines[-1:-1] = [f"Machine load average (1 min) {b[0]:.1f} before and {a[0]:.1f} after the run: the 2 cores are shared with other work."]
    seen = set()
    for r in res["rows"]:
        model = r["name"].split(" / ")[0]
        if model not in seen and "bundle_mb" in r:
            seen.add(model)
            nv = len([x for x in res["rows"] if x["name"].startswith(model) and x["backend"] in
                      ("executorch", "onnxruntime", "litert", "torch")])
            lines.append(f"* {model}: whole bundle ({nv} variants) "
                         f"{r['bundle_mb']:.1f} MB, of which shared files (IDs, catalogue, tokenizer/popularity) {r['shared_files_mb']:.1f} MB; "
                         f"verifying it (sha256 of every file) takes {r['verify_bundle_ms']:.0f} ms and is part of every cold load below.")
    for task, info in res.get("models", {}).items():
        lines.append(f"* {LABEL[task]} model: {info['params'] / 1e6:.2f}M parameters, fp32 {info['fp32_mb']:.1f} MB; {info['note']}.")
    lines += ["",
              "| model | backend | precision | variant MB | cold load ms | p50 ms | p99 ms | overlap@10 vs eager | Recall@10 | overlap@10 vs dense | dense p50 / p50 |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        m = r["name"].split(" / ")[0]
        if "error" in r:
            lines.append(f"| {m} | {r['backend']} | {r['precision']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(f"| {m} | {r['backend']} | {r['precision']} | {_f(r.get('size_mb'))} | {_f(r.get('cold_load_ms'), '{:.0f}')} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_f(r.get('overlap@10'), '{:.3f}')} | {_f(r.get('recall@10'), '{:.3f}')} | "
                     f"{_f(r.get('overlap@10_vs_dense'), '{:.3f}')} | {_f(r.get('speedup_p50_vs_dense'), '{:.2f}x')} |")
    notes = [r for r in res["rows"] if r.get("note")]
    if notes:
        lines += ["", "Reference rows:"]
        for r in notes:
            extra = f" (server-side decode p50 {r['server_decode_p50_ms']:.2f} ms)" if "server_decode_p50_ms" in r else ""
            if "hybrid_stats" in r:
                s = r["hybrid_stats"]
                extra = f" (served by cloud {s['served_cloud']}/{s['requests']}, local {s['served_local']})"
            lines.append(f"* {r['name']}: {r['note']}{extra}.")
    if res.get("cache"):
        lines += ["", "Cache telemetry (`CachedRetriever` + `PredictionCache`: 1024 entries, TTL 600 s, history suffix 10; "
                  "max_bytes 4 MB = the class default, and 64 MB):", "",
                  "| model | retriever | max MB | events | hit rate | exact-repeat hit rate | near-duplicate hit rate | evictions | mean entry KB | p50 hit ms | p99 hit ms | p50 miss ms | near-hit overlap@10 vs fresh |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for task, cs in res["cache"].items():
            for c in cs:
                lines.append(f"| {LABEL[task]} | {c['retriever']} | {c['max_bytes'] >> 20} | {c['events']} | {c['hit_rate']:.3f} | {c['exact_hit_rate']:.3f} | "
                             f"{c['near_hit_rate']:.3f} | {c['evictions']} | {c['mean_entry_bytes'] / 1e3:.1f} | "
                             f"{_f(c['p50_hit_ms'], '{:.3f}')} | {_f(c['p99_hit_ms'], '{:.3f}')} | "
                             f"{_f(c['p50_miss_ms'])} | {_f(c['near_hit_overlap@10_vs_fresh'], '{:.3f}')} |")
        lines += ["", "Pattern: every test query once, then shuffled: the same query again and a near-duplicate "
                  "(rec: the history without its oldest item; Bible: capital first letter + '?'). The hit rate is set by "
                  "this pattern (2/3 at most) and, with long histories, by the byte budget: an entry keeps the whole exact history; "
                  "the point is the cost of a hit and whether near-duplicate answers match a fresh search."]
    if res.get("acceptance"):
        lines += ["", "Acceptance (issue #4):", ""]
        for a in res["acceptance"]:
            lines.append(f"* [{'x' if a['met'] else ' '}] {a['line']}: measured {a['measured']} - {'met' if a['met'] else 'NOT met'}, gap {a['gap']}")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    marks = {"torch-eager": "s", "executorch": "o", "onnxruntime": "^", "litert": "D", "torch": "v", "dense-minilm": "*"}
    colors = {"fp32": "tab:blue", "int8": "tab:orange", "int4": "tab:red"}
    tasks = [t for t in LABEL if any(r["task"] == t for r in res["rows"])]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in res["rows"] if r["task"] == task and "error" not in r]
        for r in rows:
            if r.get("size_mb") is None:
                style = "--" if r["backend"] == "cloud-http" else ":"
                ax.axhline(r["p50_ms"], color="gray", ls=style, lw=1)
                ax.annotate(f"{r['backend']} p50 {r['p50_ms']:.1f} ms", (0.01, r["p50_ms"]), xycoords=("axes fraction", "data"),
                            fontsize=7, color="dimgray", va="bottom")
                continue
            dense = r["backend"] == "dense-minilm"
            ax.scatter(r["size_mb"], r["p50_ms"], marker=marks.get(r["backend"], "x"), s=160 if dense else 50,
                       color="black" if dense else colors.get(r["precision"], "gray"), zorder=3)
            ax.annotate(f"{r['backend']} {r['precision']}" if not dense else "dense MiniLM+faiss", (r["size_mb"], r["p50_ms"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.axhline(P99_TARGET_MS, color="green", ls="-.", lw=1)
        ax.annotate(f"{P99_TARGET_MS:g} ms (p99 target)", (0.01, P99_TARGET_MS), xycoords=("axes fraction", "data"), fontsize=7,
                    color="green", va="bottom")
        ax.set_xscale("log")
        from matplotlib.ticker import FormatStrFormatter

        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("size on device, MB (variant files; dense: MiniLM + index, or ML item vectors)")
        ax.set_ylabel("p50 ms per query, 1 thread")
        ax.set_title(f"{LABEL[task]} ({res['n_queries']} queries)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"edge-gr runtime {res['date']}: p50 vs size (colour = precision, marker = backend)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    from server.export.bundle import DEFAULT_VARIANTS, parse_variants
    from server.io import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpts", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--stage-dir", default=str(ROOT / ".cache" / "bench_stage"))
    ap.add_argument("--bundles", default=str(ROOT / ".cache" / "bench_bundles"))
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--tasks", default="rec,retrieval")
    ap.add_argument("--variants", type=parse_variants, default=DEFAULT_VARIANTS)
    ap.add_argument("--skip-export", action="store_true", help="reuse bundles already exported under --bundles")
    ap.add_argument("--local-variant", default="executorch-int8", help="variant behind the hybrid client and the cache")
    ap.add_argument("--no-peers", action="store_true", help="bundle variants only (no dense, cloud, hybrid, cache)")
    ap.add_argument("--out", default=str(RESULTS / "runtime.json"))
    a = ap.parse_args(argv)
    import executorch.kernels.quantized  # noqa: F401  (import every runtime up front: cold load excludes Python imports)
    import onnxruntime  # noqa: F401
    from ai_edge_litert import interpreter  # noqa: F401

    ck = {"rec": "rec-model", "retrieval": "retrieval-model"}
    rows, models, cache = [], {}, {}
    load_before = os.getloadavg()
    for task in a.tasks.split(","):
        r, extra = run(task, Path(a.ckpts) / ck[task], Path(a.stage_dir), Path(a.bundles) / task, a.queries, a.variants,
                       a.skip_export, local_variant=a.local_variant, peers=not a.no_peers)
        rows += r
        models[task] = extra["model"]
        if "cache" in extra:
            cache[task] = extra["cache"]
    res = {"machine": _machine(), "date": datetime.date.today().isoformat(), "versions": _versions(), "k": K, "beam": BEAM,
           "threads": 1, "n_queries": a.queries,
           "loadavg_1_5_15_before_after": [list(load_before), list(os.getloadavg())], "models": models, "rows": rows, "cache": cache,
           "targets": {"p99_ms_int8_executorch": P99_TARGET_MS, "p50_speedup_vs_dense": SPEEDUP_TARGET,
                       "ml_bundle_mb": ML_BUNDLE_TARGET_MB}}
    res["acceptance"] = acceptance(res)
    write_json(a.out, res)
    Path(a.out).with_suffix(".md").write_text(markdown(res))
    plot(res, Path(a.out).with_suffix(".png"))
    print(markdown(res))

if __name__ == "__main__":
    main()
