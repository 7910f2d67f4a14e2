"""Semantic shards vs consistent hashing, and prefix routing vs scatter (issue "Scale out", items 1-2).

For each task's teacher and each shard count: the plans (semantic by items, semantic by measured load
with the hottest items replicated, consistent hashing with virtual nodes), their balance (items and
load per shard, max / mean; load = requests per item in the validation log), and the Recall@10 of
each routing strategy as a ratio to the unsharded model on the same validation inputs, with the
shards each query touched. Eager CPU models (the cloud side); latency of the served path is
``bench/scale.py``'s. Writes ``bench/results/shards.json`` + ``.png``.

    .venv/bin/python bench/shards.py --task rec=.cache/gpu_build/rec-teacher:.cache/gpu_build/ml-1m \\
        --task retrieval=.cache/gpu_build/retrieval-teacher:.cache/gpu_build/bible [--queries 300] [--shards 2,4,8]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.core import cpu_model  # noqa: E402
from server.io import write_json  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def plot(path: Path) -> Path:
    from bench.plot_core import panels, save

    res, tasks, fig, axes = panels(path, "runs", 6.5, 4.2)
    for ax, t in zip(axes, tasks):
        for run in res[t]["runs"]:
            pts = [(v["shards_per_query"], v["recall_ratio"]) for k, v in run["routing"].items() if k != "unsharded"]
            ax.plot(*zip(*sorted(pts)), marker="o", label=f"{run['plan']['kind']}/{run['balance']} x{run['plan']['shards']}")
        ax.axhline(0.98, color="red", ls="--", lw=1, label="0.98x target")
        ax.set(title=f"{t}: Recall@10 / unsharded vs shards per query", xlabel="shards per query (fan-out)", ylabel="recall ratio")
        ax.legend(fontsize=6)
    return save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", action="append", required=True, metavar="TASK=CKPT:DATA")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--shards", default="2,4,8")
    ap.add_argument("--hot", type=int, default=20, help="items replicated to every shard in the load-balanced plan")
    a = ap.parse_args()
    from server.build import BuildSpec, _load, _presets, validation_inputs
    from server.generative import GenerativeModel
    from server.shard.plan import hash_plan, semantic_plan
    from server.shard.route import compare

    res = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
           "protocol": "validation inputs; load = validation requests per item; recall ratio vs the unsharded eager model, same inputs"}
    for spec_s in a.task:
        task, rest = spec_s.split("=", 1)
        ckpt, data = rest.split(":", 1)
        gm = GenerativeModel.load(ckpt)
        spec = BuildSpec(task=task, data=data, out="", preset="full", device="cpu", progress=False)
        inputs, rel = validation_inputs(task, _load(spec, _presets(spec)), a.queries)
        row = {it: r for r, it in enumerate(gm.ids.items)}
        load = np.zeros(len(gm.ids))
        for s in rel:
            for i in s:
                if i in row:
                    load[row[i]] += 1
        runs = []
        for n in (int(x) for x in a.shards.split(",")):
            for kind, plan in (("items", semantic_plan(gm.ids, n)), ("load+hot", semantic_plan(gm.ids, n, load=load, balance="both", hot=a.hot)),
                               ("hash", hash_plan(gm.ids, n))):
                fan = tuple(f for f in (1, 2, 4) if f < n) + (None,) if plan.kind == "semantic" else ()
                routing = compare(gm, plan, inputs, rel, fanouts=fan)
                runs.append({"balance": kind, "plan": plan.stats(load), "routing": routing})
                best = max((v for k, v in routing.items() if k.startswith("prefix")), key=lambda v: v["recall_ratio"], default=None)
                print(f"{task:9} {n} shards {kind:8} items max/mean {runs[-1]['plan']['items_imbalance']:.2f} load max/mean "
                      f"{runs[-1]['plan']['load_imbalance']:.2f}  scatter {routing['scatter']['recall_ratio']:.3f}"
                      + (f"  prefix best {best['recall_ratio']:.3f} at {best['shards_per_query']:.2f} shards/query" if best else ""), flush=True)
        res[task] = {"checkpoint": ckpt, "n_inputs": len(inputs), "runs": runs}
    old = RESULTS / "shards.json"
    if old.is_file():  # one task at a time: keep the other task's measured runs
        prev = json.loads(old.read_text())
        res = {**{k: v for k, v in prev.items() if isinstance(v, dict) and "runs" in v}, **res}
    out = write_json(RESULTS / "shards.json", res)
    print(f"wrote {out} and {plot(out)}")


if __name__ == "__main__":
    main()
