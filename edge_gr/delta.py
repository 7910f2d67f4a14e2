"""Model versions and deltas: the format shared by the cloud registry and the device updater.

A *version* is a folder with one ``manifest.json`` (:class:`VersionManifest`) and the
files it lists (size + sha256 each):

* ``kind="full"``: ``weights.safetensors`` holds every tensor of the model.
* ``kind="delta"``: ``delta.safetensors`` holds only what changed against ``parent``,
  one op per tensor name (``ops``):

  ==============  ======================================  =================================
  op              stored under                            result
  ==============  ======================================  =================================
  ``replace``     ``name``                                the stored tensor
  ``lora``        ``name::lora_A`` (r, in), ``::lora_B``  ``W + scale * B @ A`` (W (out, in))
  ``append_rows`` ``name::rows`` (k, ...)                 ``concat([W, rows], 0)`` (new items)
  ``remove``      nothing                                 the tensor is dropped
  ==============  ======================================  =================================

Besides tensors a version carries *aux* files (config, semantic IDs, catalogue): the
manifest names every aux file of the resulting model with its sha256 (``aux``), and a
delta stores only those that changed (the rest are found in its ancestors).

Every version records the sha256 of every tensor of the model it describes
(``tensors``), so a model rebuilt from a base and a chain of deltas is checked tensor by
tensor. The LoRA merge is defined here, in float64 with a fixed summation order, so the
cloud and the device get bit-identical weights on any IEEE-754 machine.

This module needs numpy and safetensors only (no torch).

>>> W = np.zeros((2, 3), dtype=np.float32)
>>> A, B = np.ones((1, 3), np.float32), np.array([[1.0], [2.0]], np.float32)
>>> merge_lora(W, A, B, scale=0.5).tolist()
[[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]
>>> base = {"w": W, "emb": np.zeros((2, 2), np.float32)}
>>> new = {"w": merge_lora(W, A, B, 0.5), "emb": np.ones((3, 2), np.float32)}
>>> tensors, ops = make_delta(base, new, lora={"w": (A, B, 0.5)})
>>> sorted(ops.items()), sorted(tensors)
([('emb', {'op': 'replace'}), ('w', {'op': 'lora', 'scale': 0.5})], ['emb', 'w::lora_A', 'w::lora_B'])
>>> out = apply_delta(base, tensors, ops)
>>> all(tensor_sha256(out[k]) == tensor_sha256(new[k]) for k in new)
True
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import numpy as np

from .errors import BundleError

__all__ = ["list_versions", "write_text_atomic", "VersionManifest", "FileInfo", "TensorInfo", "tensor_sha256", "tensor_table", "merge_lora", "make_delta", "apply_delta",
           "verify_tensors", "file_sha256", "write_json_atomic", "read_manifest", "verify_files", "read_tensors", "write_tensors",
           "parse_version", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "WEIGHTS", "DELTA", "SEP"]

FORMAT_NAME = "edge-gr-model-version"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
DELTA = "delta.safetensors"
SEP = "::"
_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)$")


def list_versions(root) -> list[str]:
    """Names of the version folders (``v<major>.<minor>``) directly under ``root``, oldest first."""
    from pathlib import Path

    out = []
    for p in Path(root).iterdir():
        if p.is_dir() and not p.name.startswith("."):
            try:
                parse_version(p.name)
            except BundleError:
                continue
            out.append(p.name)
    return sorted(out, key=parse_version)


def parse_version(v: str) -> tuple[int, int]:
    """``"v1.12"`` -> ``(1, 12)``; anything else raises :class:`BundleError`.

    >>> parse_version("v1.12")
    (1, 12)
    """
    m = _VERSION_RE.match(v or "")
    if not m:
        raise BundleError(f"bad version name {v!r}", hint="use vMAJOR.MINOR, e.g. v1.0 or v1.1")
    return int(m.group(1)), int(m.group(2))


# -- hashing --------------------------------------------------------------------------
def tensor_sha256(t: np.ndarray) -> str:
    """sha256 of a tensor's dtype, shape and little-endian C-order bytes.

    >>> tensor_sha256(np.zeros(2, np.float32)) == tensor_sha256(np.zeros(2, np.float64))
    False
    """
    a = np.ascontiguousarray(t)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    h = hashlib.sha256(f"{a.dtype.str}|{list(a.shape)}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class TensorInfo:
    dtype: str          # numpy dtype string, e.g. "<f4"
    shape: tuple[int, ...]
    sha256: str


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    size: int           # bytes


def tensor_table(state: Mapping[str, np.ndarray]) -> dict[str, TensorInfo]:
    """name -> :class:`TensorInfo` for every tensor of ``state``."""
    return {k: TensorInfo(np.asarray(v).dtype.str, tuple(np.shape(v)), tensor_sha256(v)) for k, v in sorted(state.items())}


# -- the math (pure) ------------------------------------------------------------------
def merge_lora(W: np.ndarray, A: np.ndarray, B: np.ndarray, scale: float) -> np.ndarray:
    """``W + scale * B @ A`` computed reproducibly: float64, one rank-1 term at a time, cast back.

    W (out, in), A (r, in), B (out, r). Products of float32 values are exact in float64
    and every step is an elementwise IEEE operation, so the result is the same bits on
    every machine (a BLAS matmul may sum in any order).
    """
    W, A, B = np.asarray(W), np.asarray(A), np.asarray(B)
    if A.ndim != 2 or B.ndim != 2 or W.shape != (B.shape[0], A.shape[1]) or A.shape[0] != B.shape[1]:
        raise BundleError(f"LoRA factors B {B.shape} @ A {A.shape} do not fit the weight {W.shape}",
                          hint="publish the delta again from the adapter it was trained with")
    acc = np.zeros(W.shape, dtype=np.float64)
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    for k in range(A.shape[0]):
        acc += np.multiply.outer(B64[:, k], A64[k])
    return (W.astype(np.float64) + float(scale) * acc).astype(W.dtype)


def make_delta(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], *,
               lora: Mapping[str, tuple[np.ndarray, np.ndarray, float]] | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The smallest delta (tensors to store, ops) that turns ``old`` into ``new``.

    Unchanged tensors are skipped; a tensor that only gained rows at the end becomes
    ``append_rows``; names in ``lora`` (``name -> (A, B, scale)``) become ``lora`` ops and
    their result is *defined* by :func:`merge_lora` (``new[name]`` is ignored for them,
    so pass the unmerged base there or anything: what the device rebuilds is what counts).
    """
    lora = dict(lora or {})
    tensors: dict[str, np.ndarray] = {}
    ops: dict[str, dict] = {}
    for name in sorted(set(new) | set(lora)):
        if name in lora:
            if name not in old:
                raise BundleError(f"LoRA target {name!r} is not a tensor of the parent model", hint="target an existing Linear weight")
            A, B, scale = lora[name]
            merge_lora(old[name], A, B, scale)  # shape check
            tensors[name + SEP + "lora_A"] = np.ascontiguousarray(A)
            tensors[name + SEP + "lora_B"] = np.ascontiguousarray(B)
            ops[name] = {"op": "lora", "scale": float(scale)}
            continue
        n = np.asarray(new[name])
        if name in old:
            o = np.asarray(old[name])
            if o.dtype == n.dtype and o.shape == n.shape and np.array_equal(o, n):
                continue
            if (o.dtype == n.dtype and o.ndim == n.ndim >= 1 and n.shape[0] > o.shape[0] and o.shape[1:] == n.shape[1:]
                    and np.array_equal(n[: o.shape[0]], o)):
                tensors[name + SEP + "rows"] = np.ascontiguousarray(n[o.shape[0]:])
                ops[name] = {"op": "append_rows"}
                continue
        tensors[name] = np.ascontiguousarray(n)
        ops[name] = {"op": "replace"}
    for name in sorted(set(old) - set(new) - set(lora)):
        ops[name] = {"op": "remove"}
    return tensors, ops


