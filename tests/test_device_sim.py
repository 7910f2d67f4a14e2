"""device_sim: profiles, battery, network and fleet (tiny data built on the fly)."""

import doctest
import importlib
import time

import numpy as np
import pytest

from device_sim.battery import Battery, charging_intervals, compute_energy_j, idle_energy_j, percent_per_hour, radio_energy_j, task_energy_j
from device_sim.fleet import Fleet
from device_sim.network import Network, transfer_time
from device_sim.profiles import PROFILE_DIR, load_profile, load_profiles
from edge_gr.errors import InputError
from server.data.base import Item, RecData


@pytest.fixture
def low():
    return load_profiles()["low"]


@pytest.fixture
def toy():
    rng = np.random.default_rng(0)
    items = [Item(str(i), str(i)) for i in range(50)]
    seqs = {f"u{k}": [str(x) for x in rng.integers(0, 50, size=int(rng.integers(3, 30)))] for k in range(300)}
    return RecData("toy", items, seqs)


@pytest.mark.parametrize("name", ["device_sim.profiles", "device_sim.battery", "device_sim.network", "device_sim.fleet"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_shipped_profiles_load_and_every_constant_is_commented():
    profiles = load_profiles()
    assert {"low", "mid", "high"} <= set(profiles)
    for f in PROFILE_DIR.glob("*.toml"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if "=" in line and not line.startswith("#") and not line.startswith(("name", "description")):
                j = i - 1
                while j >= 0 and "=" in lines[j] and not lines[j].startswith("#"):
                    j -= 1            # constants derived together share one comment block
                assert j >= 0 and lines[j].startswith("#"), f"{f.name}:{i + 1} has no citation comment above it"


def _write_profile(tmp_path, edit):
    text = (PROFILE_DIR / "low.toml").read_text()
    p = tmp_path / "bad.toml"
    p.write_text(edit(text))
    return p


def test_missing_field_names_file_and_field(tmp_path):
    p = _write_profile(tmp_path, lambda s: s.replace("voltage_v = 3.87\n", ""))
    with pytest.raises(InputError, match=r"bad\.toml.*battery\.voltage_v"):
        load_profile(p)


def test_negative_capacity_names_file_and_field(tmp_path):
    p = _write_profile(tmp_path, lambda s: s.replace("capacity_mah = 5000", "capacity_mah = -5000"))
    with pytest.raises(InputError, match=r"bad\.toml.*battery\.capacity_mah.*-5000"):
        load_profile(p)


def test_wrong_type_and_duplicate_names(tmp_path):
    p = _write_profile(tmp_path, lambda s: s.replace("speed = 0.25", 'speed = "fast"'))
    with pytest.raises(InputError, match=r"cpu\.speed.*number"):
        load_profile(p)
    (tmp_path / "a.toml").write_text((PROFILE_DIR / "low.toml").read_text())
    (tmp_path / "b.toml").write_text((PROFILE_DIR / "low.toml").read_text())
    p.unlink()
    with pytest.raises(InputError, match="already used"):
        load_profiles(tmp_path)


def test_drain_arithmetic_by_hand(low):
    # 3 host s at speed 0.25 -> 12 device s x 1.5 W = 18 J
    assert compute_energy_j(low, 3.0) == pytest.approx(18.0)
    # LTE: 0.5 MB up x 5.33 + 2 MB down x 1.22 + 2 tails x 12.58 = 2.665 + 2.44 + 25.16
    assert radio_energy_j(low, "lte", 0.5, 2.0, bursts=2) == pytest.approx(30.265)
    assert radio_energy_j(low, "wifi", 1.0, 0.0, bursts=0) == pytest.approx(2.37)
    assert task_energy_j(low, 3.0, "lte", 0.5, 2.0, 2) == pytest.approx(48.265)
    cap = 5000 * 3.6 * 3.87
    b = Battery(low, level=0.5)
    assert b.drain(48.265) == pytest.approx(48.265 / cap)
    assert b.level == pytest.approx(0.5 - 48.265 / cap)
    assert percent_per_hour(low, idle_energy_j(low, 2.0), 2.0) == pytest.approx(100 * 0.07 * 3600 / cap)


def test_level_is_clamped(low):
    b = Battery(low, level=0.01)
    assert b.drain(1e9) == pytest.approx(0.01) and b.level == 0.0
    b.charge(1e9)
    assert b.level == 1.0
    with pytest.raises(InputError):
        Battery(low, level=1.5)
    with pytest.raises(InputError):
        b.drain(-1.0)


def test_charging_window_and_advance(low):
    assert charging_intervals(0.0, 48.0, 23.0, 7.0) == [(0.0, 6.0), (23.0, 30.0), (47.0, 48.0)]
    b = Battery(low, level=0.2, charge_start_h=10.0, charge_hours=2.0)
    cap = low.capacity_j
    b.advance(10.0)                       # 10 h of idle drain
    assert b.level == pytest.approx(0.2 - 0.07 * 3600 * 10 / cap)
    b.advance(11.0)                       # 1 h at 12 W into the cell
    assert b.level == pytest.approx(0.2 - 0.07 * 3600 * 10 / cap + 12 * 3600 / cap)
    b.advance(12.0)                       # the second hour fills it
    assert b.level == 1.0
    b.advance(13.0)                       # idle again
    assert b.level == pytest.approx(1.0 - 0.07 * 3600 / cap)
    assert Battery(low, level=0.2, charge_start_h=23.0, charge_hours=7.0).is_charging(3.0)  # last night spills past 0 h
    with pytest.raises(InputError):
        b.advance(10.0)


def test_seeded_charge_windows_are_spread(low):
    rng = np.random.default_rng(0)
    starts = [Battery.seeded(low, rng).charge_start_h for _ in range(500)]
    assert 1.0 < np.std([(s + 12) % 24 for s in starts]) < 2.5


def test_network_is_deterministic_for_a_seed():
    ts = np.linspace(0, 500, 400)
    a = [Network(seed=3).network_at(t) for t in ts]
    n = Network(seed=3)
    b = [n.network_at(t) for t in ts[::-1]][::-1]  # asked in reverse order
    assert a == b
    assert a != [Network(seed=4).network_at(t) for t in ts]


def test_online_fraction_near_stationary():
    fr = np.mean([Network(seed=s, mean_online_h=2.0, mean_offline_h=2.0).online_fraction(0, 1000) for s in range(40)])
    assert abs(fr - 0.5) < 0.03
    fr = np.mean([Network(seed=s).online_fraction(0, 1000) for s in range(40)])
    assert abs(fr - Network().stationary_online) < 0.03


def test_transfer_time():
    assert transfer_time(0, "wifi") == pytest.approx(0.030)
    assert transfer_time(2_000_000, "lte", "down") == pytest.approx(0.0695 + 16 / 12.74)
    with pytest.raises(InputError):
        transfer_time(10, "5g")
    n = Network(seed=0)
    t_off = next(t for t in np.arange(0, 200, 0.25) if not n.is_online(t))
    with pytest.raises(InputError, match="offline"):
        n.transfer_time(10, t_off)


def test_fleet_is_deterministic(toy):
    a, b = Fleet.from_recdata(toy, seed=5), Fleet.from_recdata(toy, seed=5)
    assert a.tiers() == b.tiers()
    assert [d.battery.level for d in a] == [d.battery.level for d in b]
    assert [d.network.network_at(7.0) for d in a] == [d.network.network_at(7.0) for d in b]
    assert a.tiers() != Fleet.from_recdata(toy, seed=6).tiers()


def test_tier_mix(toy):
    f = Fleet.from_recdata(toy, seed=0, tier_mix={"low": 1.0, "high": 0.0})
    assert set(f.tiers().values()) == {"low"}
    with pytest.raises(InputError, match="unknown profiles"):
        Fleet.from_recdata(toy, tier_mix={"phablet": 1.0})
    with pytest.raises(InputError):
        Fleet.from_recdata(toy, tier_mix={"low": -1.0})


def test_history_at_respects_time(toy):
    d = Fleet.from_recdata(toy, seed=0, hours_per_item=2.0)["u0"]
    assert d.history_at(-1.0) == []
    assert d.history_at(0.0) == d.items[:1]
    assert d.history_at(3.9) == d.items[:2]
    assert d.history_at(1e9) == d.items
    ts = {u: [1000.0 + 3600.0 * i for i in range(len(s))] for u, s in toy.sequences.items()}
    d = Fleet.from_recdata(toy, seed=0, timestamps=ts)["u0"]
    assert d.history_at(1.0) == d.items[:2]


def test_sample_only_online_devices_above_threshold(toy):
    f = Fleet.from_recdata(toy, seed=1)
    rng = np.random.default_rng(0)
    for t in (0.0, 5.0, 30.0):
        got = f.sample(40, t, rng, min_battery=0.5)
        assert 0 < len(got) <= 40 and len({d.user for d in got}) == len(got)
        assert all(d.network.is_online(t) and d.battery.level >= 0.5 for d in got)
        eligible = {d.user for d in f if d.network.is_online(t) and d.battery.level >= 0.5}
        assert {d.user for d in got} <= eligible
    assert len(f.sample(10_000, 31.0, rng, min_battery=0.0)) == sum(d.network.is_online(31.0) for d in f)
    assert f.sample(5, 32.0, rng, min_battery=1.01) == []


def test_movielens_100k_fleet():
    movielens = pytest.importorskip("server.data.movielens")
    try:
        data = movielens.load_movielens("ml-100k")
    except Exception as e:  # data not installed here
        pytest.skip(str(e))
    t = time.perf_counter()
    f = Fleet.from_recdata(data, seed=0)
    assert time.perf_counter() - t < 2.0
    assert len(f) == 943
    assert f.sample(50, 12.0, np.random.default_rng(0))
