"""Battery-aware choice of the model variant (DESIGN 14.5), and the mod that applies it.

The chapter's rule: battery < 20% -> int4, < 50% -> int8, else fp16. On top of it:
charging -> the best variant; thermal ``serious`` / ``critical`` -> one / two levels
down; a variant that is not in use must fit in free memory (the switch loads it fully
before the old one is released); a hysteresis margin so a battery hovering at a
threshold does not flap; an optional minimum dwell time before stepping *up* again
(steps down are never delayed: they save battery or heat now).

:meth:`VariantPolicy.decide` is a pure function of ``(state, previous decision)``;
:meth:`VariantPolicy.choose` is the stateful convenience that remembers its last
decision. Only variants the bundle has are chosen (the wanted one is mapped to the
nearest available one; a tie goes to the better one, so fp16 -> fp32 when fp16 is absent).

>>> p = VariantPolicy(["fp32", "fp16", "int8", "int4"])
>>> [p.choose(DeviceState(battery=b)) for b in (0.9, 0.45, 0.22, 0.18, 0.22, 0.26)]
['fp16', 'int8', 'int8', 'int4', 'int4', 'int8']
>>> p.choose(DeviceState(battery=0.1, charging=True))
'fp32'
>>> p.choose(DeviceState(battery=0.9, thermal="critical"))
'int4'
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from .bundle import PRECISIONS
from .errors import InputError

__all__ = ["DeviceState", "Decision", "VariantPolicy", "VariantSwitcher", "SupportsSearch", "SupportsSwitch",
           "LADDER", "THERMAL_STEPS"]

LADDER: tuple[str, ...] = tuple(reversed(PRECISIONS))  # the bundle's precisions, smallest / cheapest first
THERMAL_STEPS: dict[str, int] = {"nominal": 0, "fair": 0, "serious": 1, "critical": 2}  # iOS ProcessInfo.ThermalState names


@runtime_checkable
class SupportsSearch(Protocol):
    """Anything that answers ``search(query_or_history, k)`` with a ranked list of hits."""

    def search(self, query, k: int = 10) -> list: ...


@runtime_checkable
class SupportsSwitch(SupportsSearch, Protocol):
    """A retriever with several loaded-on-demand variants (``switch`` loads fully, then swaps)."""

    variants: Sequence[str]

    def switch(self, variant: str) -> None: ...


@dataclass(frozen=True)
class DeviceState:
    """One reading of the device. ``t`` (seconds, any monotonic origin) is needed only for dwell times.

    >>> DeviceState(battery=0.5, thermal="serious").thermal
    'serious'
    """

    battery: float                    # state of charge, 0..1
    charging: bool = False
    thermal: str = "nominal"          # nominal | fair | serious | critical
    free_memory_mb: float = math.inf  # memory the app may still use, not counting the variant in use
    t: float | None = None            # time of the reading (s); only VariantPolicy(min_dwell_s>0) needs it

    def __post_init__(self):
        if not (isinstance(self.battery, (int, float)) and 0.0 <= self.battery <= 1.0):
            raise InputError(f"battery must be a fraction in [0, 1], got {self.battery!r}",
                             hint="pass the state of charge as a fraction, e.g. 0.42 for 42%")
        if self.thermal not in THERMAL_STEPS:
            raise InputError(f"unknown thermal state {self.thermal!r}", hint=f"use one of {', '.join(THERMAL_STEPS)}")
        if not self.free_memory_mb >= 0:
            raise InputError(f"free_memory_mb must be >= 0, got {self.free_memory_mb!r}", hint="pass megabytes available to the app")


@dataclass(frozen=True)
class Decision:
    """What the policy chose and why; feed it back as ``previous`` to the next decide()."""

    variant: str                 # the variant to serve
    tier: int                    # battery tier after hysteresis: index into thresholds' variants (0 = lowest battery)
    since: float | None = None   # state.t when ``variant`` was adopted (dwell time)
    reasons: tuple[str, ...] = field(default=(), compare=False)


class VariantPolicy:
    """Maps a :class:`DeviceState` to one of the bundle's variants.

    variants      the bundle's variant names (others are never chosen); ranked by ``order``
    thresholds    ascending ``(battery_below, variant)`` rules; above the last -> ``default``
    default       variant wanted above every threshold (the chapter's fp16)
    margin        hysteresis: a battery tier is left upwards only at threshold + margin
    sizes_mb      per-variant memory footprint; without it memory is not considered
    min_dwell_s   a variant is kept at least this long before stepping *up* (needs state.t)
    order         all known precisions, cheapest first (default :data:`LADDER`)
    precision_of  variant name -> its precision (a bundle's names, e.g. ``"onnxruntime-int8"``);
                  without it a variant's name is its precision. :meth:`from_bundle` fills it
                  from a bundle's manifest. One variant per precision is kept (the first given).

    >>> p = VariantPolicy(["fp32", "int8"])        # no fp16, no int4 in this bundle
    >>> p.choose(DeviceState(0.9)), p.choose(DeviceState(0.1))
    ('fp32', 'int8')
    >>> q = VariantPolicy(["ort-fp32", "ort-int8"], precision_of={"ort-fp32": "fp32", "ort-int8": "int8"})
    >>> q.choose(DeviceState(0.9)), q.choose(DeviceState(0.1))
    ('ort-fp32', 'ort-int8')
    """

    def __init__(self, variants: Iterable[str], *, thresholds: Sequence[tuple[float, str]] = ((0.20, "int4"), (0.50, "int8")),
                 default: str = "fp16", margin: float = 0.05, sizes_mb: Mapping[str, float] | None = None,
                 min_dwell_s: float = 0.0, order: Sequence[str] = LADDER, precision_of: Mapping[str, str] | None = None):
        self.order = tuple(order)
        level = {v: i for i, v in enumerate(self.order)}
        variants = list(variants)
        prec = dict(precision_of or {})
        by_level: dict[int, str] = {}
        for v in variants:
            lv = level.get(prec.get(v, v))
            if lv is not None:
                by_level.setdefault(lv, v)
        self.variants = tuple(by_level[lv] for lv in sorted(by_level))  # cheapest first
        if not self.variants:
            raise InputError(f"none of the bundle's variants {variants} has a known precision",
                             hint=f"build the policy with VariantPolicy.from_bundle(retriever), pass precision_of={{name: precision}}, "
                                  f"name variants among {', '.join(self.order)}, or pass order=[...] cheapest first")
        rank = {**level, **{v: lv for lv, v in by_level.items()}}  # precisions and variant names -> level
        self.thresholds = tuple((float(b), v) for b, v in thresholds)
        for b, v in self.thresholds + ((1.0, default),):
            if v not in rank:
                raise InputError(f"threshold variant {v!r} is not in the order {self.order}", hint="use a known variant name")
        if [b for b, _ in self.thresholds] != sorted(b for b, _ in self.thresholds):
            raise InputError("thresholds must be ascending in battery", hint="e.g. ((0.2, 'int4'), (0.5, 'int8'))")
        self.tiers = tuple(v for _, v in self.thresholds) + (default,)  # tier i -> wanted variant
        self.margin, self.min_dwell_s = float(margin), float(min_dwell_s)
        self.sizes_mb = dict(sizes_mb or {})
        missing = [v for v in self.variants if self.sizes_mb and v not in self.sizes_mb]
        if missing:
            raise InputError(f"sizes_mb lacks {missing}", hint="give a size for every variant of the bundle, or none")
        self._rank = rank
        self._last: Decision | None = None

    @classmethod
    def from_bundle(cls, source, *, backend: str | None = None, with_sizes: bool = False, **kwargs) -> "VariantPolicy":
        """A policy over a real bundle's variants, ranked by the precision its manifest records.

        ``source`` is a loaded :class:`~edge_gr.runtime.Retriever` (its serving variant's backend
        is used, so a switch never changes runtime) or a :class:`~edge_gr.bundle.BundleManifest`
        (``backend`` picks one; default: the first variant's). ``with_sizes`` passes each
        variant's file size as ``sizes_mb`` (the free-memory rule). Other keywords go to the
        constructor.

        >>> r = edge_gr.load("bundle/")                              # doctest: +SKIP
        >>> VariantSwitcher(r, VariantPolicy.from_bundle(r)).update(DeviceState(battery=0.3))   # doctest: +SKIP
        'onnxruntime-int8'
        """
        manifest = getattr(source, "manifest", source)
        variants = list(getattr(manifest, "variants", None) or [])
        if not variants:
            raise InputError("no bundle variants to choose from", hint="pass a loaded Retriever or a BundleManifest")
        if backend is None:
            serving = getattr(source, "variant", None)
            backend = next((v.backend for v in variants if v.name == serving), variants[0].backend)
        chosen = sorted((v for v in variants if v.backend == backend), key=lambda v: v.size)  # smallest first per precision
        if not chosen:
            raise InputError(f"the bundle has no {backend!r} variant", hint=f"use one of {sorted({v.backend for v in variants})}")
        if with_sizes:
            kwargs.setdefault("sizes_mb", {v.name: v.size / 1e6 for v in chosen})
        return cls([v.name for v in chosen], precision_of={v.name: v.precision for v in chosen}, **kwargs)

    # -- pure parts ----------------------------------------------------------
    def battery_tier(self, battery: float, previous_tier: int | None = None) -> int:
        """Tier of ``battery`` (0 = below the lowest threshold); moving up needs ``margin`` more.

        >>> p = VariantPolicy(["int4", "int8", "fp16"])
        >>> p.battery_tier(0.21), p.battery_tier(0.21, previous_tier=0), p.battery_tier(0.26, previous_tier=0)
        (1, 0, 1)
        """
        def tier(b: float) -> int:
            return sum(b >= t for t, _ in self.thresholds)

        raw = tier(battery)
        if previous_tier is None or raw <= previous_tier:
            return raw  # down (or same): at once
        return max(previous_tier, tier(battery - self.margin))

    def nearest(self, wanted: str) -> str:
        """The available variant nearest to ``wanted`` in the order (ties: the better one).

        >>> VariantPolicy(["int8", "fp32"]).nearest("fp16")
        'fp32'
        """
        r = self._rank[wanted]
        return min(self.variants, key=lambda v: (abs(self._rank[v] - r), -self._rank[v]))

    def step_down(self, variant: str, n: int) -> str:
        i = self.variants.index(variant)
        return self.variants[max(0, i - n)]

    def decide(self, state: DeviceState, previous: Decision | None = None) -> Decision:
        """Pure: the decision for ``state`` given the previous one (None at start)."""
        reasons = []
        tier = self.battery_tier(state.battery, previous.tier if previous else None)
        if state.charging:
            v = self.variants[-1]
            reasons.append("charging: best variant")
        else:
            v = self.nearest(self.tiers[tier])
            reasons.append(f"battery {state.battery:.0%}: tier {tier} -> {self.tiers[tier]}" + ("" if v == self.tiers[tier] else f" (nearest available: {v})"))
        steps = THERMAL_STEPS[state.thermal]
        if steps:
            v = self.step_down(v, steps)
            reasons.append(f"thermal {state.thermal}: {steps} level(s) down -> {v}")
        resident = previous.variant if previous else None
        if self.sizes_mb and not self._fits(v, state, resident):
            smaller = [u for u in self.variants[: self.variants.index(v)][::-1] if self._fits(u, state, resident)]
            if smaller:
                v = smaller[0]
                reasons.append(f"free memory {state.free_memory_mb:.0f} MB: largest variant that fits -> {v}")
            elif resident is not None:  # a smaller variant could not even be loaded: keep the one in use
                v = resident
                reasons.append(f"free memory {state.free_memory_mb:.0f} MB: no smaller variant fits, keep {v}")
            else:
                v = self.variants[0]
                reasons.append(f"free memory {state.free_memory_mb:.0f} MB: nothing fits, smallest -> {v}")
        since = state.t
        if previous is not None and v != previous.variant:
            up = self._rank[v] > self._rank[previous.variant]
            if up and self.min_dwell_s > 0:
                if state.t is None or previous.since is None:
                    raise InputError("min_dwell_s needs the time of each reading", hint="pass DeviceState(..., t=time.monotonic())")
                if state.t - previous.since < self.min_dwell_s:
                    reasons.append(f"dwell: keep {previous.variant} until t={previous.since + self.min_dwell_s:g}")
                    v = previous.variant
        if previous is not None and v == previous.variant:
            since = previous.since
        return Decision(v, tier, since, tuple(reasons))

    def _fits(self, v: str, state: DeviceState, resident: str | None) -> bool:
        return v == resident or self.sizes_mb[v] <= state.free_memory_mb

    # -- stateful convenience -----------------------------------------------------
    def choose(self, state: DeviceState) -> str:
        """decide() with the remembered previous decision; remembers the new one."""
        self._last = self.decide(state, self._last)
        return self._last.variant

    @property
    def last(self) -> Decision | None:
        return self._last

    def reset(self, previous: Decision | None = None) -> None:
        """Forget (or set) the remembered decision, e.g. after a failed switch."""
        self._last = previous


class VariantSwitcher:
    """A request-path mod: serves ``search`` from the retriever and, on ``update(state)``,
    switches its variant when the policy says so - without ever failing a request.

    The retriever's ``switch`` loads the new variant fully and then swaps (atomic), so
    searches are never blocked by a switch; the lock only keeps two updates from
    switching at once. A switch that raises is recorded in ``errors``; the old variant
    keeps serving and the switch is tried again after ``retry_after_s`` (by ``state.t``,
    else the injected clock).

    >>> class R:
    ...     variants = ["fp16", "int8", "int4"]
    ...     def __init__(self): self.variant = "fp16"
    ...     def switch(self, v): self.variant = v
    ...     def search(self, q, k=10): return [(self.variant, 0.0)][:k]
    >>> s = VariantSwitcher(R(), VariantPolicy(R.variants))
    >>> s.update(DeviceState(battery=0.3)), s.search("q")
    ('int8', [('int8', 0.0)])
    """

    def __init__(self, retriever: SupportsSwitch, policy: VariantPolicy, *, current: str | None = None,
                 retry_after_s: float = 30.0, on_switch: Sequence[Callable[[str, str], None]] = (),
                 clock: Callable[[], float] = time.monotonic):
        self.retriever, self.policy = retriever, policy
        cur = current or getattr(retriever, "variant", None) or getattr(retriever, "current_variant", None)
        if cur is None:
            raise InputError("cannot tell which variant the retriever serves now", hint="pass current='fp16' (or the loaded one)")
        self.current: str = cur
        self.retry_after_s, self.on_switch, self.clock = retry_after_s, list(on_switch), clock
        self.switches: list[tuple[float, str, str]] = []       # (t, from, to)
        self.errors: list[tuple[float, str, str]] = []         # (t, wanted variant, error)
        self._failed: dict[str, float] = {}                    # variant -> t of its last failed switch
        self._decision: Decision | None = None
        self._lock = threading.Lock()

    def search(self, query, k: int = 10) -> list:
        return self.retriever.search(query, k)

    def update(self, state: DeviceState) -> str:
        """Apply the policy to ``state``; returns the variant serving afterwards."""
        with self._lock:
            now = state.t if state.t is not None else self.clock()
            prev = self._decision if self._decision is None or self._decision.variant == self.current else \
                replace(self._decision, variant=self.current)
            d = self.policy.decide(state, prev)
            self._decision = d
            if d.variant == self.current:
                return self.current
            last_fail = self._failed.get(d.variant)
            if last_fail is not None and now - last_fail < self.retry_after_s:
                return self.current
            old = self.current
            try:
                self.retriever.switch(d.variant)
            except Exception as e:  # never fail a request: keep serving the old variant
                self._failed[d.variant] = now
                self.errors.append((now, d.variant, f"{type(e).__name__}: {e}"))
                return self.current
            self._failed.pop(d.variant, None)
            self.current = d.variant
            self.switches.append((now, old, d.variant))
        for fn in self.on_switch:
            fn(old, d.variant)
        return self.current

    def __getattr__(self, name):  # drop-in: variants, search_many ... come from the retriever
        if name == "retriever":
            raise AttributeError(name)
        return getattr(self.retriever, name)

    def stats(self) -> dict:
        """Telemetry: current variant, number of switches and failed switches, the last error."""
        return {"variant": self.current, "switches": len(self.switches), "failed_switches": len(self.errors),
                "last_error": self.errors[-1][2] if self.errors else None}
