"""Lean decoder vs the full-prefix graph, on the `edge-gr build` bundles, at 1 thread, with the dense peer
measured in the same run (issue "Win on latency", item 1 + 4).

Per variant of each bundle: p50 / p99 ms of one top-10 query (beam 20) with the lean step
(``Retriever.lean = True``, variants that have the ``step`` graph) and with the full-prefix graph, the
thread count the backend reports, top-10 agreement of the two paths, and - the load-independent
number - instructions per query from ``valgrind --tool=callgrind`` (a run with ``--cg-queries`` queries
minus a run with none, so loading cancels out). The Bible row set includes the on-device dense peer
(MiniLM query encoding + exact faiss inner product, 1 thread). Writes ``bench/results/lean.json`` + ``.png``.

    .venv/bin/python bench/lean.py --bundle bible=.cache/accept/bible --data bible=.cache/gpu_build/bible \\
        --bundle ml-1m=.cache/accept/ml-1m --data ml-1m=.cache/gpu_build/ml-1m [--queries 300] [--cg-queries 20]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.core import cpu_model  # noqa: E402
from server.io import write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"
K, BEAM = 10, 20
CG_VARIANTS = {"onnxruntime-int8-student"}  # callgrind runs ~50x slower: the variant that ships only


def queries(task: str, folder: str, n: int) -> list:
    """Validation queries (retrieval) or the first ``n`` users' training histories (rec): never test."""
    from server.data.jsonl import find_jsonl, load_rec_jsonl, load_retrieval_folder

    if task == "retrieval":
        return [q.text for q in load_retrieval_folder(folder).valid[:n]]
    f = Path(folder)
    split = load_rec_jsonl(find_jsonl(f, "items"), find_jsonl(f, "interactions"), name=f.name).split()
    return [split.train[u] for u in list(split.train)[:n]]


def timed(fn, qs: list, warmup: int = 3) -> tuple[dict, list]:
    for q in qs[:warmup]:
        fn(q)
    ts, out = [], []
    for q in qs:
        t = time.perf_counter()
        out.append(fn(q))
        ts.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": float(np.percentile(ts, 50)), "p99_ms": float(np.percentile(ts, 99)), "n_queries": len(qs)}, out


_BASE: dict = {}


def instructions(bundle: str, variant: str, lean: bool, qs_file: str, n: int) -> float | None:
    """Instructions per query under callgrind: (Ir with n queries - Ir with 0) / n (the 0-query run, which
    only loads, is shared by the lean and the full-prefix measurement of a variant)."""
    def run(m: int) -> int | None:
        code = ("import json, sys, edge_gr\n"
                f"r = edge_gr.load({bundle!r}, variant={variant!r}, threads=1); r.lean = {lean}\n"
                f"qs = json.load(open({qs_file!r}))[:{m}]\n"
                "[r.search(q, 10, beam=20) for q in qs]\n")
        res = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=1800)
        hit = re.search(r"Collected\s*:\s*(\d+)", res.stderr)
        return int(hit.group(1)) if hit and res.returncode == 0 else None
    key = (bundle, variant)
    if key not in _BASE:
        _BASE[key] = run(0)
    a, b = _BASE[key], run(n)
    return None if a is None or b is None else (b - a) / n


def bench_bundle(name: str, path: str, qs: list, cg_n: int, tmp: Path) -> dict:
    import edge_gr
    from edge_gr.bundle import load_manifest

    m = load_manifest(path)
    qs_file = tmp / f"{name}-queries.json"
    qs_file.write_text(json.dumps(qs[:max(cg_n, 1)]))
    rows, ref = [], None
    for v in m.variants:
        r = edge_gr.load(path, variant=v.name, threads=1)
        modes = [True, False] if r._model.has_step else [False]
        outs = {}
        for lean in modes:
            r.lean = lean
            row, out = timed(lambda q: [h.item_id for h in r.search(q, K, beam=BEAM)], qs)
            outs[lean] = out
            row.update(name=f"{v.name} / {'lean step' if lean else 'full prefix'}", variant=v.name, backend=v.backend,
                       precision=v.precision, source=v.source.get("name"), lean=lean, threads=r.threads, size_mb=v.size / 1e6)
            if ref is not None:
                row["overlap@10_vs_teacher_fp32"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(out, ref)]))
            if cg_n and v.name in CG_VARIANTS:
                row["instructions_per_query"] = instructions(str(path), v.name, lean, str(qs_file), cg_n)
            rows.append(row)
            print(f"{name:6} {row['name']:44} p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms  threads {row['threads']}"
                  + (f"  instr/q {row['instructions_per_query']:.3g}" if row.get("instructions_per_query") else ""), flush=True)
        if len(outs) == 2:
            rows[-2]["same_top10_as_full_prefix"] = float(np.mean([a == b for a, b in zip(outs[True], outs[False])]))
        if ref is None and v.precision == "fp32" and v.source.get("name") == "teacher":
            ref = outs[modes[0]]
    return {"bundle": str(path), "rows": rows}


def dense_row(data_folder: str, qs: list) -> dict:
    from bench.runtime import dense_peer
    from server.data.jsonl import load_retrieval_folder

    fn, extra = dense_peer("retrieval", load_retrieval_folder(data_folder).docs)
    row, _ = timed(fn, qs)
    row.update(name="dense-minilm (1 thread)", **extra)
    print(f"dense  {row['name']:44} p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms", flush=True)
    return row


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(path.read_text())
    sets = [k for k in res if isinstance(res[k], dict) and "rows" in res[k]]
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 4.5), squeeze=False)
    for ax, name in zip(axes[0], sets):
        rows = res[name]["rows"] + ([res[name]["dense"]] if res[name].get("dense") else [])
        labels = [r["name"].replace(" / ", "\n") for r in rows]
        ax.barh(labels, [r["p50_ms"] for r in rows], color=["C1" if r.get("lean") else "C0" for r in rows], label="p50")
        ax.barh(labels, [r["p99_ms"] - r["p50_ms"] for r in rows], left=[r["p50_ms"] for r in rows], color="0.8", label="p99")
        ax.axvline(3.0, color="red", ls="--", lw=1, label="3 ms target")
        ax.set(title=f"{name}: 1 thread, top-10, beam 20", xlabel="ms per query")
        ax.tick_params(axis="y", labelsize=6)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=FOLDER", help="the data folder of that bundle (queries)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--cg-queries", type=int, default=20, help="queries per callgrind run (0 = skip instruction counts)")
    a = ap.parse_args()
    data = dict(s.split("=", 1) for s in a.data)
    res = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "threads": 1,
           "protocol": f"one query at a time, top-{K}, beam {BEAM}, validation inputs; instructions = callgrind Ir "
                       f"(N queries - 0 queries) / N"}
    with tempfile.TemporaryDirectory() as td:
        for spec in a.bundle:
            name, path = spec.split("=", 1)
            from edge_gr.bundle import load_manifest

            task = load_manifest(path).task
            qs = queries(task, data[name], a.queries)
            res[name] = bench_bundle(name, path, qs, a.cg_queries, Path(td))
            if task == "retrieval":
                res[name]["dense"] = dense_row(data[name], qs)
    out = write_json(RESULTS / "lean.json", res)
    print(f"wrote {out} and {plot(out)}")


if __name__ == "__main__":
    main()
