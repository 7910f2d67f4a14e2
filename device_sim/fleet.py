"""A fleet of virtual devices: one per user, each with a profile, a battery, a network
and its own history arriving over simulated time.

Time is in hours since the start of the simulation (midnight of day 0).
:class:`~server.data.base.RecData` keeps each user's items in time order but **not
their timestamps**, so by default the k-th item of a user arrives at
``k * hours_per_item`` (the order index is the clock). Pass ``timestamps`` (per user,
seconds, aligned with the sequence - :func:`movielens_timestamps` reads them for
MovieLens) to replay the real times instead, shifted so the earliest event in the
data set is at 0 h.

>>> from server.data.base import Item, RecData
>>> data = RecData("toy", [Item(i, i) for i in "abcd"], {"u1": list("abc"), "u2": list("dcba")})
>>> fleet = Fleet.from_recdata(data, seed=0)
>>> len(fleet), fleet["u2"].history_at(1.5)        # items 0 and 1 have arrived by 1.5 h
(2, ['d', 'c'])
>>> Fleet.from_recdata(data, seed=0).tiers() == fleet.tiers()
True
>>> picked = fleet.sample(5, t=2.0, rng=np.random.default_rng(0), min_battery=0.0)
>>> all(d.network.is_online(2.0) for d in picked)
True
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from edge_gr.errors import DataError, InputError
from server.data.base import RecData

from .battery import Battery
from .network import Network
from .profiles import PhoneProfile, load_profiles

__all__ = ["VirtualDevice", "Fleet", "movielens_timestamps"]


@dataclass
class VirtualDevice:
    """One simulated phone: a user's history, hardware, battery and connectivity."""

    user: str
    profile: PhoneProfile
    battery: Battery
    network: Network
    items: list[str]           # the user's full history, in time order
    arrivals: np.ndarray       # (len(items),) arrival time of each item, hours, non-decreasing

    def history_at(self, t: float) -> list[str]:
        """Items that have arrived on the device by time ``t`` (inclusive)."""
        return self.items[: int(np.searchsorted(self.arrivals, t, side="right"))]

    def eligible(self, t: float, min_battery: float) -> bool:
        """Online at ``t`` with the battery (advanced to ``t``) at or above ``min_battery``."""
        return self.network.is_online(t) and self.battery.advance(t) >= min_battery


class Fleet:
    """Devices by user id, in the data set's user order."""

    def __init__(self, devices: Sequence[VirtualDevice]):
        self.devices = list(devices)
        self._by_user = {d.user: d for d in self.devices}

    def __len__(self) -> int:
        return len(self.devices)

    def __iter__(self) -> Iterator[VirtualDevice]:
        return iter(self.devices)

    def __getitem__(self, user: str) -> VirtualDevice:
        if user not in self._by_user:
            raise InputError(f"no device for user {user!r}", hint="use a user id of the data set the fleet was built from")
        return self._by_user[user]

    def tiers(self) -> dict[str, str]:
        """user -> profile name."""
        return {d.user: d.profile.name for d in self.devices}

    @classmethod
    def from_recdata(cls, data: RecData, profiles: Mapping[str, PhoneProfile] | None = None, seed: int = 0,
                     tier_mix: Mapping[str, float] | None = None, *, hours_per_item: float = 1.0,
                     timestamps: Mapping[str, Sequence[float]] | None = None, **network_kw) -> "Fleet":
        """One device per user of ``data``; the same ``seed`` gives the same fleet.

        ``tier_mix`` maps profile name -> weight (default: equal weights); each user's
        tier is drawn from it. ``network_kw`` goes to :class:`~device_sim.network.Network`
        (``mean_online_h``, ``mean_offline_h``, ``p_wifi``).
        """
        profiles = dict(profiles) if profiles is not None else load_profiles()
        if not profiles:
            raise InputError("no profiles given", hint="pass load_profiles() or leave profiles=None")
        mix = dict(tier_mix) if tier_mix is not None else {name: 1.0 for name in profiles}
        unknown = sorted(set(mix) - set(profiles))
        if unknown:
            raise InputError(f"tier_mix names unknown profiles {unknown}", hint=f"use names from {sorted(profiles)}")
        w = np.array([float(v) for v in mix.values()])
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise InputError(f"tier_mix weights {dict(mix)} must be >= 0 with a positive sum", hint="e.g. {'low': 0.5, 'mid': 0.3, 'high': 0.2}")
        if not hours_per_item > 0:
            raise InputError(f"hours_per_item is {hours_per_item}", hint="pass a positive number of hours")
        users = list(data.sequences)
        names = list(mix)
        tier_idx = np.random.default_rng(seed).choice(len(names), size=len(users), p=w / w.sum())
        t0 = 0.0
        if timestamps is not None:
            missing = [u for u in users if u not in timestamps]
            if missing:
                raise DataError(f"no timestamps for {len(missing)} users, e.g. {missing[:3]}", hint="pass timestamps for every user of the data set")
            t0 = min((min(timestamps[u]) for u in users if len(timestamps[u])), default=0.0)
        devices = []
        for k, (u, tier) in enumerate(zip(users, tier_idx)):
            items = list(data.sequences[u])
            if timestamps is None:
                arr = np.arange(len(items), dtype=np.float64) * hours_per_item
            else:
                arr = (np.asarray(timestamps[u], dtype=np.float64) - t0) / 3600.0
                if arr.shape != (len(items),) or (np.diff(arr) < 0).any():
                    raise DataError(f"timestamps of user {u!r} do not match its sequence (length or order)",
                                    hint="pass one non-decreasing timestamp per item, in sequence order")
            prof = profiles[names[tier]]
            bat = Battery.seeded(prof, np.random.default_rng([seed, k, 0]))
            net = Network(np.random.default_rng([seed, k, 1]), **network_kw)
            devices.append(VirtualDevice(u, prof, bat, net, items, arr))
        return cls(devices)

    def sample(self, n: int, t: float, rng: np.random.Generator, min_battery: float = 0.2) -> list[VirtualDevice]:
        """Up to ``n`` distinct devices, uniformly among those online at ``t`` with the
        battery at or above ``min_battery`` (batteries are advanced to ``t``, so ``t``
        must not go back in time). Fewer than ``n`` come back when fewer are eligible."""
        if n < 0:
            raise InputError(f"n is {n}", hint="ask for a non-negative number of devices")
        eligible = [d for d in self.devices if d.eligible(t, min_battery)]
        if not eligible or n == 0:
            return []
        idx = rng.choice(len(eligible), size=min(n, len(eligible)), replace=False)
        return [eligible[i] for i in idx]


def movielens_timestamps(name: str = "ml-1m", data: RecData | None = None) -> dict[str, list[float]]:
    """Per-user rating timestamps (seconds) of MovieLens ``name``, sorted exactly as
    :func:`server.data.movielens.load_movielens` sorts the items (by time, ties in file
    order), so they align with ``data.sequences``; restricted to ``data``'s users if given."""
    from server.data.movielens import movielens_dir

    path = movielens_dir(name) / f"{name}.inter"
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":")[0] for h in next(rows)]
        cu, ct = header.index("user_id"), header.index("timestamp")
        per_user: dict[str, list[tuple[float, int]]] = {}
        for n, r in enumerate(rows):
            per_user.setdefault(r[cu], []).append((float(r[ct]), n))
    keep = data.sequences if data is not None else per_user
    return {u: [t for t, _ in sorted(per_user[u])] for u in keep if u in per_user}