def apply_delta(state: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray], ops: Mapping[str, dict]) -> dict[str, np.ndarray]:
    """A new state: ``state`` with every op applied (``state`` itself is not modified)."""
    out = dict(state)
    for name, spec in ops.items():
        op = spec.get("op")
        try:
            if op == "replace":
                out[name] = tensors[name]
            elif op == "lora":
                out[name] = merge_lora(state[name], tensors[name + SEP + "lora_A"], tensors[name + SEP + "lora_B"], spec["scale"])
            elif op == "append_rows":
                rows = tensors[name + SEP + "rows"]
                base = state[name]
                if rows.dtype != base.dtype or rows.shape[1:] != base.shape[1:]:
                    raise BundleError(f"rows appended to {name!r} have {rows.dtype} {rows.shape}, the tensor {base.dtype} {base.shape}",
                                      hint="publish the delta again against this parent")
                out[name] = np.concatenate([base, rows], 0)
            elif op == "remove":
                out.pop(name, None)
            else:
                raise BundleError(f"unknown delta op {op!r} for {name!r}", hint="update edge-gr, or publish a full version")
        except KeyError as e:
            raise BundleError(f"the delta's op {op!r} on {name!r} needs {e.args[0]!r}, which is missing",
                              hint="the delta does not belong to this parent; fetch the matching one or a full version") from None
    return out


def verify_tensors(state: Mapping[str, np.ndarray], expected: Mapping[str, TensorInfo], where: str) -> None:
    """Raise :class:`BundleError` naming the first tensor whose name set, shape, dtype or sha256 differs."""
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise BundleError(f"{where}: tensors {'missing ' + str(missing[:3]) if missing else ''}{' unexpected ' + str(extra[:3]) if extra else ''}",
                          hint="the chain of versions is inconsistent; rebuild from a full version")
    for name, info in expected.items():
        got = tensor_sha256(state[name])
        if got != info.sha256:
            raise BundleError(f"{where}: tensor {name!r} ({np.asarray(state[name]).dtype} {np.shape(state[name])}) does not match its "
                              f"sha256 in the manifest", hint="the base or a delta is corrupted; fetch them again")


