"""``edge-gr fleet simulate`` and ``edge-gr fl run`` (registered on the ``edge-gr`` CLI
through the ``edge_gr.cli`` entry point, so ``server`` never imports ``device_sim``).

    edge-gr fl run --devices 1000 --rounds 10 --clients 50 --epsilon 1 --out .cache/edge_gr/fl/run1
    edge-gr fleet simulate --devices 1000 --hours 24 --fl-run .cache/edge_gr/fl/run1/run.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

__all__ = ["add_parsers"]


def _eps(s: str):
    if s.lower() in ("none", "off", "inf"):
        return None
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--epsilon takes a number or 'none', got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("--epsilon must be > 0 (or 'none' for no DP)")
    return v


def _positive(name: str):
    """argparse type: an integer >= 1 (``--phones 0`` used to hang the simulation instead of failing)."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a whole number, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {v}")
        return v
    return parse


def _spec(args):
    from dataclasses import replace

    from .fl.adapters import federated_part
    from .fl.attacks import parse_attack
    from .fl.flower import FLSpec
    from .fl.local import DPConfig, LocalConfig
    from .fl.setup import FLData

    data = FLData(dataset=args.data, scenario=args.scenario, cloud_users=args.cloud_users)
    if args.local_objective == "sequence" and args.epsilon is not None:
        from edge_gr.errors import InputError

        raise InputError("--local-objective sequence trains on whole sequences: record-level DP-SGD does not apply",
                         hint="add --epsilon none (and --central-noise for client-level DP)")
    local = LocalConfig(steps=args.local_steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.local_optimizer,
                        objective=args.local_objective,
                        dp=DPConfig(target_epsilon=args.epsilon, max_participations=args.max_participations))
    cdp = {"noise_multiplier": args.central_noise, "clipping_norm": args.central_clip} if args.central_noise else None
    out = Path(args.out)
    return FLSpec(data=data, adapter=federated_part(args.federate), local=local, num_devices=args.devices, rounds=args.rounds, clients_per_round=args.clients,
                  min_clients=min(args.min_clients, args.clients), drop_prob=args.drop, central_dp=cdp,
                  aggregation=args.aggregation, server_lr=args.server_lr, trim_beta=args.trim_beta, byzantine=args.byzantine,
                  max_examples=args.max_examples, max_update_norm=args.max_update_norm,
                  attack=parse_attack(args.attack) if args.attack else None,
                  eval_users=args.eval_users, seed=args.seed, result_path=str(out / "run.json"))


def cmd_fl_run(args) -> None:
    from .fl.report import write_report
    from .fl.simulate import run_federated

    spec = _spec(args)
    if args.secagg:
        from .fl.simulate import run_secagg

        import datetime
        import platform
        import sys

        res = run_secagg(spec, clients=args.clients, drop_fraction=args.drop, devices=args.devices)
        res.pop("final_arrays", None)
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
        res = {"date": datetime.date.today().isoformat(), "machine": {"cpu": cpu, "cores": os.cpu_count()},
               "command": "edge-gr " + " ".join(sys.argv[1:]), **res}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "secagg.json").write_text(json.dumps(res, indent=1))
        for r in res["rounds"]:
            print(f"round {r['round']}: {len(r['partitions'])} reports, {r['dropped']} dropped, noise std {r['noise_std']:.3g}, "
                  f"NDCG@10 {r['ndcg@10']:.4f}" + (f" (skipped: {r['reason']})" if r["skipped"] else ""))
        eps = f", client-level epsilon {res['epsilon']:.3g} (delta {res['delta']:g})" if res["epsilon"] else ""
        print(f"base NDCG@10 {res['base']['ndcg@10']:.4f}; {res['sampled']} sampled devices ({res['distinct']} distinct of "
              f"{res['devices']}){eps}; wrote {args.out}/secagg.json ({res['seconds']:.0f} s)")
        return
    out = run_federated(spec, personal_users=args.personal_users, baselines=not args.no_baselines)
    md = write_report({f"epsilon={args.epsilon}": out}, Path(args.out))
    print(md)
    print(f"wrote {args.out}/run.json, report.md, report.png")


