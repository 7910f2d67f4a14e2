"""Battery-aware variant policy and the switcher that applies it (issue #4, item 4)."""

import doctest
import threading
import time

import pytest

import edge_gr.policy
from edge_gr.errors import InputError
from edge_gr.policy import DeviceState, VariantPolicy, VariantSwitcher

ALL = ["fp32", "fp16", "int8", "int4"]


class FakeRetriever:
    """Answers with the variant in use; ``switch`` loads (sleeps) and then swaps; can be told to fail."""

    def __init__(self, variants=ALL, variant="fp16", load_s=0.0, broken=()):
        self.variants, self.variant, self.load_s, self.broken = list(variants), variant, load_s, set(broken)
        self.loads = []

    def switch(self, v):
        self.loads.append(v)
        time.sleep(self.load_s)
        if v in self.broken:
            raise MemoryError(f"cannot load {v}")
        self.variant = v  # the swap: one assignment

    def search(self, q, k=10):
        return [(self.variant, 0.0)][:k]


def test_docstring_examples():
    r = doctest.testmod(edge_gr.policy, optionflags=doctest.ELLIPSIS)
    assert r.attempted > 0 and r.failed == 0


@pytest.mark.parametrize("battery,want", [(1.0, "fp16"), (0.5, "fp16"), (0.4999, "int8"), (0.2, "int8"), (0.1999, "int4"), (0.0, "int4")])
def test_chapter_thresholds(battery, want):
    assert VariantPolicy(ALL).decide(DeviceState(battery)).variant == want


def test_charging_thermal_and_missing_variants():
    p = VariantPolicy(ALL)
    assert p.decide(DeviceState(0.05, charging=True)).variant == "fp32"
    assert p.decide(DeviceState(0.9, thermal="fair")).variant == "fp16"
    assert p.decide(DeviceState(0.9, thermal="serious")).variant == "int8"
    assert p.decide(DeviceState(0.9, thermal="critical")).variant == "int4"
    assert p.decide(DeviceState(0.3, thermal="critical")).variant == "int4"  # clamped at the smallest
    assert p.decide(DeviceState(0.9, charging=True, thermal="serious")).variant == "fp16"
    # only the bundle's variants are chosen; fp16 absent -> fp32; int4 absent -> int8
    q = VariantPolicy(["fp32", "int8", "mixed"])
    assert [q.decide(DeviceState(b)).variant for b in (0.9, 0.3, 0.1)] == ["fp32", "int8", "int8"]
    assert VariantPolicy(["fp16"]).decide(DeviceState(0.01, thermal="critical")).variant == "fp16"
    with pytest.raises(InputError, match="order"):
        VariantPolicy(["mixed", "pruned-30"])
    for bad in [dict(battery=1.5), dict(battery=0.5, thermal="hot"), dict(battery=0.5, free_memory_mb=-1)]:
        with pytest.raises(InputError):
            DeviceState(**bad)


def test_hysteresis_no_flap_on_an_oscillating_battery():
    trace = [0.21, 0.19] * 20 + [0.52, 0.48] * 20  # a gauge wobbling around both thresholds
    p = VariantPolicy(ALL)
    got = [p.choose(DeviceState(b)) for b in trace]
    changes = [(i, a, b) for i, (a, b) in enumerate(zip(got, got[1:]), 1) if a != b]
    assert changes == [(1, "int8", "int4"), (40, "int4", "int8")], changes  # 0.52 is below 0.50 + margin
    flappy = VariantPolicy(ALL, margin=0.0)
    seq = [flappy.choose(DeviceState(b)) for b in trace]
    assert sum(a != b for a, b in zip(seq, seq[1:])) > 40  # without a margin it flaps on every reading


def test_memory_picks_what_fits():
    sizes = {"fp32": 60, "fp16": 30, "int8": 16, "int4": 9}
    p = VariantPolicy(ALL, sizes_mb=sizes)
    assert p.decide(DeviceState(0.9, free_memory_mb=20)).variant == "int8"      # fp16 does not fit, int8 does
    assert p.decide(DeviceState(0.9, charging=True, free_memory_mb=40)).variant == "fp16"
    assert p.decide(DeviceState(0.9, free_memory_mb=5)).variant == "int4"       # nothing fits: the smallest
    prev = p.decide(DeviceState(0.9))                                           # fp16 in use
    assert p.decide(DeviceState(0.9, free_memory_mb=1), prev).variant == "fp16"  # the resident one needs no new memory
    assert p.decide(DeviceState(0.9, thermal="critical", free_memory_mb=5), prev).variant == "fp16"  # int4 cannot be loaded
    with pytest.raises(InputError, match="sizes_mb"):
        VariantPolicy(ALL, sizes_mb={"fp16": 30})


