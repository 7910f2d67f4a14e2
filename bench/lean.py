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
def _ships(v) -> bool:  # callgrind runs ~50x slower: instruction counts for the variant that ships only
    return v.backend == "onnxruntime" and v.precision == "int8" and v.source.get("name") == "student"


def queries(task: str, folder: str, n: int, *, relevant: bool = False):
    """Validation queries (retrieval) or the first ``n`` users' training histories (rec): never test.
    ``relevant=True`` also returns each input's relevant ids (retrieval: the verse; rec: the validation item)."""
    from server.data.jsonl import find_jsonl, load_rec_jsonl, load_retrieval_folder

    if task == "retrieval":
        qs = load_retrieval_folder(folder).valid[:n]
        return ([q.text for q in qs], [set(q.relevant) for q in qs]) if relevant else [q.text for q in qs]
    f = Path(folder)
    split = load_rec_jsonl(find_jsonl(f, "items"), find_jsonl(f, "interactions"), name=f.name).split()
    users = list(split.train)[:n]
    if relevant:
        return [split.train[u] for u in users], [{split.valid_target[u]} if u in split.valid_target else set() for u in users]
    return [split.train[u] for u in users]


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


def bench_bundle(name: str, path: str, qs: list, cg_n: int, tmp: Path, rel: list | None = None, student_label: str = "student") -> dict:
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
            src = v.source.get("name")
            label = f"{student_label} {v.name}" if src == "student" else v.name
            row.update(name=f"{label} / {'lean step' if lean else 'full prefix'}", variant=v.name, backend=v.backend,
                       precision=v.precision, source=student_label if src == "student" else src, lean=lean, threads=r.threads,
                       size_mb=v.size / 1e6, max_len=r.max_len, config={k: v.source.get("config", {}).get(k) for k in (
                           "d_model", "n_heads", "n_enc_layers", "n_dec_layers", "ffn_mult", "max_len")})
            if rel is not None:
                from server.metrics import rank_metrics

                row.update({f"valid_{k}": x for k, x in rank_metrics(out, rel).items() if k in ("recall@10", "ndcg@10", "mrr@10")})
            if ref is not None:
                row["overlap@10_vs_teacher_fp32"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(out, ref)]))
            if cg_n and _ships(v):
                row["instructions_per_query"] = instructions(str(path), v.name, lean, str(qs_file), cg_n)
            rows.append(row)
            print(f"{name:6} {row['name']:44} p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms  threads {row['threads']}"
                  + (f"  instr/q {row['instructions_per_query']:.3g}" if row.get("instructions_per_query") else ""), flush=True)
        if len(outs) == 2:
            rows[-2]["same_top10_as_full_prefix"] = float(np.mean([a == b for a, b in zip(outs[True], outs[False])]))
        if ref is None and v.precision == "fp32" and v.source.get("name") == "teacher":
            ref = outs[modes[0]]
    return {"bundle": str(path), "rows": rows}


def dense_row(data_folder: str, qs: list, rel: list | None = None) -> dict:
    from bench.runtime import dense_peer
    from server.data.jsonl import load_retrieval_folder
    from server.metrics import rank_metrics

    fn, extra = dense_peer("retrieval", load_retrieval_folder(data_folder).docs)
    row, out = timed(fn, qs)
    row.update(name="dense-minilm (1 thread)", **extra)
    if rel is not None:
        row.update({f"valid_{k}": x for k, x in rank_metrics(out, rel).items() if k in ("recall@10", "ndcg@10", "mrr@10")})
    print(f"dense  {row['name']:44} p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms", flush=True)
    return row


