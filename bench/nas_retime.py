"""Re-time a NAS study's candidates on *this* machine (the benchmark machine) and choose again.

The GPU host trains and times the candidates under load (other workers train beside each timing), and its
CPU is not the device-benchmark CPU. Latency of a fixed graph does not depend on its weights, so each
candidate architecture is exported afresh (untrained weights, ONNX Runtime int8, the same export path) and
timed here at one thread on the study's validation inputs; quality stays the GPU-trained candidate's.
The choice rule is the study's (feasible Pareto front of quality vs p99, lowest scalarised L), with the
p99 measured here. Writes ``<nas.json>`` with ``p99_ms_here`` / ``p50_ms_here`` / ``chosen_here`` added,
``student.json`` beside it (the choice here) and the plot (here-timings).

    .venv/bin/python bench/nas_retime.py --nas .cache/gpu_nas/out-final/nas-ml-1m --task rec \\
        --data .cache/gpu_build/ml-1m --checkpoint .cache/gpu_build/rec-teacher [--only-complete] [--queries 100]
    .venv/bin/python bench/nas_retime.py --collect ml-1m=HERE_DIR,GPU_DIR bible=HERE_DIR,GPU_DIR   # bench/results/nas.json + png
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peers(spec: str | None, metric: str) -> dict:
    """``{name: {p99_ms, quality}}`` of bench/lean.py's peer rows (same machine, validation inputs)."""
    if not spec:
        return {}
    path, name = spec.rsplit(":", 1)
    res = json.loads(Path(path).read_text())[name]
    rows = list(res.get("peers", [])) + ([res["dense"]] if res.get("dense") else [])
    return {r["name"]: {"p99_ms": r["p99_ms"], "quality": r.get(f"valid_{metric}")} for r in rows if r.get(f"valid_{metric}") is not None}


def collect(specs: list[str]) -> None:
    """bench/results/nas.json (every task's re-timed study + its GPU-host study) and nas.png (their plots side by side)."""
    import datetime

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from server.io import write_json

    res: dict = {"date": datetime.date.today().isoformat(), "tasks": {}}
    imgs = []
    for spec in specs:
        name, here, gpu = spec.split("=", 1)[0], *spec.split("=", 1)[1].split(",")
        res["tasks"][name] = {"here": json.loads((Path(here) / "nas.json").read_text()),
                              "gpu_host": json.loads((Path(gpu) / "nas.json").read_text())}
        imgs += [(f"{name}: timed on the GPU host (under load)", Path(gpu) / "pareto.png"), (f"{name}: re-timed here", Path(here) / "pareto.png")]
    out = write_json(ROOT / "bench" / "results" / "nas.json", res)
    fig, axes = plt.subplots(len(specs), 2, figsize=(13, 4.6 * len(specs)), squeeze=False)
    for ax, (title, img) in zip(axes.ravel(), imgs):
        ax.imshow(plt.imread(img))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"wrote {out} and {out.with_suffix('.png')}")


def main() -> None:
    if sys.argv[1:2] == ["--collect"]:  # --collect NAME=HERE_DIR,GPU_DIR ...
        collect(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nas", required=True, help="folder with the study's nas.json")
    ap.add_argument("--out", default=None, help="folder to write into (default: a copy beside --nas named <nas>-here)")
    ap.add_argument("--task", required=True, choices=["rec", "retrieval"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--only-complete", action="store_true", help="skip candidates stopped early by successive halving")
    ap.add_argument("--peers", default=None, metavar="LEAN_JSON:SET", help="mark the peers of bench/lean.py's SET on the plot")
    ap.add_argument("--peers-only", action="store_true", help="only add --peers to an already re-timed --out and re-plot")
    a = ap.parse_args()
    if a.peers_only:
        from server.nas.search import plot

        out = Path(a.out) if a.out else Path(a.nas).with_name(Path(a.nas).name + "-here")
        doc = json.loads((out / "nas.json").read_text())
        doc["peers"] = _peers(a.peers, doc["quality_metric"])
        (out / "nas.json").write_text(json.dumps(doc, indent=1))
        print(f"peers {sorted(doc['peers'])}; plot {plot(out / 'nas.json')}")
        return

    from tqdm import tqdm

    from server.build import BuildSpec, _load, _presets, validation_inputs
    from server.compress.distill import student_model
    from server.generative import GenerativeModel
    from server.io import write_json
    from server.model import GRConfig
    from server.nas.search import NASConfig, _fixed_terms, _measure, choose, machine, plot

    src = Path(a.nas)
    out = Path(a.out) if a.out else src.with_name(src.name + "-here")
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads((src / "nas.json").read_text())
    teacher = GenerativeModel.load(a.checkpoint)
    spec = BuildSpec(task=a.task, data=a.data, out="", preset="full", device="cpu", progress=False)
    inputs, _ = validation_inputs(a.task, _load(spec, _presets(spec)), max(a.queries, 1))
    cfg = NASConfig(latency_queries=a.queries)
    here = machine()
    todo = [t for t in doc["trials"] if not (a.only_complete and t.get("pruned_at_epoch"))]
    for t in tqdm(todo, desc="re-time here", unit="candidate"):
        gm = GenerativeModel(student_model(teacher, GRConfig(**t["config"], dropout=0.0)), teacher.ids, teacher.items,
                             tokenizer=teacher.tokenizer, popularity=list(teacher.popularity))
        gm.model.eval()
        with tempfile.TemporaryDirectory() as td:
            m = _measure(gm, a.task, inputs, [], cfg, t["beam"], Path(td), quality=False)
        t["p50_ms_gpu_host"], t["p99_ms_gpu_host"] = t["p50_ms"], t["p99_ms"]
        t["p50_ms"], t["p99_ms"], t["timed_here"] = m["p50_ms"], m["p99_ms"], True
        t["loss"] = (1 - t["quality"] / doc["teacher_quality"]) + _fixed_terms(cfg, {**m, "size_mb": t["size_mb"]})
        t["constraints"] = [m["p99_ms"] - (doc["config"].get("max_p99_ms") or 1e9), t["constraints"][1]]
        t["feasible"] = all(c <= 0 for c in t["constraints"])
    doc["trials"] = todo
    # the Pareto front again, on quality and the p99 measured here
    for t in todo:
        t["pareto"] = not any(o["quality"] >= t["quality"] and o["p99_ms"] <= t["p99_ms"] and (o["quality"] > t["quality"] or o["p99_ms"] < t["p99_ms"])
                              for o in todo)
    best = choose(todo)
    doc["chosen_gpu_host"], doc["chosen"] = doc["chosen"], best["number"]
    doc["machine_gpu_host"], doc["machine"] = doc.get("machine"), here
    doc["peers"] = _peers(a.peers, doc["quality_metric"]) or doc.get("peers", {})
    doc["retimed"] = {"queries": a.queries, "weights": "untrained (latency of a fixed graph is weight-independent)", "only_complete": a.only_complete}
    write_json(out / "nas.json", doc)
    write_json(out / "student.json", {"config": best["config"], "beam": best["beam"], "measured": {k: best[k] for k in (
        "quality", "p50_ms", "p99_ms", "size_mb")}, "trial": best["number"], "timed_on": here.get("cpu")})
    if (src / "study.log").is_file():
        shutil.copy(src / "study.log", out / "study.log")
    print(f"chosen here: trial {best['number']} {best['config']} beam {best['beam']}, quality {best['quality']:.3f} "
          f"(teacher {doc['teacher_quality']:.3f}), p99 here {best['p99_ms']:.2f} ms; plot {plot(out / 'nas.json')}")


if __name__ == "__main__":
    main()
