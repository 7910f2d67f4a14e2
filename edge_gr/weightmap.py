"""Weight-bound variant files: a weights file laid out from the model's state tensors, and its map.

A *weight-bound* variant keeps its graphs and its weights apart (for ONNX: external
data). The weights file is a plain concatenation of tensors, each one a simple function
of one state-dict tensor of the model, at 64-byte aligned offsets (zeros between). A
small JSON map, itself a file of the variant (role ``weight_map``), says where each one
comes from::

    {"format": "edge-gr-weight-map", "format_version": 1, "file": "weights.bin", "size": 98432,
     "entries": [{"tensor": "enc.0.attn.q.weight", "also": [], "transform": "transpose",
                  "dtype": "<f4", "shape": [32, 32], "offset": 0, "length": 4096}, ...]}

``transform`` is ``identity``, ``transpose`` (2-D) or ``rows`` (the first ``shape[0]``
rows); ``also`` names other state tensors that had the very same value at export (the
exporter stored it once). Because the layout is defined here and the transforms are
exact (no arithmetic), the same state always gives the same bytes: the device rebuilds
the file from a new state (:func:`build_weights`) and the result has the sha256 the
cloud wrote in the bundle manifest. The other way, :func:`recover_state` reads the
state tensors back out of a weights file (those stored whole: ``identity`` and
``transpose``), which is what a tensor delta is applied to.

numpy only (no torch, no onnx).

>>> import numpy as np, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "pos": np.ones((5, 2), np.float32)}
>>> wm = layout([("w", [], "transpose"), ("pos", [], "rows", 3)], state, "weights.bin")
>>> [(e["tensor"], e["shape"], e["offset"]) for e in wm["entries"]]
[('w', [3, 2], 0), ('pos', [3, 2], 64)]
>>> info = build_weights(wm, state, d / "weights.bin")
>>> info["size"], sorted(recover_state(wm, d / "weights.bin"))
(88, ['w'])
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import BundleError

__all__ = ["layout", "build_weights", "recover_state", "read_map", "needed_tensors", "recoverable_tensors", "entry_array",
           "FORMAT_NAME", "FORMAT_VERSION", "ALIGN", "ROLE"]

FORMAT_NAME = "edge-gr-weight-map"
FORMAT_VERSION = 1
ALIGN = 64
ROLE = "weight_map"  # the variant file role of the map; the weights file itself has role "weights"
TRANSFORMS = ("identity", "transpose", "rows")


def entry_array(entry: Mapping, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stored form of one entry, computed from ``state`` (C order, little-endian)."""
    name, tr = entry["tensor"], entry["transform"]
    try:
        t = np.asarray(state[name])
    except KeyError:
        raise BundleError(f"the weights need state tensor {name!r}, which is missing",
                          hint="the update does not carry every tensor of the new version; install a full package") from None
    if tr == "transpose":
        if t.ndim != 2:
            raise BundleError(f"tensor {name!r} {t.shape} cannot be transposed for the weights file", hint="re-export the bundle")
        t = t.T
    elif tr == "rows":
        t = t[: entry["shape"][0]] if "shape" in entry else t
    elif tr != "identity":
        raise BundleError(f"unknown weight transform {tr!r} for {name!r}", hint="update edge-gr on the device")
    t = np.ascontiguousarray(t)
    if t.dtype.byteorder == ">":
        t = t.astype(t.dtype.newbyteorder("<"))
    return t


def layout(specs: Sequence[tuple], state: Mapping[str, np.ndarray], file: str) -> dict:
    """The map for ``specs`` (``(tensor, also, transform[, rows])`` each, in file order) over ``state``."""
    entries, off = [], 0
    for spec in specs:
        name, also, tr = spec[0], list(spec[1]), spec[2]
        e = {"tensor": name, "also": also, "transform": tr}
        if tr == "rows":
            e["shape"] = [int(spec[3]), *np.shape(state[name])[1:]]
        a = entry_array(e, state)
        off = -(-off // ALIGN) * ALIGN
        e.update(dtype=a.dtype.str, shape=list(a.shape), offset=off, length=a.nbytes)
        entries.append(e)
        off += a.nbytes
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "file": file, "size": off, "entries": entries}


def read_map(path: str | os.PathLike) -> dict:
    """Parse and check a weight map file."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        assert doc.get("format") == FORMAT_NAME, "not a weight map"
        assert doc.get("format_version") == FORMAT_VERSION, f"format version {doc.get('format_version')}"
        assert isinstance(doc["file"], str) and "/" not in doc["file"] and not doc["file"].startswith(".")
        for e in doc["entries"]:
            assert e["transform"] in TRANSFORMS and int(e["offset"]) >= 0 and int(e["length"]) >= 0
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        raise BundleError(f"{p} is not a readable {FORMAT_NAME} file ({type(e).__name__}: {e})",
                          hint="re-export the bundle, or update edge-gr on the device") from None
    return doc


def build_weights(wm: Mapping, state: Mapping[str, np.ndarray], path: str | os.PathLike, *, fsync: bool = True) -> dict:
    """Write the weights file of map ``wm`` from ``state``; returns ``{"sha256", "size"}``.

    Raises :class:`BundleError` if a tensor is missing or its stored form does not have
    the dtype / shape the map records (the map belongs to another model).
    """
    path = Path(path)
    h = hashlib.sha256()
    pos = 0
    with open(path, "wb") as f:
        for e in wm["entries"]:
            a = entry_array(e, state)
            if a.dtype.str != e["dtype"] or list(a.shape) != list(e["shape"]) or a.nbytes != e["length"]:
                raise BundleError(f"state tensor {e['tensor']!r} gives {a.dtype.str} {list(a.shape)}, the weight map wants "
                                  f"{e['dtype']} {e['shape']}", hint="the update does not match this bundle; install a full package")
            if e["offset"] < pos:
                raise BundleError(f"weight map entries overlap at {e['tensor']!r}", hint="re-export the bundle")
            pad = b"\0" * (e["offset"] - pos)
            data = a.tobytes()
            for chunk in (pad, data):
                f.write(chunk)
                h.update(chunk)
            pos = e["offset"] + len(data)
        if pos != wm["size"]:
            raise BundleError(f"the weight map says {wm['size']} bytes, its entries end at {pos}", hint="re-export the bundle")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return {"sha256": h.hexdigest(), "size": pos}


def recover_state(wm: Mapping, path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state tensors stored whole in the weights file (``identity`` / ``transpose`` entries and their ``also`` names)."""
    path = Path(path)
    size = path.stat().st_size
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for e in wm["entries"]:
            if e["transform"] == "rows":
                continue
            if e["offset"] + e["length"] > size:
                raise BundleError(f"{path} is shorter than its weight map says", hint="copy the bundle again")
            f.seek(e["offset"])
            a = np.frombuffer(f.read(e["length"]), dtype=np.dtype(e["dtype"])).reshape(e["shape"])
            if e["transform"] == "transpose":
                a = a.T
            a = np.ascontiguousarray(a)
            for name in [e["tensor"], *e.get("also", [])]:
                out[name] = a
    return out


def recoverable_tensors(wm: Mapping) -> set[str]:
    """Names :func:`recover_state` gives back."""
    return {n for e in wm["entries"] if e["transform"] != "rows" for n in [e["tensor"], *e.get("also", [])]}


def needed_tensors(wm: Mapping) -> set[str]:
    """Names :func:`build_weights` reads."""
    return {e["tensor"] for e in wm["entries"]}
