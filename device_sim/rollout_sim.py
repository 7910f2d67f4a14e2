"""Canary rollout over the simulated fleet: every device answers real requests with the model of its arm.

For each stage of :func:`server.rollout.run_rollout`, every treatment device runs the
candidate model and every control device the baseline, on ``requests_per_device``
requests drawn from its own history (a prefix of the user's items; the true next item
is the hit target, the quality / CTR proxy). Per request:

* latency = CPU seconds of the search on the host (``time.thread_time``, torch at one
  thread, so other processes' load does not count) scaled to the device's tier
  (``PhoneProfile.device_seconds``), in ms;
* an exception or an empty answer counts as an error (a 5xx in the chapter's terms);
* a hit if the next item is in the top ``k``.

Requests of both arms are interleaved in a seeded random order, so drifts of the host
affect both arms alike.

>>> from server.data.base import Item, RecData
>>> data = RecData("toy", [Item(str(i), str(i)) for i in range(20)], {f"u{u}": [str((u + j) % 20) for j in range(8)] for u in range(200)})
>>> fleet = Fleet.from_recdata(data, seed=0)
>>> good = lambda h: [str((int(h[-1]) + 1) % 20)]          # always right
>>> bad = lambda h: [str((int(h[-1]) + 5) % 20)]           # always wrong
>>> simulate_rollout(fleet, good, good, requests_per_device=2, progress=False).outcome
'completed'
>>> r = simulate_rollout(fleet, good, bad, requests_per_device=2, progress=False)
>>> r.outcome, r.stopped_at
('rolled back', 0.05)
"""

from __future__ import annotations

import time
import zlib
from typing import Callable, Sequence

import numpy as np

from server.rollout import DeviceRecord, RolloutPolicy, RolloutReport, run_rollout

from .fleet import Fleet, VirtualDevice

__all__ = ["SearchFn", "measure_devices", "simulate_rollout", "model_search_fn", "add_parser"]

SearchFn = Callable[[list[str]], Sequence[str]]  # history (oldest first) -> ranked item ids


def _requests(d: VirtualDevice, n: int, seed: int) -> list[int]:
    """Positions j (history = items[:j], target = items[j]); the same for a device at every stage."""
    if len(d.items) < 2:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(d.user.encode())])
    return sorted(rng.integers(1, len(d.items), size=n).tolist())


def measure_devices(arms: dict[str, tuple[list[VirtualDevice], SearchFn]], *, requests_per_device: int = 4, k: int = 10,
                    max_history: int = 200, seed: int = 0, progress: bool = True, desc: str = "") -> dict[str, list[DeviceRecord]]:
    """Run every device of every arm on its requests (interleaved across arms); records per arm."""
    from tqdm.auto import tqdm

    jobs = [(arm, i, j) for arm, (devs, _) in arms.items() for i, d in enumerate(devs) for j in _requests(d, requests_per_device, seed)]
    order = np.random.default_rng(seed + 1).permutation(len(jobs))
    recs = {arm: [DeviceRecord(d.user, d.profile.name, 0, 0, [], 0) for d in devs] for arm, (devs, _) in arms.items()}
    for o in tqdm(order, desc=desc or "rollout", disable=not progress, leave=False):
        arm, i, j = jobs[o]
        d, fn = arms[arm][0][i], arms[arm][1]
        r = recs[arm][i]
        hist = d.items[max(0, j - max_history):j]
        t0 = time.thread_time()
        try:
            ranked = list(fn(hist))[:k]
            failed = not ranked
        except Exception:  # any failure of the model is an error the device would report
            ranked, failed = [], True
        host_s = time.thread_time() - t0
        r.requests += 1
        if failed:
            r.errors += 1
            continue
        r.latencies_ms.append(d.profile.device_seconds(host_s) * 1000)
        r.hits += d.items[j] in ranked
    return recs


def simulate_rollout(fleet: Fleet, baseline: SearchFn, candidate: SearchFn, *, policy: RolloutPolicy = RolloutPolicy(),
                     requests_per_device: int = 4, k: int = 10, seed: int = 0, control_size: int | None = None,
                     baseline_name: str = "baseline", candidate_name: str = "candidate", progress: bool = True) -> RolloutReport:
    """Canary-roll ``candidate`` out over ``fleet`` against ``baseline`` (see the module docstring)."""
    from server.evaluate import one_thread

    def measure(frac, treat, control):
        arms = {"t": ([fleet[u] for u in treat], candidate), "c": ([fleet[u] for u in control], baseline)}
        out = measure_devices(arms, requests_per_device=requests_per_device, k=k, seed=seed, progress=progress,
                              desc=f"stage {frac:.0%}")
        return out["t"], out["c"]

    with one_thread():
        return run_rollout(fleet.tiers(), measure, policy=policy, candidate=candidate_name, baseline=baseline_name, seed=seed,
                           control_size=control_size)


