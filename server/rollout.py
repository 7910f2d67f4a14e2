"""Canary rollout with automatic rollback: stages 5% -> 20% -> 50% -> 100%, checked against a control group.

Pure functions over per-device measurements; who measures them (a real fleet's
telemetry, or ``device_sim.rollout_sim``) is the caller's business.

* **Buckets**: a device is in the treatment at fraction ``f`` iff
  ``bucket(device) < f``, where ``bucket`` is a stable hash (sha256 of salt + id) mapped to
  [0, 1). Stages are nested: a device that got the new model at 5% keeps it at 20%.
* **Control**: devices outside the treatment, sampled with the *same mix of device tiers*
  (stratified), so tier differences do not pass for model differences. At 100% there is
  no one left outside; the last control measured (at the previous stage) is used.
* **Rollback conditions** (the chapter's, all against the control of the same stage):

  ==============  =====================================================================
  errors          treatment error rate > 1% (absolute)
  latency         treatment p99 > control p99 x 1.20 (and > control + 0.5 ms: timer resolution)
  quality         treatment quality proxy (hit rate of the true next item, a CTR stand-in)
                  < control x 0.95 *and* the drop is significant (one-sided two-proportion
                  z-test, alpha 0.05) - so sampling noise on a 5% canary does not roll a
                  good model back
  ==============  =====================================================================

>>> round(bucket("user-42"), 6) == round(bucket("user-42"), 6), 0 <= bucket("x") < 1
(True, True)
>>> good = [DeviceRecord("d%d" % i, "mid", 10, 0, [10.0] * 10, 3) for i in range(50)]
>>> bad = [DeviceRecord("d%d" % i, "mid", 10, 0, [10.0] * 10, 0) for i in range(50)]
>>> check_stage(summarize(bad), summarize(good), RolloutPolicy()).reasons
['quality: 0.000 vs control 0.300 (-100.0%, limit -5%, p=0.0000)']
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from edge_gr.errors import InputError

__all__ = ["RolloutPolicy", "DeviceRecord", "ArmStats", "StageCheck", "RolloutReport", "bucket", "treatment_devices",
           "stratified_control", "summarize", "check_stage", "run_rollout", "report_markdown"]


@dataclass(frozen=True)
class RolloutPolicy:
    stages: tuple[float, ...] = (0.05, 0.20, 0.50, 1.00)  # treatment fractions, in order
    max_error_rate: float = 0.01        # treatment error rate above this rolls back
    max_p99_increase: float = 0.20      # treatment p99 above control p99 x (1 + this) rolls back ...
    min_p99_delta_ms: float = 0.5       # ... if also this many ms above it (below that, timer noise on a shared host)
    max_quality_drop: float = 0.05      # treatment quality below control x (1 - this), if significant, rolls back
    alpha: float = 0.05                 # significance level of the quality test
    salt: str = "edge-gr-rollout"       # change it to reshuffle which devices go first

    def __post_init__(self):
        s = list(self.stages)
        if not s or s != sorted(s) or s[-1] != 1.0 or s[0] <= 0:
            raise InputError(f"stages {self.stages} must increase from > 0 to 1.0", hint="e.g. (0.05, 0.2, 0.5, 1.0)")


@dataclass
class DeviceRecord:
    """What one device reported during one stage."""

    device: str
    tier: str
    requests: int
    errors: int
    latencies_ms: list[float]   # one per successful request
    hits: int                   # requests whose true next item was in the top k (quality / CTR proxy)


@dataclass
class ArmStats:
    devices: int
    requests: int
    errors: int
    error_rate: float
    p50_ms: float
    p99_ms: float
    quality: float              # hits / requests


@dataclass
class StageCheck:
    ok: bool
    reasons: list[str]          # empty when ok
    checks: dict                # name -> {"value", "control", "limit", "ok"}


def bucket(device: str, salt: str = RolloutPolicy.salt) -> float:
    """Stable position of a device in [0, 1): the first 60 bits of sha256(salt + ":" + id)."""
    h = hashlib.sha256(f"{salt}:{device}".encode()).hexdigest()
    return int(h[:15], 16) / 16 ** 15


def treatment_devices(devices: Sequence[str], fraction: float, salt: str = RolloutPolicy.salt) -> list[str]:
    """Devices in the treatment at ``fraction`` (nested across fractions).

    >>> a = treatment_devices([str(i) for i in range(1000)], 0.05); b = treatment_devices([str(i) for i in range(1000)], 0.2)
    >>> set(a) <= set(b), 30 < len(a) < 70
    (True, True)
    """
    return [d for d in devices if bucket(d, salt) < fraction]


def stratified_control(tiers: Mapping[str, str], treatment: Sequence[str], rng: np.random.Generator, size: int | None = None) -> list[str]:
    """Control devices outside ``treatment`` with the treatment's tier mix (as far as each tier allows).

    ``tiers`` maps device -> tier; ``size`` defaults to the treatment's size.
    """
    treat = set(treatment)
    size = len(treatment) if size is None else size
    want: dict[str, int] = {}
    for d in treatment:
        want[tiers[d]] = want.get(tiers[d], 0) + 1
    pool: dict[str, list[str]] = {}
    for d, t in tiers.items():
        if d not in treat:
            pool.setdefault(t, []).append(d)
    out = []
    total = max(1, len(treatment))
    for t, n in sorted(want.items()):
        cand = sorted(pool.get(t, []))
        k = min(len(cand), int(round(n * size / total)))
        out += [cand[i] for i in rng.choice(len(cand), k, replace=False)] if k else []
    return out


def summarize(records: Sequence[DeviceRecord]) -> ArmStats:
    """Pool one arm's records: error rate, p50 / p99 latency over all requests, quality = hits / requests."""
    req = sum(r.requests for r in records)
    err = sum(r.errors for r in records)
    lat = np.concatenate([np.asarray(r.latencies_ms, dtype=np.float64) for r in records]) if records else np.zeros(0)
    pct = lambda q: float(np.percentile(lat, q)) if len(lat) else float("nan")  # noqa: E731
    return ArmStats(devices=len(records), requests=req, errors=err, error_rate=err / req if req else 0.0, p50_ms=pct(50),
                    p99_ms=pct(99), quality=sum(r.hits for r in records) / req if req else 0.0)


