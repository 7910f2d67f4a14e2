"""Battery model: energy of a task, idle drain and nightly charging.

The energy math is pure functions of a :class:`~device_sim.profiles.PhoneProfile`::

    task energy (J) = host CPU s / speed x active CPU W            (compute)
                    + MB up x J/MB up + MB down x J/MB down          (radio transfer)
                    + bursts x tail J                                 (radio tail)
    idle energy (J) = idle W x seconds
    level change    = energy / (mAh x 3.6 x V)

:class:`Battery` holds the state of one device: its level in [0, 1] (never below 0
nor above 1), the simulation clock it was last advanced to (hours since midnight of
day 0) and its seeded charging window (plugged in every night from ``charge_start_h``
for ``charge_hours``). While plugged in, ``charging_w`` reaches the cell and the idle
draw is ignored; otherwise the idle draw runs.

>>> from device_sim.profiles import load_profiles
>>> p = load_profiles()["low"]                    # 5000 mAh x 3.87 V = 69,660 J
>>> round(task_energy_j(p, host_cpu_s=2.0, net="lte", mb_up=0.1, mb_down=1.0), 3)
26.333
>>> b = Battery(p, level=0.5, charge_start_h=23.0, charge_hours=7.0)
>>> round(b.drain(task_energy_j(p, 2.0, "lte", 0.1, 1.0)), 6)    # fraction actually drained
0.000378
>>> b.is_charging(23.5), b.is_charging(12.0)
(True, False)
>>> round(percent_per_hour(p, idle_energy_j(p, 1.0), 1.0), 3)   # standby %/hour
0.362
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_gr.errors import InputError

from .profiles import PhoneProfile

__all__ = [
    "compute_energy_j", "radio_energy_j", "idle_energy_j", "task_energy_j",
    "energy_fraction", "percent_per_hour", "charging_intervals", "Battery",
]

# ASSUMPTION (no published source used): people plug their phone in at night. The
# start hour is drawn per device from N(22.5, 1.5) h and the duration from N(7, 1) h,
# clipped to [1, 10] h; the whole fleet does not charge at once.
CHARGE_START_MEAN_H, CHARGE_START_SD_H = 22.5, 1.5
CHARGE_HOURS_MEAN, CHARGE_HOURS_SD = 7.0, 1.0


def _nonneg(name: str, v: float) -> float:
    if not (v >= 0) or math.isinf(v):
        raise InputError(f"{name} is {v}, must be >= 0 and finite", hint=f"pass a non-negative {name}")
    return float(v)


def compute_energy_j(p: PhoneProfile, host_cpu_s: float) -> float:
    """Energy of ``host_cpu_s`` CPU seconds measured on the host, run on device ``p``."""
    return p.device_seconds(_nonneg("host_cpu_s", host_cpu_s)) * p.active_cpu_w


def radio_energy_j(p: PhoneProfile, net: str, mb_up: float = 0.0, mb_down: float = 0.0, bursts: int = 1) -> float:
    """Transfer energy per MB plus one radio tail per burst (``bursts=0``: no tail)."""
    up, down, tail_j, _ = p.radio(net)
    return _nonneg("mb_up", mb_up) * up + _nonneg("mb_down", mb_down) * down + _nonneg("bursts", bursts) * tail_j


def idle_energy_j(p: PhoneProfile, hours: float) -> float:
    """Standby energy over ``hours``."""
    return p.idle_w * 3600.0 * _nonneg("hours", hours)


def task_energy_j(p: PhoneProfile, host_cpu_s: float, net: str, mb_up: float = 0.0, mb_down: float = 0.0,
                  bursts: int = 1) -> float:
    """Compute + radio energy of one task (e.g. a local training step and its upload)."""
    return compute_energy_j(p, host_cpu_s) + radio_energy_j(p, net, mb_up, mb_down, bursts)


def energy_fraction(p: PhoneProfile, joules: float) -> float:
    """Joules as a fraction of a full battery."""
    return joules / p.capacity_j


def percent_per_hour(p: PhoneProfile, joules: float, hours: float) -> float:
    """Battery percent per hour when ``joules`` are spent every ``hours``."""
    if not hours > 0:
        raise InputError(f"hours is {hours}, must be > 0", hint="pass the length of the period the energy was spent over")
    return 100.0 * energy_fraction(p, joules) / hours


def charging_intervals(t0: float, t1: float, start_h: float, hours: float) -> list[tuple[float, float]]:
    """Parts of ``[t0, t1]`` (hours since midnight of day 0) inside the daily window
    ``[start_h, start_h + hours)``, which may run past midnight.

    >>> charging_intervals(20.0, 32.0, 23.0, 7.0)
    [(23.0, 30.0)]
    >>> charging_intervals(0.0, 2.0, 23.0, 7.0)     # the night before day 0 spills over
    [(0.0, 2.0)]
    """
    out = []
    if hours <= 0 or t1 <= t0:
        return out
    day = math.floor((t0 - start_h - hours) / 24.0)
    while day * 24.0 + start_h < t1:
        a, b = day * 24.0 + start_h, day * 24.0 + start_h + hours
        lo, hi = max(a, t0), min(b, t1)
        if hi > lo:
            out.append((lo, hi))
        day += 1
    return out


@dataclass
class Battery:
    """State of one device's battery. ``t`` is the clock (hours) it was last advanced to."""

    profile: PhoneProfile
    level: float = 1.0                 # fraction of capacity, kept in [0, 1]
    charge_start_h: float = 23.0       # daily plug-in hour (0..24)
    charge_hours: float = 7.0          # length of the nightly charge window
    t: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.level <= 1.0:
            raise InputError(f"battery level {self.level} is outside [0, 1]", hint="pass a fraction, e.g. 0.8 for 80%")

    @classmethod
    def seeded(cls, profile: PhoneProfile, rng: np.random.Generator, level: float | None = None) -> "Battery":
        """A battery with a nightly charge window (and, if ``level`` is None, a start
        level uniform in [0.3, 1.0] - an ASSUMPTION) drawn from ``rng``."""
        start = float(rng.normal(CHARGE_START_MEAN_H, CHARGE_START_SD_H)) % 24.0
        hours = float(np.clip(rng.normal(CHARGE_HOURS_MEAN, CHARGE_HOURS_SD), 1.0, 10.0))
        lvl = float(rng.uniform(0.3, 1.0)) if level is None else level
        return cls(profile, level=lvl, charge_start_h=start, charge_hours=hours)

    def is_charging(self, t: float) -> bool:
        """Is the device plugged in at clock ``t``?"""
        return (t - self.charge_start_h) % 24.0 < self.charge_hours

    def drain(self, joules: float) -> float:
        """Spend ``joules``; returns the fraction actually drained (the level stops at 0)."""
        before = self.level
        self.level = max(0.0, self.level - energy_fraction(self.profile, _nonneg("joules", joules)))
        return before - self.level

    def charge(self, joules: float) -> float:
        """Store ``joules``; returns the fraction actually added (the level stops at 1)."""
        before = self.level
        self.level = min(1.0, self.level + energy_fraction(self.profile, _nonneg("joules", joules)))
        return self.level - before

    def advance(self, t: float) -> float:
        """Run the clock to ``t``: idle drain outside the charge window, charging inside.
        Returns the new level. The clock never runs backwards."""
        if t < self.t:
            raise InputError(f"cannot advance the battery from t={self.t} back to t={t}", hint="advance the simulation clock forwards only")
        cur = self.t
        for a, b in charging_intervals(self.t, t, self.charge_start_h, self.charge_hours):
            self.drain(idle_energy_j(self.profile, a - cur))
            self.charge(self.profile.charging_w * 3600.0 * (b - a))
            cur = b
        self.drain(idle_energy_j(self.profile, t - cur))
        self.t = t
        return self.level
