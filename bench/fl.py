"""Issue #5 benchmark: federated personalization over simulated MovieLens-1M phones.

Runs the main experiment (default 1,000 devices x 10 rounds x 50 clients, record-level
epsilon 1 per device, with every baseline), the DP sweep (epsilon 0.5 / 4 / no DP:
global-model curve only unless --sweep-baselines) and optionally the 6,040-device run;
writes bench/results/fl.{json,md,png} and the cloud-vs-edge report next to them.

    .venv/bin/python bench/fl.py                       # main + sweep (~1 h on 2 shared cores)
    .venv/bin/python bench/fl.py --all-users           # also the 6,040-device run
    .venv/bin/python bench/fl.py --only main
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--sweep", default="0.5,4,none", help="other epsilons to run (global-model curve)")
    ap.add_argument("--sweep-baselines", action="store_true")
    ap.add_argument("--all-users", action="store_true", help="also run all 6,040 users (no baselines)")
    ap.add_argument("--only", choices=["main", "sweep", "all-users", "rebaseline", "centralized", "central-dp", "report", "gains"], default=None,
                    help="rebaseline: recompute main's baselines from its saved final adapter; report: only rewrite the report")
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--data", default="ml-1m", help="ml-1m or a folder with the same data as JSONL (the GPU-trained base's key)")
    ap.add_argument("--scenario", choices=["history", "users"], default="history",
                    help="users: the cloud saw 25%% of the users whole (runs are stored as users-<tag>)")
    args = ap.parse_args(argv)

    from device_sim.fl.flower import FLSpec
    from device_sim.fl.local import DPConfig, LocalConfig
    from device_sim.fl.report import write_report
    from device_sim.fl.simulate import run_federated

    out = Path(args.out)
    runs_dir = out / "fl_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    res_path = out / "fl.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}}

    from device_sim.fl.setup import FLData

    prefix = "" if args.scenario == "history" else f"{args.scenario}-"

    def spec(eps, devices, tag):
        return FLSpec(data=FLData(dataset=args.data, scenario=args.scenario), num_devices=devices, rounds=args.rounds,
                      clients_per_round=args.clients,
                      local=LocalConfig(steps=args.local_steps, lr=args.lr, dp=DPConfig(target_epsilon=eps)),
                      result_path=str(runs_dir / f"{tag}.json"))

    def run(tag, eps, devices, baselines):
        tag = prefix + tag
        t0 = time.time()
        r = run_federated(spec(eps, devices, tag), baselines=baselines)
        r.pop("final_arrays", None)
        r["label"] = f"epsilon={eps if eps is not None else 'none'}"
        r["wall_s"] = time.time() - t0
        results["runs"][tag] = r
        results["machine"] = f"{platform.machine()} {platform.processor() or ''} 2 shared cores (see README)".strip()
        results["date"] = datetime.date.today().isoformat()
        res_path.write_text(json.dumps(results))
        print(f"{tag}: {r['wall_s']:.0f} s, simulation {r['timing']['simulation_s']:.0f} s", flush=True)

    if args.only in (None, "main"):
        run("main-eps1", 1.0, args.devices, True)
    if args.only in (None, "sweep"):
        for e in args.sweep.split(","):
            eps = None if e.strip() == "none" else float(e)
            run(f"sweep-eps{e.strip()}", eps, args.devices, args.sweep_baselines)
    if args.only == "rebaseline":
        from device_sim.fl.flower import env_for
        from device_sim.fl.simulate import eval_cohort, run_baselines

        saved = json.loads((runs_dir / "main-eps1.json").read_text())  # written by the ServerApp at the end of the rounds
        sp = spec(1.0, args.devices, "main-eps1")
        env = env_for(sp)
        entry = results["runs"].get("main-eps1") or {
            k: saved[k] for k in ("spec", "nodes", "sampled_per_round", "rounds", "evaluation")}
        entry.setdefault("timing", {"simulation_s": saved["wall_s"], "note": "strategy execution (all rounds + evaluation); "
                                    "Ray start-up (~30 s) not included"})
        entry["label"] = "epsilon=1.0"
        entry["baselines"] = run_baselines(sp, env, eval_cohort(sp, env)[:300], saved)
        results["runs"]["main-eps1"] = entry
        results["date"] = datetime.date.today().isoformat()
        res_path.write_text(json.dumps(results))
    if args.only == "centralized":  # recompute only the centralized baseline of the main run
        from device_sim.fl.flower import env_for
        from device_sim.fl.simulate import centralized_eval, eval_cohort

        sp = spec(1.0, args.devices, "main-eps1")
        env = env_for(sp)
        b = results["runs"]["main-eps1"]["baselines"]
        used = sum(r["used"] for r in results["runs"]["main-eps1"]["rounds"] if not r["skipped"])
        b["centralized"] = centralized_eval(sp, env, eval_cohort(sp, env)[:300], max(1, min(used * sp.local.steps, 3000)))
        res_path.write_text(json.dumps(results))
    if args.only == "central-dp":  # client-level DP by Flower's server-side wrapper instead of local DP-SGD
        from dataclasses import replace as _replace

        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        sp = spec(None, args.devices, "central-dp-eps1")
        k_sample = -(-int(sp.clients_per_round * sp.overselect * 1000) // 1000)
        q = k_sample / args.devices
        z = get_noise_multiplier(target_epsilon=1.0, target_delta=1e-5, sample_rate=q, steps=args.rounds, accountant="rdp")
        clip = 5.8  # median L2 norm of one client's 10-step adapter update (measured, no DP)
        sp = _replace(sp, central_dp={"noise_multiplier": z, "clipping_norm": clip})
        t0 = time.time()
        r = run_federated(sp, baselines=False)
        r.pop("final_arrays", None)
        # noise std is z*C/k with k = clients_per_round; a round that used m < k reports gave the
        # mean of m updates that noise, i.e. an effective multiplier z*m/k: account with the smallest
        m = min(x["used"] for x in r["rounds"] if not x["skipped"])
        acc = RDPAccountant()
        acc.history = [(z * m / sp.clients_per_round, q, sum(not x["skipped"] for x in r["rounds"]))]
        r["central_dp"] = {"noise_multiplier": z, "clipping_norm": clip, "sample_rate": q, "min_reports": m,
                           "client_level_epsilon": float(acc.get_epsilon(1e-5)), "delta": 1e-5}
        r["label"] = "central DP (client-level)"
        r["wall_s"] = time.time() - t0
        results["runs"]["central-dp-eps1"] = r
        res_path.write_text(json.dumps(results))
        print(r["central_dp"], flush=True)
    if args.all_users or args.only == "all-users":
        run("all-users-eps1", 1.0, None, False)

    from device_sim.fl.simulate import paired

    for r in results["runs"].values():  # runs saved by the ServerApp keep per-user scores: pair last vs round 0
        ev = r["evaluation"]
        if "per_user" in ev.get("0", {}):
            last = str(max(int(k) for k in ev))
            r["global_vs_base"] = paired(ev[last]["per_user"], ev["0"]["per_user"])
            for v in ev.values():
                v.pop("per_user", None)
    _gains(results)
    for r in results["runs"].values():  # keep the JSON small: reply logs without the per-tensor shapes
        for rr in r["rounds"]:
            for e in rr["replies"]:
                if isinstance(e.get("arrays"), dict):
                    e["arrays"] = len(e["arrays"])
                e.pop("records", None)
    res_path.write_text(json.dumps(results))
    if args.only == "gains":
        return 0
    order = ["main-eps1"] + [k for k in results["runs"] if k.startswith("sweep") or k.startswith("central")] + [k for k in results["runs"] if k.startswith("all")]
    runs = {results["runs"][k]["label"] + (" (6040 dev)" if k.startswith("all") else ""): results["runs"][k] for k in order if k in results["runs"]}
    md = write_report(runs, out / "fl_report")
    (out / "fl.md").write_text(md)
    import shutil

    shutil.copy(out / "fl_report" / "report.png", out / "fl.png")
    print(md)
    return 0


def _gains(results: dict) -> None:
    """The issue's shape: each run's gain over the base ``{epsilon, gain, ci_low, ci_high, unit}``, epsilon null without DP."""
    for r in results["runs"].values():
        gv = r.get("global_vs_base")
        if gv:
            dp = (r.get("spec", {}).get("local") or {}).get("dp") or {}
            eps = r.get("central_dp", {}).get("client_level_epsilon", dp.get("target_epsilon"))
            r["gain"] = {"epsilon": eps, "gain": gv["mean"], "ci_low": gv["ci95"][0], "ci_high": gv["ci95"][1],
                         "unit": "client-level" if "central_dp" in r else ("record-level" if eps is not None else None)}


if __name__ == "__main__":
    sys.exit(main())
