"""Quality and size of every variant of the full-preset `edge-gr build` bundles (the #13 acceptance table).

Reads the ``verify.json`` that ``edge-gr build`` writes into each work folder (every exported variant
run by the device runtime on validation inputs, next to the eager teacher and student) and writes
``bench/results/bundles.json`` + ``bundles.png`` (quality ratio to the teacher vs bytes).

    bash bench/gpu_build.sh                          # on the GPU host: students distilled (device tool)
    edge-gr build --task retrieval --data .cache/gpu_build/bible --checkpoint .cache/gpu_build/retrieval-teacher \\
        --preset full --work WORK/bible.build --out .cache/accept/bible --verify-queries 1000 --variants ...   # here
    .venv/bin/python bench/bundles.py --work bible=WORK/bible.build --work ml-1m=WORK/ml-1m.build
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.core import cpu_model  # noqa: E402
from server.io import write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def table(work: Path) -> dict:
    rep = json.loads((work / "verify.json").read_text())
    stage = json.loads((work / "stage-student.json").read_text()) if (work / "stage-student.json").is_file() else {}
    return {"n_validation": rep["n"], "eager": rep["eager"], "variants": rep["variants"],
            "student_seconds": stage.get("seconds")}


def plot(path: Path) -> Path:
    from bench.plot_core import panels, save

    res, sets, fig, axes = panels(path, "variants", 6, 4.2)
    for ax, name in zip(axes, sets):
        for v, r in res[name]["variants"].items():
            ax.scatter(r["bytes"] / 1e6, r["recall@10_ratio_to_teacher"], color="C0" if r["source"] == "teacher" else "C1")
            ax.annotate(v, (r["bytes"] / 1e6, r["recall@10_ratio_to_teacher"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"{name}: exported variants (validation)", xlabel="bundle variant MB", ylabel="Recall@10 / eager teacher")
        ax.grid(alpha=0.3)
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", action="append", required=True, metavar="NAME=DIR", help="a build work folder holding verify.json")
    ap.add_argument("--note", default="", help="what was run where (stored with the table)")
    a = ap.parse_args()
    res = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(), "note": a.note,
           "protocol": "every exported variant run by edge_gr.load on validation inputs (never test); Recall@10 ratio to the "
                       "eager fp32 teacher on the same inputs; overlap@10 against the eager model it was exported from"}
    for spec in a.work:
        name, _, d = spec.partition("=")
        res[name] = table(Path(d))
    out = write_json(RESULTS / "bundles.json", res)
    print(f"wrote {out} and {plot(out)}")


if __name__ == "__main__":
    main()
