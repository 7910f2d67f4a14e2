"""The cloud-vs-edge report: latency, battery, network and accuracy for cloud-only,
hybrid and on-device serving, computed from a federated run and measured CPU times.

Every number is measured (model CPU time per query on this host, NDCG@10 of the
evaluated models, bytes and energy of the federated rounds) or derived from those with
the cited constants of :mod:`device_sim.profiles` / :mod:`device_sim.network` and the
stated usage pattern (:class:`Usage`, an ASSUMPTION, printed with the table).

>>> u = Usage(queries_per_hour=20, active_hours_per_day=2)
>>> m = mode_costs(u, host_ms=10.0, server_ms=10.0, req_bytes=600, resp_bytes=900, fl_j_per_day=0.0,
...                fl_mb_per_day=0.0, ndcg={"cloud": 0.1, "device": 0.09})
>>> m["on-device"]["network_mb_day"], m["on-device"]["latency_ms"]["low"] > 10.0
(0.0, True)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..battery import compute_energy_j, percent_per_hour, radio_energy_j
from ..network import MEAN_OFFLINE_H, MEAN_ONLINE_H, NETWORKS, P_WIFI, transfer_time
from ..profiles import PhoneProfile, load_profiles

__all__ = ["Usage", "mode_costs", "fl_costs", "render_markdown", "plot_report", "CHAPTER_TABLE"]

# The chapter's reported table (DESIGN.md 14.5), for reference next to ours.
CHAPTER_TABLE = {"cloud-only": {"latency_ms": 200, "battery_pct_h": 5.0, "network_mb_day": 100, "accuracy": 0.92},
                 "on-device": {"latency_ms": 10, "battery_pct_h": 0.5, "network_mb_day": 5, "accuracy": 0.89}}


@dataclass(frozen=True)
class Usage:
    """ASSUMPTION: how the app is used. Queries come while the user is active; each
    cloud request is its own radio burst (one tail per request)."""

    queries_per_hour: float = 20.0       # recommendations / searches per active hour
    active_hours_per_day: float = 2.0
    p_online: float = MEAN_ONLINE_H / (MEAN_ONLINE_H + MEAN_OFFLINE_H)
    p_wifi: float = P_WIFI
    http_overhead_bytes: int = 700       # ASSUMPTION: HTTP/2 + TLS record framing per request/response pair


def _net_mix(u: Usage) -> dict[str, float]:
    return {"wifi": u.p_wifi, "lte": 1.0 - u.p_wifi}


def mode_costs(u: Usage, *, host_ms: float, server_ms: float, req_bytes: int, resp_bytes: int, fl_j_per_day: float,
               fl_mb_per_day: float, ndcg: Mapping[str, float], profiles: Mapping[str, PhoneProfile] | None = None) -> dict:
    """Per serving mode: latency (ms, per tier), battery %/h while active (per tier),
    network MB/day, NDCG@10.

    ``host_ms`` / ``server_ms``: measured model CPU time per query on this host (the
    device runs it ``1/speed`` slower; the cloud is assumed as fast as this host).
    ``ndcg``: ``{"cloud": ..., "device": ...}`` measured on the held-out cohort.
    """
    profiles = dict(profiles or load_profiles())
    mix = _net_mix(u)
    req, resp = req_bytes + u.http_overhead_bytes / 2, resp_bytes + u.http_overhead_bytes / 2
    qpd = u.queries_per_hour * u.active_hours_per_day
    cloud_lat = {n: NETWORKS[n].rtt_ms + 1e3 * (transfer_time(req, n, "up") + transfer_time(resp, n, "down")) + server_ms
                 for n in NETWORKS}
    out: dict[str, dict] = {m: {"latency_ms": {}, "battery_pct_h": {}} for m in ("cloud-only", "hybrid", "on-device")}
    for name, p in profiles.items():
        dev_ms = host_ms / p.speed
        radio_j = sum(w * radio_energy_j(p, n, req / 1e6, resp / 1e6, bursts=1) for n, w in mix.items())
        cpu_j = compute_energy_j(p, host_ms / 1e3)
        fl_j_h = fl_j_per_day / u.active_hours_per_day  # FL work charged to active hours (conservative)
        lat_cloud = sum(w * cloud_lat[n] for n, w in mix.items())
        out["cloud-only"]["latency_ms"][name] = lat_cloud
        out["on-device"]["latency_ms"][name] = dev_ms
        out["hybrid"]["latency_ms"][name] = dev_ms  # the device answers first; the cloud refines in the background
        # cloud-only: requests go out only while online (offline the app has no answer)
        out["cloud-only"]["battery_pct_h"][name] = percent_per_hour(p, u.queries_per_hour * u.p_online * radio_j, 1.0)
        out["on-device"]["battery_pct_h"][name] = percent_per_hour(p, u.queries_per_hour * cpu_j + fl_j_h, 1.0)
        out["hybrid"]["battery_pct_h"][name] = percent_per_hour(p, u.queries_per_hour * (cpu_j + u.p_online * radio_j) + fl_j_h, 1.0)
    per_q_mb = (req + resp) / 1e6
    out["cloud-only"]["network_mb_day"] = u.p_online * qpd * per_q_mb
    out["on-device"]["network_mb_day"] = fl_mb_per_day
    out["hybrid"]["network_mb_day"] = fl_mb_per_day + u.p_online * qpd * per_q_mb
    out["cloud-only"]["ndcg@10"] = ndcg["cloud"]  # when it answers; offline it gives none (availability)
    out["cloud-only"]["availability"] = u.p_online
    out["on-device"]["ndcg@10"] = ndcg["device"]
    out["on-device"]["availability"] = 1.0
    out["hybrid"]["ndcg@10"] = u.p_online * ndcg["cloud"] + (1 - u.p_online) * ndcg["device"]
    out["hybrid"]["availability"] = 1.0
    return out


def fl_costs(run: Mapping, rounds_per_day: float) -> dict:
    """Per-participation bytes/energy measured in a run, and what a device spends per day.

    A device takes part in ``clients_per_round / num_devices`` of the rounds.
    """
    ups, downs, energy, cpu = [], [], [], []
    for r in run["rounds"]:
        for e in r["replies"]:
            met = e.get("metrics", {})
            if "energy-j" in met:
                energy.append(met["energy-j"])
                cpu.append(met["cpu-s"])
                downs.append(met.get("bytes-down", 0.0))
            if e.get("arrays"):
                ups.append(e["wire_bytes"])
    n_dev = run["nodes"]
    part_per_day = rounds_per_day * run["spec"]["clients_per_round"] / n_dev
    up, down, ej = float(np.mean(ups or [0])), float(np.mean(downs or [0])), float(np.mean(energy or [0]))
    return {"upload_bytes_mean": up, "upload_bytes_max": float(np.max(ups or [0])), "download_bytes_mean": down,
            "energy_j_per_participation": ej, "cpu_s_per_participation": float(np.mean(cpu or [0])),
            "participations_per_day": part_per_day, "j_per_day": ej * part_per_day,
            "mb_per_day": (up + down) * part_per_day / 1e6, "rounds_per_day": rounds_per_day}


def _avg(d: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    w = weights or {k: 1.0 for k in d}
    return sum(d[k] * w.get(k, 0.0) for k in d) / max(sum(w.get(k, 0.0) for k in d), 1e-12)


def render_markdown(costs: Mapping, usage: Usage, notes: Sequence[str] = ()) -> str:
    tiers = list(next(iter(costs.values()))["latency_ms"])
    lines = ["| mode | latency ms (" + " / ".join(tiers) + ") | battery %/h active (" + " / ".join(tiers) +
             ") | network MB/day | NDCG@10 | answers offline |", "|---|---|---|---|---|---|"]
    for m, c in costs.items():
        off = "yes" if c["availability"] >= 1 else f"no ({1 - c['availability']:.0%} of the time)"
        lat = " / ".join(f"{c['latency_ms'][t]:.1f}" for t in tiers)
        bat = " / ".join(f"{c['battery_pct_h'][t]:.3f}" for t in tiers)
        lines.append(f"| {m} | {lat} | {bat} | {c['network_mb_day']:.3f} | {c['ndcg@10']:.4f} | "
                     f"{off} |")
    lines.append("")
    lines.append(f"Usage (ASSUMPTION): {usage.queries_per_hour:g} queries per active hour, {usage.active_hours_per_day:g} active "
                 f"hours/day, online {usage.p_online:.0%} of the time, WiFi {usage.p_wifi:.0%} / LTE {1 - usage.p_wifi:.0%}.")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def plot_report(runs: Mapping[str, Mapping], costs: Mapping, path: str | Path) -> Path:
    """Quality vs round (one line per DP setting), epsilon vs round, battery by tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5))
    for label, run in runs.items():
        ev = run["evaluation"]
        rs = sorted(int(k) for k in ev)
        ax[0].plot(rs, [ev[str(r)]["ndcg@10"] if str(r) in ev else ev[r]["ndcg@10"] for r in rs], marker="o", label=label)
        eps = [max([e["metrics"].get("epsilon", 0.0) for e in rr["replies"] if "metrics" in e] or [0.0]) for rr in run["rounds"]]
        ax[1].plot([rr["round"] for rr in run["rounds"]], np.maximum.accumulate(eps) if eps else eps, marker=".", label=label)
    ax[0].set(xlabel="round", ylabel="held-out NDCG@10 (global model)", title="quality vs round")
    ax[0].legend(fontsize=8)
    ax[1].set(xlabel="round", ylabel="max epsilon of any device so far", title="record-level epsilon per device (delta 1e-5)")
    ax[1].legend(fontsize=8)
    tiers = list(next(iter(costs.values()))["battery_pct_h"])
    x = np.arange(len(tiers))
    for i, (m, c) in enumerate(costs.items()):
        ax[2].bar(x + (i - 1) * 0.27, [c["battery_pct_h"][t] for t in tiers], 0.27, label=m)
    ax[2].set_xticks(x, tiers)
    ax[2].set(ylabel="battery % per active hour", title="battery drain by phone tier")
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- measured inputs ---------------------------------------------------------------------------
def measure_query(gm, histories: Sequence[Sequence[str]], beam: int = 20, reps: int = 1) -> dict:
    """Model CPU time per query on this host at 1 thread (p50/p99, ms), and the bytes of the
    matching ``/search`` request and response bodies as ``server/serve.py`` defines them."""
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        hits = None
        for h in list(histories) * reps:
            t0 = time.process_time()
            hits = gm.rank([h], 10, beam=beam)[0]
            times.append(1e3 * (time.process_time() - t0))
    finally:
        torch.set_num_threads(threads)
    h = list(histories[0])[-gm.model.cfg.max_len:]
    req = json.dumps({"history": h, "k": 10}).encode()
    resp = json.dumps({"items": [{"item_id": i, "score": round(s, 4), "title": ""} for i, s in hits], "task": "rec",
                       "model_version": "v1", "latency_ms": 1.0}).encode()
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "req_bytes": len(req), "resp_bytes": len(resp), "queries": len(times)}