def cmd_fl_privacy(args) -> None:
    from .fl.emulate import client_epsilon, extrapolate, plan_client_noise

    q = args.clients / args.fleet
    if not 0 < q <= 1:
        raise SystemExit(f"error: --clients ({args.clients}) must be between 1 and --fleet ({args.fleet})")
    delta = args.delta if args.delta else min(1e-5, 1.0 / args.fleet)
    z = args.noise if args.noise is not None else plan_client_noise(args.epsilon, q, args.rounds, delta)
    eps = client_epsilon(z, q, args.rounds, delta)
    std = z * args.clip / args.clients
    rows = extrapolate(std, args.clip, args.rounds, q, tuple(args.extrapolate))
    res = {"clients_per_round": args.clients, "fleet": args.fleet, "rounds": args.rounds, "sample_rate": q, "delta": delta,
           "noise_multiplier": z, "clipping_norm": args.clip, "noise_std_of_mean": std, "epsilon": eps, "extrapolation": rows}
    print(f"client-level DP, {args.rounds} rounds of {args.clients} of {args.fleet} devices (q={q:.4g}), C={args.clip}: "
          f"z={z:.4g} -> epsilon {eps:.3g} at delta {delta:.2g}; noise std on the mean update {std:.3g}")
    for r in rows:
        print(f"  same noise on the mean with {r['clients_per_round']:>9,} clients/round (fleet {r['fleet']:,}): "
              f"z={r['noise_multiplier']:.4g} -> epsilon {r['epsilon']:.3g} (delta {r['delta']:.1g}); at epsilon 1 the noise "
              f"std on the mean would be {r['noise_std_of_mean_at_epsilon_1']:.3g}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        print(f"wrote {args.out}")


def cmd_fleet_simulate(args) -> None:
    from .fl.report import fleet_day

    res = fleet_day(dataset=args.data, devices=args.devices, hours=args.hours, fl_run=args.fl_run, seed=args.seed)
    print(res["markdown"])
    if args.out:
        p = Path(args.out)
        p.mkdir(parents=True, exist_ok=True)
        (p / "fleet.json").write_text(json.dumps(res, indent=1))
        print(f"wrote {p / 'fleet.json'}")


def add_parsers(sub) -> None:
    """Register ``fleet``, ``fl`` and ``rollout`` on the ``edge-gr`` sub-parsers."""
    from .rollout_sim import add_parser as add_rollout  # `edge-gr rollout simulate` (issue #6)

    add_rollout(sub)
    fl = sub.add_parser("fl", help="federated personalization over simulated phones (Flower + Opacus)")
    fsub = fl.add_subparsers(dest="fl_cmd", required=True)
    sp = fsub.add_parser("run", help="run federated rounds on Flower's simulation engine and write the report")
    sp.add_argument("--data", default="ml-1m", help="ml-1m, ml-100k or a folder with items.jsonl + interactions.jsonl")
    sp.add_argument("--scenario", choices=["history", "users"], default="history",
                    help="who the cloud saw: the first half of every history (history) or the whole histories of "
                         "--cloud-users opted-in users, every other user a device (users)")
    sp.add_argument("--cloud-users", type=float, default=0.25, help="users scenario: share of opted-in users")
    sp.add_argument("--phones", "--devices", dest="devices", type=_positive("--phones"), default=1000, help="fleet size (phones): the first N users (default 1000; 6040 = all of ML-1M)")
    sp.add_argument("--rounds", type=_positive("--rounds"), default=10)
    sp.add_argument("--clients", type=_positive("--clients"), default=50, help="reports aggregated per round (over-selected by 1.3x)")
    sp.add_argument("--min-clients", type=_positive("--min-clients"), default=10, help="a round with fewer reports is skipped, not stalled")
    sp.add_argument("--epsilon", type=_eps, default=1.0, help="record-level DP budget per device; 'none' = no DP")
    sp.add_argument("--max-participations", type=int, default=1, help="participations the DP noise is planned for")
    sp.add_argument("--central-noise", type=float, default=None, help="also add Flower's server-side central DP (noise multiplier)")
    sp.add_argument("--central-clip", type=float, default=1.0)
    from .fl.robust import AGGREGATORS

    sp.add_argument("--aggregation", choices=AGGREGATORS, default="fedavg",
                    help="Flower's rule: fedavg, fedadam, median, trimmed, krum, multikrum, bulyan")
    sp.add_argument("--server-lr", type=float, default=1e-3, help="fedadam: the server's eta")
    sp.add_argument("--trim-beta", type=float, default=0.2, help="trimmed: fraction cut from each side")
    sp.add_argument("--byzantine", type=int, default=1, help="krum / multikrum / bulyan: malicious clients tolerated")
    sp.add_argument("--max-examples", type=int, default=10_000, help="a reply's num-examples (its weight) is clipped to this")
    sp.add_argument("--max-update-norm", type=float, default=None, help="reject a reply that moves the adapter by more (L2)")
    sp.add_argument("--attack", default=None, metavar="KIND:N", help="robustness evaluation: the first N phones send nan / scale / examples attacks")
    from .fl.adapters import FEDERATED_PARTS

    sp.add_argument("--federate", choices=sorted(FEDERATED_PARTS), default="lora-qo",
                    help="what devices train and upload (sizes in docs/federated.md): LoRA on q/o, LoRA on every Linear, "
                         "the output head + LayerNorms, the code embeddings, everything but item embeddings, the whole model")
    sp.add_argument("--local-optimizer", choices=["adam", "sgd"], default="adam")
    sp.add_argument("--local-objective", choices=["records", "sequence"], default="records",
                    help="records: (history, next item) batches, DP-SGD possible; sequence: the device's history as one "
                         "sequence, every position predicting the next item (the cloud's loss; needs --epsilon none)")
    sp.add_argument("--local-steps", type=int, default=10)
    sp.add_argument("--batch-size", type=int, default=32)
    sp.add_argument("--lr", type=float, default=2e-2)
    sp.add_argument("--drop", type=float, default=0.0, help="extra probability a device drops mid-round")
    sp.add_argument("--eval-users", type=int, default=1000)
    sp.add_argument("--personal-users", type=int, default=200)
    sp.add_argument("--no-baselines", action="store_true")
    sp.add_argument("--secagg", action="store_true", help="aggregate under SecAgg+ (legacy Flower API; --clients of --phones "
                    "sampled every round, --drop = share that drops mid-round; with --max-update-norm / --central-noise "
                    "--central-clip clients clip before masking and the server adds client-level DP noise)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=".cache/edge_gr/fl/run")
    sp.set_defaults(fn=cmd_fl_run)

    pp = fsub.add_parser("privacy", help="client-level DP accountant (Opacus RDP): epsilon of a federation and the fleet "
                                         "size at which the same noise on the mean update costs less")
    pp.add_argument("--clients", type=_positive("--clients"), default=50, help="clients aggregated per round")
    pp.add_argument("--fleet", type=_positive("--fleet"), default=4530, help="devices sampled from")
    pp.add_argument("--rounds", type=_positive("--rounds"), default=40)
    pp.add_argument("--epsilon", type=float, default=1.0, help="target epsilon (plans the noise) ...")
    pp.add_argument("--noise", type=float, default=None, help="... or the noise multiplier z itself")
    pp.add_argument("--clip", type=float, default=1.0, help="update norm bound C")
    pp.add_argument("--delta", type=float, default=None, help="default min(1e-5, 1 / fleet)")
    pp.add_argument("--extrapolate", type=int, nargs="*", default=[10_000, 100_000, 1_000_000], help="clients per round")
    pp.add_argument("--out", default=None, help="write the table as JSON")
    pp.set_defaults(fn=cmd_fl_privacy)

    fleet = sub.add_parser("fleet", help="simulate a fleet of phones (battery, network, serving modes)")
    fsub = fleet.add_subparsers(dest="fleet_cmd", required=True)
    sp = fsub.add_parser("simulate", help="a day of a fleet under cloud-only / hybrid / on-device serving")
    sp.add_argument("--data", default="ml-1m", choices=["ml-1m", "ml-100k"])
    sp.add_argument("--phones", "--devices", dest="devices", type=_positive("--phones"), default=1000, help="simulated phones (clients)")
    sp.add_argument("--hours", type=float, default=24.0)
    sp.add_argument("--fl-run", default=None, help="run.json of `edge-gr fl run` (adds its measured FL bytes/energy/NDCG)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", default=None)
    sp.set_defaults(fn=cmd_fleet_simulate)