def test_min_dwell_delays_steps_up_only():
    p = VariantPolicy(ALL, min_dwell_s=60)
    seq = [p.choose(DeviceState(b, charging=c, t=t)) for t, b, c in
           [(0, 0.9, True), (10, 0.3, False), (20, 0.3, True), (69, 0.3, True), (70, 0.3, True), (80, 0.1, False)]]
    assert seq == ["fp32", "int8", "int8", "int8", "fp32", "int4"]
    with pytest.raises(InputError, match="time"):
        VariantPolicy(ALL, min_dwell_s=5).decide(DeviceState(0.9), VariantPolicy(ALL).decide(DeviceState(0.1)))


def battery_trace():
    """(t, battery, charging): a day's drain 100% -> 5% with a +-2% jittery gauge, then charging to 60%, then unplugged."""
    out = []
    for t in range(96):
        out.append((t * 60.0, min(1.0, max(0.0, 1.0 - 0.01 * t + (0.02 if t % 2 else -0.02))), False))
    for i in range(56):
        out.append((96 * 60.0 + i * 60.0, 0.05 + 0.01 * i, True))
    out += [(152 * 60.0 + i * 60.0, 0.60 - 0.01 * i, False) for i in range(10)]
    return out


def test_switching_along_a_recorded_battery_trace():
    r = FakeRetriever(variant="fp32")
    s = VariantSwitcher(r, VariantPolicy(ALL))
    served = []
    for t, b, c in battery_trace():
        s.update(DeviceState(b, charging=c, t=t))
        served.append(s.search("q", 1)[0][0])
    assert [(a, b) for _, a, b in s.switches] == [("fp32", "fp16"), ("fp16", "int8"), ("int8", "int4"), ("int4", "fp32"), ("fp32", "fp16")]
    assert r.loads == ["fp16", "int8", "int4", "fp32", "fp16"]  # each switch loaded exactly once: no flapping on the jitter
    assert served[0] == "fp16" and served[60] == "int8" and served[90] == "int4" and served[100] == "fp32" and served[-1] == "fp16"
    assert s.stats() == {"variant": "fp16", "switches": 5, "failed_switches": 0, "last_error": None}


def test_a_failing_switch_keeps_serving_and_retries_later():
    r = FakeRetriever(broken={"int4"})
    calls = []
    s = VariantSwitcher(r, VariantPolicy(ALL), retry_after_s=30, on_switch=[lambda a, b: calls.append((a, b))])
    assert s.update(DeviceState(0.1, t=0)) == "fp16"  # int4 failed to load
    assert s.search("q") == [("fp16", 0.0)]
    assert s.stats()["failed_switches"] == 1 and "MemoryError: cannot load int4" in s.stats()["last_error"]
    s.update(DeviceState(0.1, t=10))
    assert r.loads == ["int4"]  # not retried before retry_after_s
    r.broken.clear()
    assert s.update(DeviceState(0.1, t=31)) == "int4"
    assert r.loads == ["int4", "int4"] and calls == [("fp16", "int4")] and s.search("q") == [("int4", 0.0)]


def test_requests_during_a_switch_are_served():
    r = FakeRetriever(load_s=0.3)
    s = VariantSwitcher(r, VariantPolicy(ALL))
    th = threading.Thread(target=s.update, args=(DeviceState(0.3),))
    th.start()
    time.sleep(0.05)
    t0, answers = time.perf_counter(), []
    while th.is_alive():
        answers.append(s.search("q")[0][0])
        time.sleep(0.01)
    th.join()
    assert answers and set(answers) <= {"fp16", "int8"} and answers[0] == "fp16"  # served the old one while loading
    assert time.perf_counter() - t0 < 1.0 and s.search("q")[0][0] == "int8"
    with pytest.raises(InputError, match="current"):
        VariantSwitcher(object(), VariantPolicy(ALL))