def write_report(runs: Mapping[str, Mapping], out: str | Path, usage: Usage = Usage(), *,
                 ndcg: Mapping[str, float] | None = None, ndcg_note: str | None = None) -> str:
    """report.md + report.png + report.json in ``out`` from one or more runs (first = main).

    ``ndcg`` (``{"cloud", "device"}``, with ``ndcg_note`` saying where they were measured) replaces the main run's
    baselines, e.g. the GPU-measured quality of the recipe whose costs the Flower run measured."""
    from .flower import FLSpec, env_for
    from .simulate import eval_cohort

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    main = next(iter(runs.values()))
    spec = FLSpec.from_json(json.dumps(main["spec"]))
    env = env_for(spec)
    users = eval_cohort(spec, env)[:100]
    q = measure_query(env.gm, [env.setup.split.test_history(u) for u in users], beam=spec.eval_beam)
    fl = fl_costs(main, rounds_per_day=24.0 / spec.hours_per_round)
    b = main.get("baselines") or {}
    ndcg = dict(ndcg) if ndcg is not None else {"cloud": b.get("centralized", {}).get("ndcg@10", float("nan")),
                                                "device": b.get("personalized", {}).get("ndcg@10", float("nan"))}
    costs = mode_costs(usage, host_ms=q["p50_ms"], server_ms=q["p50_ms"], req_bytes=q["req_bytes"], resp_bytes=q["resp_bytes"],
                       fl_j_per_day=fl["j_per_day"], fl_mb_per_day=fl["mb_per_day"], ndcg=ndcg)
    notes = [f"Model CPU time per query measured here: p50 {q['p50_ms']:.2f} ms / p99 {q['p99_ms']:.2f} ms (host, 1 thread, eager "
             f"torch, beam {spec.eval_beam}); a phone tier runs it 1/speed slower; the cloud is assumed as fast as this host.",
             f"Request/response bodies measured: {q['req_bytes']} / {q['resp_bytes']} bytes (+{usage.http_overhead_bytes} B framing, ASSUMPTION).",
             f"Federated learning measured in the run: {fl['upload_bytes_mean'] / 1e3:.1f} KB up / {fl['download_bytes_mean'] / 1e3:.1f} KB down "
             f"and {fl['energy_j_per_participation']:.2f} J per participation, {fl['participations_per_day']:.3f} participations/day "
             f"(a round every {spec.hours_per_round:g} h).",
             ndcg_note or ("NDCG@10: cloud = adapter trained centrally on the pooled device records (what a cloud that sees all "
                           "data gets); device = federated global adapter + a local fine-tune that never leaves the device "
                           "(personalized, no DP needed)."),
             "Radio energy: per-MB + one radio tail per request burst ([Huang12] LTE, [Bala09] WiFi); CPU: active power x device seconds."]
    md = ["# Federated personalization report", "", "## Cloud vs edge (from the simulation)", "",
          render_markdown(costs, usage, notes), "", "## Chapter's reported numbers (for reference, not measured here)", "",
          "| mode | latency ms | battery %/h | network MB/day | accuracy |", "|---|---|---|---|---|"]
    md += [f"| {m} | {c['latency_ms']} | {c['battery_pct_h']} | {c['network_mb_day']} | {c['accuracy']} |" for m, c in CHAPTER_TABLE.items()]
    md += ["", "## Runs", "", "| run | devices | rounds | base NDCG@10 | federated | personalized | local only | centralized | "
           "max epsilon | upload KB (max) | simulation s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        bb = run.get("baselines") or {}
        eps = [e["metrics"].get("epsilon", 0.0) for r in run["rounds"] for e in r["replies"] if "metrics" in e]
        ups = [e["wire_bytes"] for r in run["rounds"] for e in r["replies"] if e.get("arrays")]
        g = lambda k: f"{bb[k]['ndcg@10']:.4f}" if k in bb else "-"
        md.append(f"| {label} | {run['nodes']} | {len(run['rounds'])} | {g('base')} | {g('federated')} | {g('personalized')} | "
                  f"{g('local_only')} | {g('centralized')} | {max(eps or [0]):.3f} | {max(ups or [0]) / 1e3:.1f} | "
                  f"{run['timing']['simulation_s']:.0f} |")
    plot_report(runs, costs, out / "report.png")
    md += ["", "![quality, epsilon, battery](report.png)", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"costs": costs, "fl": fl, "query": q, "usage": asdict(usage), "ndcg": ndcg,
                                                 "ndcg_note": ndcg_note}, indent=1))
    return text