def peer_rows(task: str, data_folder: str, qs: list, rel: list, sasrec: str | None) -> list[dict]:
    """The CPU peers a user would compare with, 1 thread, same inputs: BM25 (Bible) / SASRec (ML-1M, if a checkpoint is given)."""
    import torch

    from server.metrics import rank_metrics

    torch.set_num_threads(1)
    rows = []
    if task == "retrieval":
        from server.data.jsonl import load_retrieval_folder
        from server.peers.bm25 import BM25Peer

        peer = BM25Peer().fit(load_retrieval_folder(data_folder).docs)
        row, out = timed(lambda q: [i for i, _ in peer.search([q], K)[0]], qs)
        row.update(name="bm25 (1 thread)", backend="bm25s")
        rows.append(row)
    elif sasrec:
        from server.peers.sasrec import SASRecPeer

        peer = SASRecPeer.load(sasrec, device="cpu")
        row, out = timed(lambda h: [i for i, _ in peer.rank([h], K)[0]], qs)
        row.update(name="sasrec (torch, 1 thread)", backend="torch")
        rows.append(row)
    for row in rows:
        row.update({f"valid_{k}": x for k, x in rank_metrics(out, rel).items() if k in ("recall@10", "ndcg@10", "mrr@10")})
        print(f"peer   {row['name']:44} p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:6.2f} ms", flush=True)
    return rows


def plot(path: Path) -> Path:
    from bench.plot_core import panels, save

    res, sets, fig, axes = panels(path, "rows", 7, 4.5)
    for ax, name in zip(axes, sets):
        rows = res[name]["rows"] + ([res[name]["dense"]] if res[name].get("dense") else [])
        labels = [r["name"].replace(" / ", "\n") for r in rows]
        ax.barh(labels, [r["p50_ms"] for r in rows], color=["C1" if r.get("lean") else "C0" for r in rows], label="p50")
        ax.barh(labels, [r["p99_ms"] - r["p50_ms"] for r in rows], left=[r["p50_ms"] for r in rows], color="0.8", label="p99")
        ax.axvline(3.0, color="red", ls="--", lw=1, label="3 ms target")
        ax.set(title=f"{name}: 1 thread, top-10, beam 20", xlabel="ms per query")
        ax.tick_params(axis="y", labelsize=6)
        ax.legend(fontsize=7)
    return save(fig, path)


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=FOLDER", help="the data folder of that bundle (queries)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--cg-queries", type=int, default=20, help="queries per callgrind run (0 = skip instruction counts)")
    ap.add_argument("--student-label", default="student", help="name of the student rows (e.g. nas-student)")
    ap.add_argument("--out", default=str(RESULTS / "lean.json"))
    ap.add_argument("--sasrec", default=None, help="a SASRec checkpoint: the ML-1M peer row")
    ap.add_argument("--merge-runtime", action="store_true", help="also write the rows into bench/results/runtime.json[<label>]")
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
            qs, rel = queries(task, data[name], a.queries, relevant=True)
            res[name] = bench_bundle(name, path, qs, a.cg_queries, Path(td), rel, a.student_label)
            rows = res[name]["rows"]
            teacher = next((r for r in rows if r["source"] == "teacher" and r["precision"] == "fp32"), None)
            metric = "valid_recall@10" if task == "retrieval" else "valid_ndcg@10"
            for r in rows:
                if teacher and teacher.get(metric):
                    r["quality_ratio_to_teacher"] = r[metric] / teacher[metric]
            res[name]["peers"] = peer_rows(task, data[name], qs, rel, a.sasrec)
            if task == "retrieval":
                res[name]["dense"] = dense_row(data[name], qs, rel)
                for r in rows:
                    r["dense_p50_over_p50"] = res[name]["dense"]["p50_ms"] / r["p50_ms"]
    out = write_json(Path(a.out), res)
    print(f"wrote {out} and {plot(out)}")
    if a.merge_runtime:
        rt = json.loads((RESULTS / "runtime.json").read_text())
        rt[a.student_label] = res
        write_json(RESULTS / "runtime.json", rt)
        print(f"merged into {RESULTS / 'runtime.json'}[{a.student_label!r}]")


if __name__ == "__main__":
    main()
