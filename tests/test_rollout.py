"""Canary rollout: stable buckets, stratified control, the three rollback conditions, the fleet simulation."""

import json
import time

import numpy as np
import pytest

from device_sim.fleet import Fleet
from device_sim.rollout_sim import simulate_rollout
from edge_gr.errors import InputError
from server.data.base import Item, RecData
from server.rollout import (DeviceRecord, RolloutPolicy, bucket, check_stage, report_markdown, run_rollout, stratified_control,
                            summarize, treatment_devices)

DEVICES = [f"user{i}" for i in range(2000)]


def test_buckets_are_stable_nested_and_about_the_right_size():
    assert bucket("user7") == bucket("user7") and bucket("user7") != bucket("user7", salt="other")
    sizes = [len(treatment_devices(DEVICES, f)) for f in (0.05, 0.2, 0.5, 1.0)]
    assert abs(sizes[0] - 100) < 35 and abs(sizes[1] - 400) < 60 and abs(sizes[2] - 1000) < 90 and sizes[3] == 2000
    assert set(treatment_devices(DEVICES, 0.05)) <= set(treatment_devices(DEVICES, 0.2)) <= set(treatment_devices(DEVICES, 0.5))


def test_control_is_disjoint_and_has_the_treatment_tier_mix():
    tiers = {d: ("low" if i % 4 == 0 else "high") for i, d in enumerate(DEVICES)}
    treat = treatment_devices(DEVICES, 0.2)
    ctrl = stratified_control(tiers, treat, np.random.default_rng(0))
    assert not set(ctrl) & set(treat) and abs(len(ctrl) - len(treat)) <= 2
    share = lambda ds: np.mean([tiers[d] == "low" for d in ds])  # noqa: E731
    assert abs(share(ctrl) - share(treat)) < 0.01


def _arm(n, req=20, err=0, lat=10.0, hits=4, seed=0):
    rng = np.random.default_rng(seed)
    return [DeviceRecord(f"d{i}", "mid", req, err, list(lat * (1 + 0.05 * rng.random(req - err))), hits) for i in range(n)]


@pytest.mark.parametrize("treat, fires", [
    (_arm(50, seed=1), []),
    (_arm(50, err=1, seed=1), ["error_rate"]),                       # 5% of requests fail
    (_arm(50, lat=13.0, seed=1), ["p99_ms"]),                        # +30% latency
    (_arm(50, hits=2, seed=1), ["quality"]),                         # -50% hit rate, 1000 requests per arm
    (_arm(50, err=2, lat=20.0, hits=1, seed=1), ["error_rate", "p99_ms", "quality"]),
])
def test_each_rollback_condition_fires_on_its_own(treat, fires):
    chk = check_stage(summarize(treat), summarize(_arm(50)), RolloutPolicy())
    assert sorted(k for k, v in chk.checks.items() if not v["ok"]) == fires and chk.ok == (not fires) and len(chk.reasons) == len(fires)


def test_a_small_insignificant_quality_dip_does_not_roll_back():
    ctrl = [DeviceRecord(f"c{i}", "mid", 4, 0, [1.0] * 4, int(i < 20)) for i in range(30)]   # 20 hits / 120 requests
    treat = [DeviceRecord(f"t{i}", "mid", 4, 0, [1.0] * 4, int(i < 18)) for i in range(30)]  # 18 / 120: -10%, p ~ 0.36
    t, c = summarize(treat), summarize(ctrl)
    assert t.quality < c.quality * 0.95
    assert check_stage(t, c, RolloutPolicy()).ok


def _measure(bad_from: float | None):
    def measure(frac, treat, control):
        bad = bad_from is not None and frac >= bad_from
        return _arm(len(treat), hits=0 if bad else 4, seed=2), _arm(len(control), seed=3)
    return measure


def test_a_bad_model_is_rolled_back_at_the_first_stage_and_a_good_one_reaches_everyone():
    tiers = {d: "mid" for d in DEVICES}
    bad = run_rollout(tiers, _measure(0.0), candidate="v1.1", baseline="v1.0")
    assert (bad.outcome, bad.stopped_at, bad.final_fraction, len(bad.stages)) == ("rolled back", 0.05, 0.0, 1)
    good = run_rollout(tiers, _measure(None))
    assert good.outcome == "completed" and [s["fraction"] for s in good.stages] == [0.05, 0.2, 0.5, 1.0]
    assert good.stages[-1]["control_from"] == "previous stage"
    late = run_rollout(tiers, _measure(0.5))
    assert late.stopped_at == 0.5 and [s["decision"] for s in late.stages] == ["promote", "promote", "rollback"]
    md = report_markdown(bad)
    assert "rolled back" in md and "| 5% |" in md and "quality" in md
    assert json.loads(bad.to_json())["stages"][0]["decision"] == "rollback"


def test_bad_policy_and_empty_fleet_say_what_to_do():
    with pytest.raises(InputError, match="increase"):
        RolloutPolicy(stages=(0.5, 0.2, 1.0))
    with pytest.raises(InputError, match="no devices"):
        run_rollout({}, _measure(None))


# -- the simulated fleet ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet():
    items = [Item(str(i), str(i)) for i in range(30)]
    seqs = {f"u{u}": [str((u + j) % 30) for j in range(12)] for u in range(400)}
    return Fleet.from_recdata(RecData("toy", items, seqs), seed=0)


def _good(h):
    return [str((int(h[-1]) + 1) % 30), str((int(h[-1]) + 2) % 30)]


def _wrong(h):
    return [str((int(h[-1]) + 7) % 30)]


def _slow(h):
    t = time.thread_time()
    while time.thread_time() - t < 0.003:  # 3 ms more CPU per request
        pass
    return _good(h)


def _flaky(h):
    if (int(h[-1]) + len(h)) % 10 == 0:  # ~10% of requests fail
        raise RuntimeError("model crashed")
    return _good(h)


@pytest.mark.parametrize("candidate, outcome, reason", [
    (_good, "completed", None), (_wrong, "rolled back", "quality"), (_slow, "rolled back", "latency"), (_flaky, "rolled back", "errors")])
def test_fleet_simulation(fleet, candidate, outcome, reason):
    r = simulate_rollout(fleet, _good, candidate, requests_per_device=3, progress=False)
    assert r.outcome == outcome
    if reason:
        assert r.stopped_at == 0.05 and r.stages[0]["reasons"][0].startswith(reason)
    else:
        assert r.final_fraction == 1.0 and r.stages[0]["treatment"]["devices"] > 5