# -- the manifest ---------------------------------------------------------------------
@dataclass(frozen=True)
class VersionManifest:
    """One version of a model (full weights or a delta), versioned JSON (``to_dict``/``from_dict``)."""

    VERSION = FORMAT_VERSION

    version: str                              # "v1.1"
    kind: Literal["full", "delta"]
    parent: str | None                        # delta: the version it applies to; full: None
    tensors: dict[str, TensorInfo]            # every tensor of the resulting model
    ops: dict[str, dict] = field(default_factory=dict)      # delta: tensor name -> {"op": ..., ...}
    files: dict[str, FileInfo] = field(default_factory=dict)  # files stored in this version's folder
    aux: dict[str, str] = field(default_factory=dict)         # aux file name -> sha256, for the resulting model
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str = ""
    note: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        for t in d["tensors"].values():
            t["shape"] = list(t["shape"])
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = MANIFEST) -> "VersionManifest":
        hint = "fetch this version again (or publish it again in the registry)"
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise BundleError(f"{where} is not an {FORMAT_NAME} manifest", hint=hint)
        if d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{where} has format version {d.get('format_version')}, this edge-gr reads {FORMAT_VERSION}",
                              hint="update edge-gr, or publish the version with this edge-gr")
        try:
            tensors = {k: TensorInfo(v["dtype"], tuple(v["shape"]), v["sha256"]) for k, v in d["tensors"].items()}
            files = {k: FileInfo(v["sha256"], int(v["size"])) for k, v in d.get("files", {}).items()}
            m = cls(version=d["version"], kind=d["kind"], parent=d.get("parent"), tensors=tensors, ops=dict(d.get("ops", {})),
                    files=files, aux=dict(d.get("aux", {})), config=d.get("config", {}), metrics=d.get("metrics", {}),
                    created=d.get("created", ""), note=d.get("note", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{where} is malformed ({type(e).__name__}: {e})", hint=hint) from None
        parse_version(m.version)
        if m.kind not in ("full", "delta") or (m.kind == "delta") != (m.parent is not None):
            raise BundleError(f"{where}: kind {m.kind!r} with parent {m.parent!r}", hint=hint)
        return m

    @property
    def size(self) -> int:
        """Bytes of the files stored in this version's folder (what a device downloads for it)."""
        return sum(f.size for f in self.files.values())

    @staticmethod
    def now() -> str:
        return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- files ------------------------------------------------------------------------------
def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` to a temp file beside ``path``, fsync, then ``os.replace`` (all or nothing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, doc, *, fsync: bool = True) -> Path:
    """:func:`write_text_atomic` of ``doc`` as JSON."""
    return write_text_atomic(path, json.dumps(doc, indent=1), fsync=fsync)


def read_manifest(folder: str | os.PathLike) -> VersionManifest:
    """Parse ``folder/manifest.json`` (no file checks; see :func:`verify_files`)."""
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise BundleError(f"{folder} has no {MANIFEST}", hint="fetch this version again (or publish it again in the registry)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{p} is corrupted ({e})", hint="fetch this version again (or restore it from a backup)") from None
    return VersionManifest.from_dict(doc, str(p))


def verify_files(folder: str | os.PathLike, m: VersionManifest) -> None:
    """Check every file the manifest lists: present, right size, right sha256."""
    folder = Path(folder)
    for name, info in m.files.items():
        p = folder / name
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{folder}/{MANIFEST} lists {name!r}, which is not a plain file name", hint="publish the version again")
        if not p.is_file():
            raise BundleError(f"{p} is missing (version {m.version})", hint="fetch this version again (or restore it from a backup)")
        if p.stat().st_size != info.size:
            raise BundleError(f"{p} has {p.stat().st_size} bytes, the manifest says {info.size} (truncated or replaced)",
                              hint="fetch this version again (or restore it from a backup)")
        if file_sha256(p) != info.sha256:
            raise BundleError(f"{p} does not match its sha256 in the manifest (corrupted)",
                              hint="fetch this version again (or restore it from a backup)")


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a safetensors file as numpy arrays (errors become :class:`BundleError`)."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own types for truncated / garbled files
        raise BundleError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e})",
                          hint="fetch this version again (or restore it from a backup)") from None


def write_tensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, fsync: bool = True) -> FileInfo:
    """Save tensors as safetensors and fsync; returns the file's sha256 and size."""
    from safetensors.numpy import save_file

    path = Path(path)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return FileInfo(file_sha256(path), path.stat().st_size)
