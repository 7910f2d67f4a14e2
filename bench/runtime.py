"""Device runtime benchmark (issue #4): every backend x precision of a bundle, at 1 thread.

For the MovieLens-1M recommender and the Bible retrieval model trained by ``bench/core.py``
(``.cache/bench_ckpts``): export one bundle each (all variants), then per variant measure
the files' size, cold load (verify + open + one test run; Python imports excluded), p50/p99
latency of one top-10 query (beam 20) and overlap@10 with the eager fp32 model on the same
queries. The eager fp32 :class:`GenerativeModel` (cloud code path) is measured in the same
run as the reference row. ``measure(name, search_fn, queries)`` is generic so other peers
(dense MiniLM, a cloud round trip) can be added as rows.

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


def _queries(task: str, stage: Path, n: int):
    from server.data.jsonl import load_rec_jsonl, load_retrieval_jsonl

    rng = np.random.default_rng(0)
    if task == "rec":
        data = load_rec_jsonl(stage / "ml-1m" / "items.jsonl.gz", stage / "ml-1m" / "interactions.jsonl.gz", name="ml-1m")
        split = data.split()
        users = sorted(split.test_target)
        pick = rng.choice(len(users), size=min(n, len(users)), replace=False)
        return [split.test_history(users[i]) for i in pick]
    b = stage / "bible"
    data = load_retrieval_jsonl(b / "docs.jsonl.gz", b / "train.jsonl.gz", b / "test.jsonl.gz", name="bible")
    pick = rng.choice(len(data.test), size=min(n, len(data.test)), replace=False)
    return [data.test[i].text for i in pick]


def run(task: str, ckpt: Path, stage: Path, bundle_dir: Path, n: int, variants, skip_export: bool) -> list[dict]:
    import torch

    import edge_gr
    from edge_gr.bundle import load_manifest
    from server.export.bundle import export_bundle
    from server.generative import GenerativeModel

    torch.set_num_threads(1)
    gm = GenerativeModel.load(ckpt)
    label = {"rec": "ML-1M rec", "retrieval": "Bible retrieval"}[task]
    queries = _queries(task, stage, n)
    export_s = None
    if not (skip_export and (bundle_dir / "manifest.json").is_file()):
        t = time.perf_counter()
        export_bundle(gm, bundle_dir, variants, model_version=f"bench-{task}")
        export_s = time.perf_counter() - t
    t = time.perf_counter()
    m = load_manifest(bundle_dir)  # what every load does first: sha256 + size of *every* file of the bundle
    verify_ms = (time.perf_counter() - t) * 1e3
    weights_mb = gm.size_bytes() / 1e6
    ref_row, ref = measure(f"{label} / eager torch fp32 (server)", lambda q: [i for i, _ in gm.search(q, K, beam=BEAM)], queries,
                           task=task, backend="torch-eager", precision="fp32", size_mb=weights_mb, cold_load_ms=None)
    ref_row["overlap@10"] = 1.0
    rows = [ref_row]
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
        load_ms = float(np.median(loads))
        row, _ = measure(f"{label} / {v.name}", lambda q: [h.item_id for h in r.search(q, K, beam=BEAM)], queries, ref=ref,
                         task=task, backend=v.backend, precision=v.precision, size_mb=v.size / 1e6, cold_load_ms=load_ms,
                         first_load_ms=loads[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    bundle_mb = sum(f.size for f in m.files.values()) / 1e6
    for row in rows:
        row["shared_files_mb"] = bundle_mb  # ids + catalogue + tokenizer/popularity, common to every variant
        row["bundle_mb"] = bundle_mb + sum(v.size for v in m.variants) / 1e6
        row["verify_bundle_ms"] = verify_ms  # part of every cold load
    if export_s is not None:
        rows[0]["export_all_variants_s"] = export_s
    return rows


def markdown(res: dict) -> str:
    lines = [f"Measured {res['date']} on {res['machine']} (1 thread, top-{K}, beam {BEAM}, {res['n_queries']} queries per model).", ""]
    seen = set()
    for r in res["rows"]:
        model = r["name"].split(" / ")[0]
        if model not in seen and "bundle_mb" in r:
            seen.add(model)
            lines.append(f"* {model}: whole bundle ({len([x for x in res['rows'] if x['name'].startswith(model)]) - 1} variants) "
                         f"{r['bundle_mb']:.1f} MB, of which shared files (IDs, catalogue, tokenizer/popularity) {r['shared_files_mb']:.1f} MB; "
                         f"verifying it (sha256 of every file) takes {r['verify_bundle_ms']:.0f} ms and is part of every cold load below.")
    lines += ["",
             "| model | backend | precision | variant MB | cold load ms (median of 3) | p50 ms | p99 ms | overlap@10 vs eager fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['name'].split(' / ')[0]} | {r['backend']} | {r['precision']} | failed: {r['error'][:80]} | | | | |")
            continue
        cl = "-" if r.get("cold_load_ms") is None else f"{r['cold_load_ms']:.0f}"
        lines.append(f"| {r['name'].split(' / ')[0]} | {r['backend']} | {r['precision']} | {r['size_mb']:.2f} | {cl} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['overlap@10']:.3f} |")
    return "\n".join(lines) + "\n"


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
    ap.add_argument("--out", default=str(RESULTS / "runtime.json"))
    a = ap.parse_args(argv)
    import executorch.kernels.quantized  # noqa: F401  (import every runtime up front: cold load excludes Python imports)
    import onnxruntime  # noqa: F401
    from ai_edge_litert import interpreter  # noqa: F401

    ck = {"rec": "rec-model", "retrieval": "retrieval-model"}
    rows = []
    for task in a.tasks.split(","):
        rows += run(task, Path(a.ckpts) / ck[task], Path(a.stage_dir), Path(a.bundles) / task, a.queries, a.variants, a.skip_export)
    res = {"machine": _machine(), "date": datetime.date.today().isoformat(), "versions": _versions(), "k": K, "beam": BEAM,
           "threads": 1, "n_queries": a.queries, "rows": rows}
    write_json(a.out, res)
    Path(a.out).with_suffix(".md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