def fleet_day(dataset: str = "ml-1m", devices: int = 1000, hours: float = 24.0, fl_run: str | None = None, seed: int = 0,
              usage: Usage = Usage(), host_ms: float | None = None, active_start_h: float = 18.0) -> dict:
    """Run every device's battery through ``hours`` under each serving mode.

    Idle drain and nightly charging come from :class:`~device_sim.battery.Battery`; on
    top, each active hour (from ``active_start_h``) costs that mode's per-query energy
    and, on device, the federated participation energy. ``host_ms`` is the model CPU
    time per query (default: measured on an untrained model of the FL device shape -
    the time does not depend on the weights).
    """
    import copy

    from server.data.base import Item, RecData

    from ..fleet import Fleet

    fl = None
    if fl_run:
        run = json.loads(Path(fl_run).read_text())
        fl = fl_costs(run, rounds_per_day=24.0 / run["spec"]["hours_per_round"])
    q = None
    if host_ms is None:
        q = _untrained_query_cost()
        host_ms = q["p50_ms"]
    req, resp = (q["req_bytes"], q["resp_bytes"]) if q else (400, 900)
    rd = RecData("fleet", [Item("0", "0")], {f"u{i}": ["0"] for i in range(devices)})
    fleet = Fleet.from_recdata(rd, seed=seed)
    costs = mode_costs(usage, host_ms=host_ms, server_ms=host_ms, req_bytes=req, resp_bytes=resp,
                       fl_j_per_day=fl["j_per_day"] if fl else 0.0, fl_mb_per_day=fl["mb_per_day"] if fl else 0.0,
                       ndcg={"cloud": float("nan"), "device": float("nan")})
    res: dict = {"devices": devices, "hours": hours, "host_ms": host_ms, "modes": {}}
    for mode, c in costs.items():
        low, used = 0, {}
        for d in fleet:
            bat = copy.deepcopy(d.battery)
            for h in range(int(hours)):
                t = float(h + 1)
                bat.advance(t)
                hod = t % 24.0
                if (hod - active_start_h) % 24.0 < usage.active_hours_per_day and not bat.is_charging(t):
                    bat.drain(c["battery_pct_h"][d.profile.name] / 100.0 * d.profile.capacity_j)
            low += bat.level < 0.2
            used.setdefault(d.profile.name, []).append(bat.level)
        res["modes"][mode] = {"share_below_20pct": low / devices, "mean_end_level": {k: float(np.mean(v)) for k, v in used.items()},
                              "battery_pct_h_active": c["battery_pct_h"], "network_mb_day": c["network_mb_day"],
                              "latency_ms": c["latency_ms"]}
    lines = ["| mode | battery %/active h (" + " / ".join(costs["on-device"]["battery_pct_h"]) + ") | network MB/day | "
             f"devices < 20% after {hours:g} h |", "|---|---|---|---|"]
    for mode, r in res["modes"].items():
        lines.append(f"| {mode} | " + " / ".join(f"{v:.3f}" for v in r["battery_pct_h_active"].values()) +
                     f" | {r['network_mb_day']:.3f} | {r['share_below_20pct']:.1%} |")
    res["markdown"] = "\n".join(lines) + f"\n\nModel CPU time per query on this host: {host_ms:.2f} ms (p50, 1 thread)."
    return res


def _untrained_query_cost() -> dict:
    import torch

    from server.generative import GenerativeModel
    from server.model import GenerativeRetriever
    from server.semantic_ids import build_ids
    from server.data.base import Item

    from .setup import FLData

    d = FLData()
    n = 3706
    rng = np.random.default_rng(0)
    ids = build_ids([str(i) for i in range(n)], rng.normal(size=(n, 16)).astype(np.float32), levels=d.levels)
    cfg = type(d.model)(**{**d.model.to_dict(), "task": "rec", "n_items": n, "levels": tuple(ids.levels)})
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(str(i), str(i)) for i in range(n)])
    hist = [[str(i) for i in rng.integers(0, n, 50)] for _ in range(30)]
    return measure_query(gm, hist, beam=20)
