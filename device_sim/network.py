"""Network model: seeded online/offline periods, and RTT/bandwidth per network type.

Each device alternates between *online* and *offline* periods - a two-state
continuous-time Markov chain, so period lengths are exponential with means
``mean_online_h`` and ``mean_offline_h`` and the long-run online fraction is
``mean_online_h / (mean_online_h + mean_offline_h)``. Each online period is on WiFi
with probability ``p_wifi``, else on LTE. Periods are drawn lazily from the
device's own generator in fixed-size batches, so what a device does at time ``t``
depends only on its seed, never on the order of the questions asked.

>>> net = Network(seed=7, mean_online_h=3.0, mean_offline_h=1.0)
>>> net.stationary_online
0.75
>>> [net.network_at(t) for t in (0.0, 5.0, 10.0)] == [Network(seed=7).network_at(t) for t in (0.0, 5.0, 10.0)]
True
>>> round(transfer_time(1_000_000, "lte", "up"), 3)        # 1 MB up on LTE, seconds
1.488
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from edge_gr.errors import InputError

__all__ = ["NetworkType", "NETWORKS", "transfer_time", "Network"]


@dataclass(frozen=True)
class NetworkType:
    """Latency and throughput of one kind of link."""

    name: str
    rtt_ms: float          # round-trip time
    up_mbps: float         # uplink throughput, megabits per second
    down_mbps: float       # downlink throughput


NETWORKS: dict[str, NetworkType] = {
    # Huang et al., MobiSys 2012 (4GTest, US LTE users): median RTT 69.5 ms, mean
    # throughput 5.64 Mbps up / 12.74 Mbps down.
    "lte": NetworkType("lte", rtt_ms=69.5, up_mbps=5.64, down_mbps=12.74),
    # ASSUMPTION: home WiFi behind a consumer broadband line: 30 ms RTT, 10 Mbps up,
    # 20 Mbps down. The radio energy per MB in the profiles is derived at these rates.
    "wifi": NetworkType("wifi", rtt_ms=30.0, up_mbps=10.0, down_mbps=20.0),
}

# ASSUMPTIONS (no published source used): reachable 3 h at a stretch, unreachable
# 1 h at a stretch (stationary online fraction 0.75); 70% of online periods on WiFi.
MEAN_ONLINE_H, MEAN_OFFLINE_H, P_WIFI = 3.0, 1.0, 0.7
_BATCH = 32  # periods drawn per extension (fixed, so draws do not depend on queries)


def transfer_time(nbytes: float, net: str, direction: str = "up") -> float:
    """Seconds to move ``nbytes`` over ``net`` ("wifi"/"lte"): one RTT + bytes / throughput."""
    if net not in NETWORKS:
        raise InputError(f"unknown network type {net!r}", hint=f"use one of {sorted(NETWORKS)}")
    if direction not in ("up", "down"):
        raise InputError(f"direction is {direction!r}", hint="use 'up' or 'down'")
    if not nbytes >= 0:
        raise InputError(f"nbytes is {nbytes}, must be >= 0", hint="pass a byte count")
    n = NETWORKS[net]
    mbps = n.up_mbps if direction == "up" else n.down_mbps
    return n.rtt_ms / 1000.0 + nbytes * 8.0 / (mbps * 1e6)


class Network:
    """One device's connectivity over simulated time (hours since the start)."""

    def __init__(self, seed: int | np.random.SeedSequence | np.random.Generator = 0, mean_online_h: float = MEAN_ONLINE_H,
                 mean_offline_h: float = MEAN_OFFLINE_H, p_wifi: float = P_WIFI):
        if not (mean_online_h > 0 and mean_offline_h > 0):
            raise InputError(f"mean online/offline durations are {mean_online_h}/{mean_offline_h} h", hint="pass positive hours")
        if not 0.0 <= p_wifi <= 1.0:
            raise InputError(f"p_wifi is {p_wifi}", hint="pass a probability in [0, 1]")
        self.mean_online_h, self.mean_offline_h, self.p_wifi = float(mean_online_h), float(mean_offline_h), float(p_wifi)
        self._rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._starts: list[float] = [0.0]   # start of each period
        self._state: list[str | None] = []  # "wifi" / "lte" / None (offline) per period
        self._online_next = bool(self._rng.random() < self.stationary_online)  # start in the stationary law
        self._end = 0.0

    @property
    def stationary_online(self) -> float:
        """Long-run fraction of time online."""
        return self.mean_online_h / (self.mean_online_h + self.mean_offline_h)

    def _extend(self, t: float) -> None:
        while self._end <= t:
            # Exponential holding times are memoryless, so the first period drawn
            # from the stationary state is already in the stationary law.
            durs = self._rng.exponential(1.0, _BATCH)
            wifi = self._rng.random(_BATCH) < self.p_wifi
            for d, w in zip(durs, wifi):
                on = self._online_next
                self._end += float(d) * (self.mean_online_h if on else self.mean_offline_h)
                self._state.append(("wifi" if w else "lte") if on else None)
                self._starts.append(self._end)
                self._online_next = not on

    def network_at(self, t: float) -> str | None:
        """``"wifi"``, ``"lte"`` or None (offline) at time ``t`` (hours, >= 0)."""
        if t < 0:
            raise InputError(f"time {t} is negative", hint="simulation time starts at 0 h")
        self._extend(t)
        return self._state[bisect.bisect_right(self._starts, t) - 1]

    def is_online(self, t: float) -> bool:
        return self.network_at(t) is not None

    def online_fraction(self, t0: float, t1: float) -> float:
        """Exact fraction of ``[t0, t1]`` spent online."""
        if not t1 > t0 >= 0:
            raise InputError(f"interval [{t0}, {t1}] is empty or negative", hint="pass 0 <= t0 < t1")
        self._extend(t1)
        s = np.asarray(self._starts)
        on = np.array([x is not None for x in self._state])
        lo, hi = np.clip(s[:-1], t0, t1), np.clip(s[1:], t0, t1)
        return float(((hi - lo) * on).sum() / (t1 - t0))

    def transfer_time(self, nbytes: float, t: float, direction: str = "up") -> float:
        """Seconds to move ``nbytes`` at time ``t`` over whatever link is up then."""
        net = self.network_at(t)
        if net is None:
            raise InputError(f"device is offline at t={t} h", hint="check is_online(t) before transferring")
        return transfer_time(nbytes, net, direction)