def _one_sided_p(x1: int, n1: int, x2: int, n2: int) -> float:
    """p-value of H1: rate1 < rate2 (pooled two-proportion z-test)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return 0.5 * math.erfc(-z / math.sqrt(2))


def check_stage(treat: ArmStats, control: ArmStats, policy: RolloutPolicy) -> StageCheck:
    """The three rollback conditions; ``ok`` is False if any fires (``reasons`` say which, with the numbers)."""
    checks, reasons = {}, []
    ok = treat.error_rate <= policy.max_error_rate
    checks["error_rate"] = {"value": treat.error_rate, "control": control.error_rate, "limit": policy.max_error_rate, "ok": ok}
    if not ok:
        reasons.append(f"errors: {treat.error_rate:.2%} of requests failed (limit {policy.max_error_rate:.0%})")
    limit = max(control.p99_ms * (1 + policy.max_p99_increase), control.p99_ms + policy.min_p99_delta_ms)
    ok = not (treat.p99_ms > limit)  # NaN (no successful request) counts as ok here; errors catch it
    checks["p99_ms"] = {"value": treat.p99_ms, "control": control.p99_ms, "limit": limit, "ok": ok}
    if not ok:
        reasons.append(f"latency: p99 {treat.p99_ms:.2f} ms vs control {control.p99_ms:.2f} ms "
                       f"(+{treat.p99_ms / control.p99_ms - 1:.1%}, limit +{policy.max_p99_increase:.0%})")
    limit = control.quality * (1 - policy.max_quality_drop)
    hits_t, hits_c = round(treat.quality * treat.requests), round(control.quality * control.requests)
    p = _one_sided_p(hits_t, treat.requests, hits_c, control.requests)
    ok = not (treat.quality < limit and p < policy.alpha)
    checks["quality"] = {"value": treat.quality, "control": control.quality, "limit": limit, "p_value": p, "ok": ok}
    if not ok:
        change = treat.quality / control.quality - 1 if control.quality else float("-inf")
        reasons.append(f"quality: {treat.quality:.3f} vs control {control.quality:.3f} ({change:+.1%}, "
                       f"limit -{policy.max_quality_drop:.0%}, p={p:.4f})")
    return StageCheck(ok=not reasons, reasons=reasons, checks=checks)


@dataclass
class RolloutReport:
    candidate: str
    baseline: str
    outcome: str                          # "completed" | "rolled back"
    final_fraction: float                 # share of devices on the candidate at the end (0 after a rollback)
    stopped_at: float | None              # the stage fraction whose check failed
    stages: list[dict] = field(default_factory=list)
    policy: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=float)


# measure(fraction, treatment, control) -> (treatment records, control records)
Measure = Callable[[float, list[str], list[str]], tuple[list[DeviceRecord], list[DeviceRecord]]]


def run_rollout(devices: Mapping[str, str], measure: Measure, *, policy: RolloutPolicy = RolloutPolicy(), candidate: str = "candidate",
                baseline: str = "baseline", seed: int = 0, control_size: int | None = None,
                on_stage: Callable[[dict], None] | None = None) -> RolloutReport:
    """Walk the stages; at each, measure treatment and a stratified control, check, and stop at the first failure.

    ``devices`` maps device id -> tier. ``measure`` runs the stage and returns both arms'
    records. A failed check ends the rollout with ``outcome="rolled back"`` and
    ``final_fraction=0`` (every device back on the baseline) - the caller performs the
    rollback (e.g. ``Registry.rollback``) on that outcome.
    """
    if not devices:
        raise InputError("no devices to roll out to", hint="pass the fleet's device -> tier map")
    rng = np.random.default_rng(seed)
    ids = sorted(devices)
    report = RolloutReport(candidate, baseline, "completed", 1.0, None, policy=asdict(policy))
    last_control: ArmStats | None = None
    for frac in policy.stages:
        treat = treatment_devices(ids, frac, policy.salt)
        control = stratified_control(devices, treat, rng, control_size)
        t_rec, c_rec = measure(frac, treat, control)
        t_stats = summarize(t_rec)
        c_stats = summarize(c_rec) if c_rec else last_control
        if c_stats is None:
            raise InputError(f"stage {frac:.0%} has no control devices and no earlier control", hint="start with a stage below 100%")
        chk = check_stage(t_stats, c_stats, policy)
        stage = {"fraction": frac, "treatment": asdict(t_stats), "control": asdict(c_stats),
                 "control_from": "this stage" if c_rec else "previous stage", "checks": chk.checks,
                 "decision": "promote" if chk.ok else "rollback", "reasons": chk.reasons}
        report.stages.append(stage)
        if on_stage:
            on_stage(stage)
        if c_rec:
            last_control = c_stats
        if not chk.ok:
            report.outcome, report.final_fraction, report.stopped_at = "rolled back", 0.0, frac
            break
    return report


def report_markdown(r: RolloutReport) -> str:
    """The A/B report as a markdown table, one row per stage."""
    head = (f"# Rollout of {r.candidate} (baseline {r.baseline}): **{r.outcome}**"
            + (f" at the {r.stopped_at:.0%} stage" if r.stopped_at is not None else "") + "\n\n")
    rows = ["| stage | devices T / C | requests T / C | errors T | p99 ms T / C | quality T / C | decision |",
            "|---|---|---|---|---|---|---|"]
    for s in r.stages:
        t, c = s["treatment"], s["control"]
        rows.append(f"| {s['fraction']:.0%} | {t['devices']} / {c['devices']} | {t['requests']} / {c['requests']} | "
                    f"{t['error_rate']:.2%} | {t['p99_ms']:.2f} / {c['p99_ms']:.2f} | {t['quality']:.3f} / {c['quality']:.3f} | "
                    f"{s['decision']}{' (' + '; '.join(s['reasons']) + ')' if s['reasons'] else ''} |")
    p = r.policy
    foot = (f"\nRollback if errors > {p['max_error_rate']:.0%}, p99 > control +{p['max_p99_increase']:.0%}, or quality < control "
            f"-{p['max_quality_drop']:.0%} (one-sided z-test, alpha {p['alpha']}). T = treatment, C = control (same tier mix).\n")
    return head + "\n".join(rows) + "\n" + foot
