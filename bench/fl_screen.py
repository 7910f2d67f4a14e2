"""Issue "Federated learning that measurably helps", steps 2-4: what to federate, the epsilon curve, the personal step.

Runs :func:`device_sim.fl.emulate.emulate` (the ClientApp's device step + Flower's FedAvg / server-side DP math in one
process; a GPU makes a 50-client round take seconds) in the ``users`` scenario, every candidate in its own process:

    screen    candidates ``part@lr`` (part = a key of device_sim.fl.adapters.FEDERATED_PARTS), no DP; chosen on the
              device users' *validation* items -> fl_screen.json (+ png)
    dp        the chosen recipe at client-level epsilon in {0.5, 1, 2, 4, 8, inf}: validation + *test* gain over the
              base (paired bootstrap), the per-round curve, the accountant's extrapolation to 10k / 100k / 1M clients
              per round -> fl_dp.json (+ png)
    personal  personal steps x lr (x all federated parameters / the output head only) from the no-DP global model, chosen
              on validation, reported on test -> fl_personal.json

    python bench/fl_screen.py screen --data .cache/gpu_build/ml-1m --device cuda --parallel
    python bench/fl_screen.py dp --data .cache/gpu_build/ml-1m --device cuda --parallel --recipe full@3e-4
    python bench/fl_screen.py personal --data .cache/gpu_build/ml-1m --device cuda --recipe full@3e-4
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fl_ceiling import _machine  # noqa: E402

DEFAULT_CANDIDATES = "lora-qo@2e-2,lora-qo@5e-3,lora-all@5e-3,head-norms@1e-3,codes@1e-3,body@3e-4,full@3e-4,full@1e-3"
EPSILONS = "0.5,1,2,4,8,inf"


def _setup(args):
    from device_sim.fl.ceiling import device_cohort
    from device_sim.fl.setup import FLData, prepare

    base = FLData(dataset=args.data, scenario="users", cloud_users=args.cloud_users)
    if args.tiny:  # a smoke-test model (tests, CPU)
        from server.model import GRConfig

        base = replace(base, levels=(8, 8), collab_dim=16,
                       model=GRConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=20),
                       train=replace(base.train, epochs=1, steps_per_epoch=20, eval_queries=50, max_minutes=1.0))
    d = replace(base, train=replace(base.train, device=args.device, progress=False))
    setup = prepare(d, args.cache, progress=False)
    setup.gm.model.to(args.device)
    return setup, device_cohort(setup, args.eval_users, seed=0)


def _recipe(spec: str, steps: int):
    """``part@lr[:opt=sgd][:obj=sequence][:server=adam][:slr=1e-3][:m=20][:steps=10]`` -> (part, AdapterConfig, LocalConfig,
    EmuConfig fields)."""
    from device_sim.fl.adapters import federated_part
    from device_sim.fl.local import LocalConfig

    head, *opts = spec.split(":")
    part, lr = head.split("@")
    o = dict(x.split("=") for x in opts)
    local = LocalConfig(steps=int(o.get("steps", steps)), batch_size=32, lr=float(lr), max_records=128, optimizer=o.get("opt", "adam"),
                        objective=o.get("obj", "records"))
    emu = {"server_opt": o.get("server", "avg"), "server_lr": float(o.get("slr", 1.0))}
    if "m" in o:
        emu["clients_per_round"] = int(o["m"])
    return part, federated_part(part), local, emu


def _paired(res: dict, target: str) -> dict:
    from device_sim.fl.setup import paired

    pu = res["per_user"][target]
    d = paired(pu["final"], pu["base"])
    return {"gain": d["mean"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1]}


def _run(job: tuple) -> dict:
    try:
        return _run_one(job)
    except Exception as e:  # one broken candidate must not lose the others' results (its error is reported, not raised)
        import traceback

        print(traceback.format_exc(), file=sys.stderr)   # the log (not the results file) keeps where it failed
        return {"recipe": job[1], "target_epsilon": job[2], "error": f"{type(e).__name__}: {e}"}


def _run_one(job: tuple) -> dict:
    import torch

    from device_sim.fl.emulate import EmuConfig, emulate

    kind, spec, eps, args = job
    torch.manual_seed(0)
    setup, users = _setup(args)
    part, acfg, local, emu = _recipe(spec, args.local_steps)
    cfg = EmuConfig(rounds=args.rounds, clients_per_round=args.clients, eval_every=args.eval_every, seed=args.seed,
                    max_minutes=args.max_minutes, clipping_norm=args.clip)
    cfg = replace(cfg, **emu)
    targets = ("valid",) if kind == "screen" else ("valid", "test")
    if isinstance(eps, tuple):  # ("z", noise multiplier): a noise level to measure utility at (its epsilon is whatever it costs)
        cfg, eps = replace(cfg, noise_multiplier=eps[1]), None
    else:
        cfg = replace(cfg, target_epsilon=eps)  # emulate plans the noise from its own device pool
    res = emulate(setup, acfg, local, cfg, users, device=args.device, targets=targets, progress=False)
    res.update(recipe=spec, part=part, target_epsilon=eps, gain={t: {"epsilon": res["epsilon"],
                                                                        **_paired(res, t)} for t in targets})
    arrays = res.pop("final_arrays")
    if res["epsilon"] is None and args.save_dir:  # the no-DP global weights (the personal step starts from them)
        Path(args.save_dir).mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.save_dir) / f"final-{kind}-{spec}.npz", **arrays)
    res.pop("per_user")
    return res


def _pool(jobs: list, parallel: bool) -> list:
    if not parallel:
        return [_run(j) for j in jobs]
    import multiprocessing

    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as ex:  # no CUDA across fork
        return list(ex.map(_run, jobs))


def _write(out: Path, name: str, doc: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    p = out / name
    p.write_text(json.dumps(doc, indent=1))
    return p


def prepare(args) -> dict:
    """Train (or load) the base once, before the parallel stages load it from the cache."""
    t0 = time.time()
    setup, users = _setup(args)
    print(f"base ready in {time.time() - t0:.0f} s: {len(setup.users)} device users, {len(users)} in the evaluation cohort")
    return {}


def screen(args) -> dict:
    t0 = time.time()
    got = _pool([("screen", c, None, args) for c in args.candidates.split(",") if c], args.parallel)
    ok = [r for r in got if "error" not in r]
    best = max(ok, key=lambda r: r["gain"]["valid"]["gain"]) if ok else {"recipe": None}
    doc = {"date": datetime.date.today().isoformat(), "machine": _machine(), "seconds": time.time() - t0,
           "protocol": ("users scenario; emulated FedAvg (device_sim.fl.emulate: the ClientApp's local_train, FedAvg weighted by "
                        "records, uniform sampling) without DP; chosen on the device users' validation items (context = "
                        "training history), never on test"), "candidates": got, "chosen": best["recipe"]}
    _write(Path(args.out), "fl_screen.json", doc)
    for r in got:
        if "error" in r:
            print(f"{r['recipe']:>18}: FAILED {r['error']}")
            continue
        g = r["gain"]["valid"]
        print(f"{r['recipe']:>18}: valid gain {g['gain']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]  up {r['upload_bytes'] / 1e3:.0f} KB"
              f"  {r['rounds_run']} rounds in {r['seconds']:.0f} s")
    print("chosen on validation:", best["recipe"])
    return doc


def dp(args) -> dict:
    from device_sim.fl.emulate import extrapolate

    t0 = time.time()
    # "inf": no DP; "2": planned for epsilon 2; "z0.08": that noise multiplier (utility at a larger fleet's noise level)
    eps = [None if e in ("inf", "none") else ("z", float(e[1:])) if e.startswith("z") else float(e)
           for e in args.epsilons.split(",") if e]
    got = _pool([("dp", args.recipe, e, args) for e in eps], args.parallel)
    names = ["inf" if e is None else f"z{e[1]}" if isinstance(e, tuple) else str(e) for e in eps]
    runs = dict(zip(names, got))
    for k, r in list(runs.items()):
        if "error" in r:
            print(f"eps {k}: FAILED {r['error']}")
    nodp = runs.get("inf")
    ext = {}
    for k, r in runs.items():
        if "error" not in r and r.get("epsilon") is not None:
            ext[k] = extrapolate(r["noise_std_of_mean"], r["config"]["clipping_norm"], r["rounds_run"], r["sample_rate"])
    doc = {"date": datetime.date.today().isoformat(), "machine": _machine(), "seconds": time.time() - t0, "recipe": args.recipe,
           "protocol": ("users scenario; emulated FedAvg with client-level DP = Flower's DifferentialPrivacyServerSideFixedClipping "
                        "math (clip each update to C, unweighted mean, N(0, (zC/m)^2)); z planned by Opacus' RDP accountant for "
                        "the target epsilon over the rounds at q = m / devices, delta 1e-5; gains over the base on the same device "
                        "users (validation: choose; test: report), 95% paired bootstrap"),
           "runs": runs, "extrapolation": ext, "no_dp_test_gain": nodp["gain"]["test"] if nodp and "error" not in nodp else None}
    _write(Path(args.out), "fl_dp.json", doc)
    for k, r in runs.items():
        if "error" in r:
            continue
        g = r["gain"]["test"]
        print(f"eps {k:>4}: z={r['config']['noise_multiplier']}, test gain {g['gain']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}]")
    return doc


def personal(args) -> dict:
    import torch

    from device_sim.fl.emulate import personal_eval
    from device_sim.fl.setup import paired

    t0 = time.time()
    setup, users = _setup(args)
    users = users[: args.personal_users]
    part, acfg, local, _ = _recipe(args.recipe, args.local_steps)
    if args.final == "base":  # personalise the base itself (when no federated global model beats it)
        from device_sim.fl.adapters import get_adapter

        start = get_adapter(setup.adapted_model(acfg).model)
    else:
        start = dict(np.load(args.final))
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    grid = [(0, 0.0, None, "adam")]
    for g in args.grid.split(";"):  # steps@lr[:head][:sgd]
        st, rest = g.split("@")
        lr, *flags = rest.split(":")
        grid.append((int(st), float(lr), ("head\\..*",) if "head" in flags else None, "sgd" if "sgd" in flags else "adam"))
    rows, per = [], {}
    for steps, lr, only, opt in grid:
        pl = replace(local, steps=steps, lr=lr or local.lr, optimizer=opt)
        v = personal_eval(setup, acfg, start, users, pl, only=only, device=args.device, target="valid")
        per[(steps, lr, only, opt)] = v
        rows.append({"steps": steps, "lr": lr, "optimizer": opt, "only": list(only) if only else "all federated",
                     "valid_ndcg@10": float(np.mean(v))})
        print(rows[-1])
    best = max(range(len(grid)), key=lambda i: rows[i]["valid_ndcg@10"])
    steps, lr, only, opt = grid[best]
    test_best = personal_eval(setup, acfg, start, users, replace(local, steps=steps, lr=lr or local.lr, optimizer=opt), only=only,
                              device=args.device, target="test")
    test_none = personal_eval(setup, acfg, start, users, replace(local, steps=0), device=args.device, target="test")
    d = paired(test_best, test_none)
    doc = {"date": datetime.date.today().isoformat(), "machine": _machine(), "seconds": time.time() - t0, "recipe": args.recipe,
           "users": len(users), "grid": rows, "chosen": rows[best],
           "test": {"global": float(np.mean(test_none)), "personalized": float(np.mean(test_best)),
                    "gain": {"gain": d["mean"], "ci_low": d["ci95"][0], "ci_high": d["ci95"][1]}},
           "protocol": "personal step on each device from the no-DP global model; chosen on validation items, reported on test"}
    _write(Path(args.out), "fl_personal.json", doc)
    print("chosen", rows[best], "test", doc["test"])
    return doc


def _load(p: str) -> dict:
    return json.loads(Path(p).read_text())


def _g(gain: dict) -> dict:
    return {k: gain[k] for k in ("epsilon", "gain", "ci_low", "ci_high")}


def collect(args) -> dict:
    """Merge a GPU session's outputs (``--screens name=fl_screen.json;...``, ``--dp`` epsilon runs, ``--noise`` fixed-noise
    runs, ``--ceiling`` the same base's ceiling) into bench/results: fl_screen.json (screens appended), fl_dp.json (+ png),
    fl_ceiling.json (the previous one kept as fl_ceiling_run2.json) and fl.json's ``ceiling`` / ``federated`` /
    ``extrapolation`` (/ ``personal`` with ``--personal``) keys."""
    out = Path(args.out)
    sc = _load(out / "fl_screen.json")
    for item in filter(None, (args.screens or "").split(";")):
        name, path = item.split("=", 1)
        new = _load(path)
        sc["screens"] = [x for x in sc["screens"] if x["name"] != name] + [{"name": name, "date": new["date"], "machine": new["machine"],
                                                                            "protocol": new["protocol"], "candidates": new["candidates"],
                                                                            "chosen": new["chosen"]}]
    sc["conclusion"] = args.conclusion or sc.get("conclusion")
    _write(out, "fl_screen.json", sc)
    plot(out / "fl_screen.json", out / "fl_screen.png")
    dpd, noise = _load(args.dp), (_load(args.noise) if args.noise else {"runs": {}})
    ceil = _load(args.ceiling)
    if (out / "fl_ceiling.json").exists() and not (out / "fl_ceiling_run2.json").exists():
        (out / "fl_ceiling_run2.json").write_text((out / "fl_ceiling.json").read_text())
    ceil["notes"] = args.ceiling_note
    _write(out, "fl_ceiling.json", ceil)
    runs = dpd["runs"]
    nodp = runs["inf"]

    def row(r: dict) -> dict:
        return {**_g(r["gain"]["test"]), "valid": _g(r["gain"]["valid"]), "noise_multiplier": r["config"]["noise_multiplier"],
                "noise_std_of_mean": r["noise_std_of_mean"], "rounds": r["rounds_run"],
                "test_ndcg@10": r["curve"][str(r["rounds_run"])]["test"]["ndcg@10"]}

    curves = {k: {x: c["valid"]["ndcg@10"] for x, c in r["curve"].items()} for k, r in {**runs, **noise["runs"]}.items()}
    fed = {"date": dpd["date"], "machine": dpd["machine"], "recipe": dpd["recipe"], "protocol": dpd["protocol"],
           "clients_per_round": nodp["clients_per_round"], "devices": nodp["devices"], "upload_bytes": nodp["upload_bytes"],
           "download_bytes": nodp["upload_bytes"], "no_dp": row(nodp),
           "dp": [row(r) for k, r in runs.items() if k != "inf"],
           "noise_levels": [row(r) for r in noise["runs"].values()],
           "curves_valid_ndcg@10": curves, "ceiling_same_run": ceil["scenarios"]["users"]["gain"]}
    doc = {**dpd, "noise_levels": noise["runs"], "summary": fed}
    _write(out, "fl_dp.json", doc)
    plot_dp(doc, out / "fl_dp.png")
    fl = _load(out / "fl.json")
    fl["ceiling"] = {**ceil, "earlier": [fl["ceiling"]] if "scenarios" not in fl.get("ceiling", {}) else fl["ceiling"].get("earlier", [])}
    fl["federated"] = fed
    fl["screen"] = {"date": sc["screens"][-1]["date"], "conclusion": sc["conclusion"],
                    "candidates": [{"screen": x["name"], "recipe": r["recipe"], "upload_bytes": r.get("upload_bytes"),
                                    "rounds_run": r.get("rounds_run"), "gain": (r.get("gain") or {}).get("valid"),
                                    "target": "valid", "error": r.get("error")} for x in sc["screens"] for r in x["candidates"]]}
    fl["extrapolation"] = {"date": dpd["date"], "from": "the epsilon-1 run of fl_dp.json", **{
        "runs": dpd["extrapolation"]}, "noise_levels": [{"noise_std_of_mean": r["noise_std_of_mean"], **_g(r["gain"]["test"])}
                                                        for r in noise["runs"].values()]}
    if args.report_run:  # the cloud-vs-edge report: costs from that Flower run, quality from the runs above
        from device_sim.fl.report import write_report

        run = _load(args.report_run)
        cloud = ceil["scenarios"]["users"]["centralized"]["ndcg@10"]
        write_report({"federated full model, FedAdam, no DP": run}, out / "fl_report",
                     ndcg={"cloud": cloud, "device": fed["no_dp"]["test_ndcg@10"]},
                     ndcg_note=(f"NDCG@10 (test, 1,000 device users, users scenario, {dpd['date']}, one H200): cloud = the "
                                f"centralized model on every user's history ({cloud:.4f}, fl_ceiling.json); device = the "
                                f"federated global model of fl_dp.json, no DP ({fed['no_dp']['test_ndcg@10']:.4f}; the "
                                "personal step adds +0.0005 on 200 users, fl_personal.json). Bytes, energy and CPU per "
                                "participation from the Flower run of the same recipe on this host (--report-run)."))
    if args.personal:
        per = _load(args.personal)
        fl["personal"] = {k: per[k] for k in ("date", "machine", "recipe", "users", "grid", "chosen", "test", "protocol")}
    (out / "fl.json").write_text(json.dumps(fl))
    print(json.dumps(fed["no_dp"]), [(r["epsilon"], round(r["gain"], 4)) for r in fed["dp"]])
    return doc


def plot_dp(doc: dict, path_png: Path) -> None:
    """Test gain over the base vs epsilon, the validation curve per round, and the gain vs the noise on the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = doc["summary"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    dp = sorted(s["dp"], key=lambda r: r["epsilon"])
    xs = [r["epsilon"] for r in dp]
    ax[0].errorbar(xs, [r["gain"] for r in dp], yerr=[[r["gain"] - r["ci_low"] for r in dp], [r["ci_high"] - r["gain"] for r in dp]],
                   marker="o", capsize=3, label="client-level DP (m=%d/round)" % s["clients_per_round"])
    nd, ce = s["no_dp"], s["ceiling_same_run"]
    ax[0].axhspan(nd["ci_low"], nd["ci_high"], color="g", alpha=0.2, label=f"no DP {nd['gain']:+.4f}")
    ax[0].axhline(ce["gain"], color="k", ls="--", label=f"ceiling, same run {ce['gain']:+.4f}")
    ax[0].axhline(0, color="grey", lw=0.5)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("epsilon (client-level, delta 1e-5)")
    ax[0].set_ylabel("test NDCG@10 gain over the base (95% CI)")
    ax[0].legend(fontsize=7)
    for k, c in s["curves_valid_ndcg@10"].items():
        r = sorted(c, key=int)
        ax[1].plot([int(x) for x in r], [c[x] for x in r], marker=".", label=("no DP" if k == "inf" else
                                                                               f"noise z={k[1:]}" if k.startswith("z") else f"eps {k}"))
    ax[1].set_xlabel("round")
    ax[1].set_ylabel("validation NDCG@10")
    ax[1].legend(fontsize=6, ncol=2)
    nl = sorted(s["dp"] + s["noise_levels"], key=lambda r: r["noise_std_of_mean"])
    ax[2].errorbar([r["noise_std_of_mean"] for r in nl], [r["gain"] for r in nl],
                   yerr=[[r["gain"] - r["ci_low"] for r in nl], [r["ci_high"] - r["gain"] for r in nl]], marker="o", capsize=3)
    ax[2].axhline(nd["gain"], color="g", ls="--", label="no DP")
    ax[2].axhline(0, color="grey", lw=0.5)
    ax[2].set_xscale("log")
    ax[2].set_xlabel("noise std on the mean update (per coordinate)")
    ax[2].set_ylabel("test NDCG@10 gain")
    ax[2].legend(fontsize=7)
    fig.suptitle(f"Federated full model, FedAdam, users scenario ({doc['date']}, one H200): {s['recipe']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["prepare", "screen", "dp", "personal", "collect"])
    ap.add_argument("--screens", default=None, help="collect: name=fl_screen.json;... (a GPU session's screens)")
    ap.add_argument("--dp", default=None, help="collect: the epsilon runs' fl_dp.json")
    ap.add_argument("--noise", default=None, help="collect: the fixed-noise runs' fl_dp.json")
    ap.add_argument("--ceiling", default=None, help="collect: the same base's fl_ceiling.json")
    ap.add_argument("--ceiling-note", default=None)
    ap.add_argument("--personal", default=None, help="collect: fl_personal.json of the personal step")
    ap.add_argument("--report-run", default=None, help="collect: run.json of `edge-gr fl run` with the chosen recipe "
                                                       "(its measured costs) -> fl_report/ with the quality above")
    ap.add_argument("--conclusion", default=None)
    ap.add_argument("--data", default="ml-1m")
    ap.add_argument("--cloud-users", type=float, default=0.25)
    ap.add_argument("--eval-users", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "edge_gr" / "fl"))
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    ap.add_argument("--recipe", default="full@3e-4")
    ap.add_argument("--epsilons", default=EPSILONS)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--clip", type=float, default=1.0, help="client-level DP: the update norm bound C")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", action="store_true", help="one process per candidate (a GPU host)")
    ap.add_argument("--save-dir", default=None, help="where no-DP runs save their final weights (final-<stage>-<recipe>.npz)")
    ap.add_argument("--final", default=None, help="personal: the no-DP global weights (.npz from dp --save-final)")
    ap.add_argument("--personal-users", type=int, default=300)
    ap.add_argument("--grid", default="1@1e-4;1@3e-4;3@1e-4;1@1e-3:head;3@1e-3:head",
                    help="personal: steps@lr[:head][:sgd] candidates (':head' = only the output head, ':sgd' = plain SGD, else "
                         "Adam), besides no step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--tiny", action="store_true", help="a tiny model and budget (smoke test)")
    args = ap.parse_args(argv)
    {"prepare": prepare, "screen": screen, "dp": dp, "personal": personal, "collect": collect}[args.stage](args)
    return 0




def plot(path_json: Path, path_png: Path) -> None:
    """Validation NDCG@10 per round of every screened candidate (one panel per screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(path_json).read_text())
    screens = doc.get("screens") or [{"name": "screen", "candidates": doc["candidates"]}]
    fig, axes = plt.subplots(1, len(screens), figsize=(6 * len(screens), 3.8), squeeze=False)
    for ax, sc in zip(axes[0], screens):
        for r in sc["candidates"]:
            if "error" in r:
                continue
            xs = sorted(r["curve"], key=int)
            ax.plot([int(x) for x in xs], [r["curve"][x]["valid"]["ndcg@10"] for x in xs], marker="o", ms=3,
                    label=f"{r['recipe']} ({r['upload_bytes'] / 1e3:,.0f} KB up)")
        ax.set_xlabel("round")
        ax.set_ylabel("NDCG@10, device users' validation items")
        ax.set_title(sc["name"], fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"What to federate, emulated FedAvg, users scenario ({doc['date']}, one H200)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