def model_search_fn(model, k: int = 10, beam: int = 20) -> SearchFn:
    """A :class:`server.generative.GenerativeModel` (or anything with ``search(history, k, beam=)``) as a SearchFn."""
    def fn(history: list[str]) -> list[str]:
        return [i for i, _ in model.search(history, k, beam=beam)]

    return fn


# -- `edge-gr rollout simulate` -----------------------------------------------------------------
def cmd_simulate(args) -> None:
    """Materialize baseline and candidate from the registry, canary-roll the candidate over a simulated fleet,
    write the A/B report, and move the registry's pointer: to the candidate if every stage passed, else nowhere."""
    import json
    import tempfile
    from pathlib import Path

    import torch

    from server.generative import GenerativeModel
    from server.pipeline import RecPreset, load_rec_data
    from server.registry import Registry
    from server.rollout import report_markdown

    reg = Registry(args.registry, create=False)
    baseline = args.baseline or reg.current()
    if baseline is None:
        from edge_gr.errors import InputError

        raise InputError("the registry has no current version to compare against", hint="pass --baseline VERSION")
    with tempfile.TemporaryDirectory() as d:
        base = GenerativeModel.load(reg.materialize(baseline, Path(d) / "base"))
        cand = GenerativeModel.load(reg.materialize(args.candidate, Path(d) / "cand"))
    if args.corrupt_candidate:
        g = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for p in cand.model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * args.corrupt_candidate * p.std().clamp_min(1e-3))
    data = load_rec_data(RecPreset(dataset=args.dataset, max_users=args.max_users))
    fleet = Fleet.from_recdata(data, seed=args.seed)
    policy = RolloutPolicy(salt=args.salt)
    rep = simulate_rollout(fleet, model_search_fn(base, beam=args.beam), model_search_fn(cand, beam=args.beam), policy=policy,
                           requests_per_device=args.requests, seed=args.seed, baseline_name=baseline,
                           candidate_name=args.candidate + (f" (corrupted x{args.corrupt_candidate})" if args.corrupt_candidate else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(rep.to_json())
    out.with_suffix(".md").write_text(report_markdown(rep))
    print(report_markdown(rep))
    if rep.outcome == "completed" and not args.no_promote and not args.corrupt_candidate:
        reg.set_current(args.candidate, reason="rollout completed")
        print(f"current -> {args.candidate}")
    elif rep.outcome != "completed" and reg.current() == args.candidate:
        reg.rollback(to=baseline, reason="rollout rolled back")
        print(f"current -> {baseline} (rolled back)")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    print(json.dumps({"outcome": rep.outcome, "stopped_at": rep.stopped_at}))


def add_parser(sub) -> None:
    """Register ``edge-gr rollout simulate`` on an argparse sub-parser collection (wire it with a lazy import:
    ``server`` must not import ``device_sim`` at module level)."""
    rp = sub.add_parser("rollout", help="canary rollout with automatic rollback over a simulated fleet")
    rs = rp.add_subparsers(dest="rollout_cmd", required=True)
    p = rs.add_parser("simulate", help="roll a registry version out 5% -> 20% -> 50% -> 100% against the current one; A/B report")
    p.add_argument("--registry", required=True)
    p.add_argument("--candidate", required=True, help="version to roll out")
    p.add_argument("--baseline", default=None, help="version the control keeps (default: current)")
    p.add_argument("--data", "--dataset", dest="dataset", default="ml-100k", help="ml-100k | ml-1m | folder with items.jsonl + interactions.jsonl (one device per user)")
    p.add_argument("--max-users", type=int, default=None)
    p.add_argument("--requests", type=int, default=3, help="requests per device per stage")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--salt", default=RolloutPolicy.salt, help="bucketing salt (changes which devices go first)")
    p.add_argument("--corrupt-candidate", type=float, default=0.0, metavar="SCALE",
                   help="add Gaussian noise (SCALE x each tensor's std) to the candidate: a deliberately bad model (never promoted)")
    p.add_argument("--no-promote", action="store_true", help="do not move current to the candidate after a completed rollout")
    p.add_argument("--out", default="rollout-report", help="report path prefix (.json and .md are written)")
    p.set_defaults(fn=cmd_simulate)
