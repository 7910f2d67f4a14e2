"""Hardware profiles of virtual phones, read from ``device_sim/phones/*.toml``.

A profile is plain data: CPU speed relative to the host that measured the CPU time,
memory, battery, power draws and radio energy. Each TOML file cites the published
measurement (or states the assumption) behind every constant; this module only
loads and checks them.

>>> profiles = load_profiles()
>>> sorted(profiles)
['high', 'low', 'mid', 'tablet']
>>> p = profiles["low"]
>>> p.capacity_mah, round(p.capacity_j)
(5000.0, 69660)
>>> p.device_seconds(1.0)          # 1 host CPU second on a 0.25x-speed phone
4.0
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from edge_gr.errors import InputError

__all__ = ["PhoneProfile", "PROFILE_DIR", "load_profile", "load_profiles", "parse_profile"]

PROFILE_DIR = Path(__file__).resolve().parent / "phones"

# section -> (field, lower bound, bound inclusive?) ; every field is required.
_SCHEMA: dict[str, list[tuple[str, float, bool]]] = {
    "cpu": [("speed", 0.0, False), ("memory_mb", 0.0, False)],
    "battery": [("capacity_mah", 0.0, False), ("voltage_v", 0.0, False)],
    "power": [("active_cpu_w", 0.0, False), ("idle_w", 0.0, True), ("charging_w", 0.0, False)],
    "radio": [
        ("wifi_up_j_per_mb", 0.0, True), ("wifi_down_j_per_mb", 0.0, True),
        ("wifi_tail_j", 0.0, True), ("wifi_tail_s", 0.0, True),
        ("lte_up_j_per_mb", 0.0, True), ("lte_down_j_per_mb", 0.0, True),
        ("lte_tail_j", 0.0, True), ("lte_tail_s", 0.0, True),
    ],
}


@dataclass(frozen=True)
class PhoneProfile:
    """One device tier. Units are in the field names; see the TOML files for sources."""

    name: str                  # tier name, unique across the loaded profiles
    description: str
    speed: float               # CPU speed relative to one host core (0.25 = 4x slower)
    memory_mb: float           # RAM
    capacity_mah: float        # battery capacity
    voltage_v: float           # nominal cell voltage
    active_cpu_w: float        # power while the model computes
    idle_w: float              # standby power (screen off)
    charging_w: float          # power reaching the cell while charging
    wifi_up_j_per_mb: float
    wifi_down_j_per_mb: float
    wifi_tail_j: float         # energy of the radio tail after one burst
    wifi_tail_s: float         # duration of that tail
    lte_up_j_per_mb: float
    lte_down_j_per_mb: float
    lte_tail_j: float
    lte_tail_s: float
    source: str = ""           # file it was read from

    @property
    def capacity_j(self) -> float:
        """Battery energy in joules: mAh / 1000 * 3600 s * V."""
        return self.capacity_mah * 3.6 * self.voltage_v

    def device_seconds(self, host_cpu_s: float) -> float:
        """CPU seconds measured on the host -> seconds on this device."""
        return host_cpu_s / self.speed

    def radio(self, net: str) -> tuple[float, float, float, float]:
        """``(up J/MB, down J/MB, tail J, tail s)`` for network type ``"wifi"`` or ``"lte"``."""
        if net not in ("wifi", "lte"):
            raise InputError(f"unknown network type {net!r}", hint="use 'wifi' or 'lte'")
        return tuple(getattr(self, f"{net}_{k}") for k in ("up_j_per_mb", "down_j_per_mb", "tail_j", "tail_s"))  # type: ignore[return-value]


def parse_profile(doc: dict, source: str = "<dict>") -> PhoneProfile:
    """Check one parsed TOML document and build its :class:`PhoneProfile`.

    Errors name the file and the ``section.field``:

    >>> parse_profile({"name": "x", "cpu": {"speed": 1}}, "x.toml")
    Traceback (most recent call last):
    ...
    edge_gr.errors.InputError: x.toml: missing field 'description'. To fix: add description = ... to x.toml
    """
    values: dict = {"source": source}
    for key in ("name", "description"):
        if key not in doc:
            raise InputError(f"{source}: missing field {key!r}", hint=f"add {key} = ... to {source}")
        if not isinstance(doc[key], str) or not doc[key]:
            raise InputError(f"{source}: field {key!r} must be a non-empty string", hint=f"fix {key} in {source}")
        values[key] = doc[key]
    for section, specs in _SCHEMA.items():
        sec = doc.get(section)
        if not isinstance(sec, dict):
            raise InputError(f"{source}: missing section [{section}]", hint=f"add a [{section}] table to {source}")
        for key, low, inclusive in specs:
            path = f"{section}.{key}"
            if key not in sec:
                raise InputError(f"{source}: missing field {path!r}", hint=f"add {key} = ... under [{section}] in {source}")
            v = sec[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{source}: field {path!r} must be a number, got {type(v).__name__}", hint=f"fix {path} in {source}")
            if not (v >= low if inclusive else v > low) or v != v or v == float("inf"):
                need = ">= 0" if inclusive else "> 0"
                raise InputError(f"{source}: field {path!r} is {v}, must be {need} and finite", hint=f"fix {path} in {source}")
            values[key] = float(v)
        unknown = set(sec) - {k for k, _, _ in specs}
        if unknown:
            raise InputError(f"{source}: unknown field(s) {sorted(unknown)} in [{section}]", hint="remove them or fix their spelling")
    return PhoneProfile(**{f.name: values[f.name] for f in fields(PhoneProfile)})


def load_profile(path: str | os.PathLike) -> PhoneProfile:
    """Read and check one profile TOML file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="pass the path of a profile .toml file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid TOML ({e})", hint="fix the syntax of that file") from None
    return parse_profile(doc, str(path))


def load_profiles(folder: str | os.PathLike | None = None) -> dict[str, PhoneProfile]:
    """All ``*.toml`` profiles in ``folder`` (default: the shipped tiers), by name."""
    folder = Path(folder) if folder is not None else PROFILE_DIR
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise InputError(f"no profile .toml files in {folder}", hint="point to the folder holding the tier files")
    out: dict[str, PhoneProfile] = {}
    for f in files:
        p = load_profile(f)
        if p.name in out:
            raise InputError(f"{f}: profile name {p.name!r} already used by {out[p.name].source}", hint="give each profile a unique name")
        out[p.name] = p
    return out
