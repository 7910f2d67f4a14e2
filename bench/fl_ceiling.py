"""Issue "Federated learning that measurably helps", step 1: the ceiling, measured before any federated run.

For each scenario (``users``: the cloud has the full histories of a share of opted-in users, every other user is a
device; ``history``: the cloud logged the first half of every history, today's set-up) trains the base model on what
the cloud saw and the same architecture, IDs and budget centrally on every user's training history (no DP), then
scores both on the same device users' held-out test items: the paired NDCG@10 gain with a 95% bootstrap interval.
Writes ``bench/results/fl_ceiling.json`` + ``.png`` and the ``ceiling`` key of ``bench/results/fl.json``.

    python bench/fl_ceiling.py --data ml-1m --device cuda --parallel       # <= 4 GPU-minutes per model (FLData's budget)
    python bench/fl_ceiling.py --data ml-100k --scenarios users            # CPU, small
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    out = {"cpu": cpu, "python": platform.python_version()}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def _one(scenario: str, args) -> dict:
    from device_sim.fl.ceiling import measure_ceiling
    from device_sim.fl.setup import FLData

    # FLData's defaults: the recommender `edge-gr fl run` adapts (the ML-1M recipe of the issue "Win on quality"); where
    # it trains (device, threads) is not part of its cache key, so a GPU-trained base serves the CPU's federated runs
    base = FLData(dataset=args.data, scenario=scenario, cloud_users=args.cloud_users)
    d = replace(base, train=replace(base.train, device=args.device, threads=args.threads, progress=True))
    return measure_ceiling(d, eval_users=args.eval_users, cache=args.cache, progress=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-1m", help="ml-1m, ml-100k or a folder with items.jsonl + interactions.jsonl")
    ap.add_argument("--scenarios", default="users,history")
    ap.add_argument("--cloud-users", type=float, default=0.25, help="users scenario: share of opted-in users")
    ap.add_argument("--eval-users", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "edge_gr" / "fl"))
    ap.add_argument("--parallel", action="store_true", help="one process per scenario (a GPU host)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    if args.parallel:
        import multiprocessing

        with ProcessPoolExecutor(len(scenarios), mp_context=multiprocessing.get_context("spawn")) as ex:  # no CUDA across fork
            got = dict(zip(scenarios, ex.map(_one, scenarios, [args] * len(scenarios))))
    else:
        got = {s: _one(s, args) for s in scenarios}
    res = {"date": datetime.date.today().isoformat(), "machine": _machine(), "protocol": (
        "base = trained on what the cloud saw; centralized = same architecture, IDs and budget on every user's training "
        "history, no DP; both scored on the same device users' test items (context = their whole history); gain = mean "
        "per-user NDCG@10 difference, 95% paired bootstrap"), "scenarios": got}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fl_ceiling.json").write_text(json.dumps(res, indent=1))
    fl = out / "fl.json"
    if fl.is_file():  # the ceiling sits beside the federated runs it bounds
        doc = json.loads(fl.read_text())
        doc["ceiling"] = {"date": res["date"], "machine": res["machine"], "protocol": res["protocol"],
                          **{s: {k: r[k] for k in ("base", "centralized", "gain", "significant", "eval_users", "cloud_users",
                                                   "device_users")} for s, r in got.items()}}
        fl.write_text(json.dumps(doc))  # compact, as bench/fl.py writes it
    _plot(res, out / "fl_ceiling.png")
    for s, r in got.items():
        g = r["gain"]
        print(f"{s}: base NDCG@10 {r['base']['ndcg@10']:.4f}, centralized {r['centralized']['ndcg@10']:.4f}, gain "
              f"{g['gain']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] on {r['eval_users']} device users"
              f"{' (significant)' if r['significant'] else ''}")
    return 0


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["scenarios"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, s in enumerate(names):
        r = res["scenarios"][s]
        ax.bar([i - 0.18], [r["base"]["ndcg@10"]], 0.36, color="#999", label="base (cloud data)" if i == 0 else None)
        g = r["gain"]
        ax.bar([i + 0.18], [r["centralized"]["ndcg@10"]], 0.36, color="#2a7", label="centralized, all users (no DP)" if i == 0 else None,
               yerr=[[g["gain"] - g["ci_low"]], [g["ci_high"] - g["gain"]]], capsize=4)
        ax.text(i, max(r["base"]["ndcg@10"], r["centralized"]["ndcg@10"]) * 1.04, f"{g['gain']:+.4f}", ha="center")
    ax.set_xticks(range(len(names)), [f"{s}\n({res['scenarios'][s]['eval_users']} device users)" for s in names])
    ax.set_ylabel("NDCG@10 (device users' test items)")
    ax.set_title(f"The federated ceiling ({res['date']}; error bar: 95% CI of the paired gain)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
