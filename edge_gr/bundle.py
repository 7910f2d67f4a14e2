"""The device bundle: the only thing that crosses from the cloud to the device.

A bundle is a folder (or a single ``.tar`` of that folder) with one versioned
``manifest.json`` and the files it lists, each with its size and sha256::

    bundle/
      manifest.json          BundleManifest (format "edge-gr-bundle", format_version 1)
      ids.json               semantic IDs + trie source (edge_gr.ids format)
      catalogue.jsonl        {"id", "title", "meta"} per item
      index.safetensors      the same IDs, trie and catalogue line offsets as arrays (edge_gr.catalogue; fast load)
      tokenizer.json         retrieval only (HuggingFace tokenizers)
      popularity.json        rec only: fallback ranking for empty / unknown histories
      variants/<name>/...    one model per backend x precision (encoder + decoder step)

Loading checks the format name and version and *every* file's size and sha256 before
anything is built, so a corrupted or partial bundle is refused as a whole
(:class:`~edge_gr.errors.BundleError` naming the file). Writing is atomic: the bundle
is built in a temporary folder beside the target and renamed into place.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with BundleWriter(d / "b", task="rec", model_version="m1", runtime=RuntimeSpec("rec", (4, 4), 8, 16)) as w:
...     _ = w.add_file("popularity", "popularity.json", b'["a"]')
>>> load_manifest(d / "b").files["popularity"].size
5
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from .errors import BundleError

__all__ = ["PRECISIONS", "BundleManifest", "FileEntry", "Variant", "RuntimeSpec", "BundleWriter", "load_manifest", "open_bundle",
           "write_archive", "verify_files", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST"]

FORMAT_NAME = "edge-gr-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# The one precision vocabulary (cloud, exporters, manifest, battery policy), cheapest last:
#   fp32  float32 weights and activations
#   fp16  float16 weights, float32 compute
#   int8  int8 weights (symmetric, per output channel), activations quantized to int8 at run time (dynamic)
#   int4  int4 weights (symmetric, per group of input channels), dynamic int8 activations
# A variant's ``recipe`` says what its backend's quantizer did exactly (tool, scope, what stays float).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
_REBUILD = "re-export the bundle with `edge-gr export --checkpoint CKPT --out DIR`"


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle, relative to its root."""

    path: str    # POSIX path relative to the bundle root
    sha256: str  # hex digest
    size: int    # bytes


@dataclass(frozen=True)
class RuntimeSpec:
    """What the device needs to know about the model to feed and decode it."""

    task: Literal["rec", "retrieval"]
    levels: tuple[int, ...]  # codes per ID level
    max_len: int             # encoder input length (rec: items, left-padded; retrieval: tokens, right-padded)
    d_model: int
    # I/O of every variant: encoder(src (N, max_len) int) -> [cross_mask (N, max_len), k_0, v_0, k_1, v_1, ...];
    # decoder(prefix (N, B, L) int, cross_mask, k_0, v_0, ...) -> logits (N, B, L, sum(levels)).
    io: str = "enc-kv/dec-full-prefix/v1"


@dataclass(frozen=True)
class Variant:
    """One runnable model: a backend, a precision and its files (roles ``encoder``/``decoder`` or ``program``)."""

    name: str          # e.g. "onnxruntime-int8"
    backend: str       # executorch | onnxruntime | litert | torch
    precision: str     # one of PRECISIONS
    files: dict[str, FileEntry]
    static: dict = field(default_factory=dict)  # fixed shapes, e.g. {"batch": 1, "beam": 20}; empty = dynamic
    metrics: dict = field(default_factory=dict)  # e.g. {"overlap@10": 0.98}
    recipe: dict = field(default_factory=dict)   # how the backend quantized it: {"weights", "activations", "tool", ...}
    source: dict = field(default_factory=dict)   # the checkpoint it was exported from: {"name", "sha256", "params", "config"}

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class BundleManifest:
    """The versioned cloud -> device contract (``to_dict``/``from_dict`` round-trip to JSON)."""

    VERSION = FORMAT_VERSION

    model_version: str
    task: Literal["rec", "retrieval"]
    runtime: RuntimeSpec
    files: dict[str, FileEntry]       # roles: ids, catalogue, tokenizer (retrieval), popularity (rec)
    variants: list[Variant]
    id_scheme: dict = field(default_factory=dict)  # how the IDs were built (method, levels, stats)
    meta: dict = field(default_factory=dict)
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise BundleError(f"the bundle has no variant {name!r}", hint=f"pick one of {[v.name for v in self.variants]}")

    def all_files(self) -> list[FileEntry]:
        return list(self.files.values()) + [f for v in self.variants for f in v.files.values()]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runtime"]["levels"] = list(self.runtime.levels)
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict) -> "BundleManifest":
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise BundleError(f"{MANIFEST} is not an {FORMAT_NAME} manifest", hint=_REBUILD)
        if d.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{MANIFEST} has format version {d.get('format_version')}, this edge-gr reads version {FORMAT_VERSION}",
                              hint=f"{_REBUILD} with a matching edge-gr version, or update edge-gr on the device")
        try:
            rt = dict(d["runtime"])
            rt["levels"] = tuple(rt["levels"])
            files = {k: FileEntry(**v) for k, v in d["files"].items()}
            variants = [Variant(name=v["name"], backend=v["backend"], precision=v["precision"],
                                files={k: FileEntry(**f) for k, f in v["files"].items()},
                                static=v.get("static", {}), metrics=v.get("metrics", {}), recipe=v.get("recipe", {}),
                                source=v.get("source", {})) for v in d["variants"]]
            return cls(model_version=d["model_version"], task=d["task"], runtime=RuntimeSpec(**rt), files=files,
                       variants=variants, id_scheme=d.get("id_scheme", {}), meta=d.get("meta", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{MANIFEST} is malformed ({type(e).__name__}: {e})", hint=_REBUILD) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(root: Path, rel: str) -> FileEntry:
    p = root / rel
    return FileEntry(rel, _sha256(p), p.stat().st_size)


class BundleWriter:
    """Build a bundle atomically: files go into a temp folder, ``manifest.json`` last, then one rename.

    Use as a context manager; on an exception nothing is left at ``out`` (an older bundle
    there stays untouched).
    """

    def __init__(self, out: str | os.PathLike, *, task: str, model_version: str, runtime: RuntimeSpec,
                 id_scheme: dict | None = None, meta: dict | None = None):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp"))
        self.task, self.model_version, self.runtime = task, model_version, runtime
        self.id_scheme, self.meta = id_scheme or {}, meta or {}
        self.files: dict[str, FileEntry] = {}
        self.variants: list[Variant] = []

    @property
    def root(self) -> Path:
        """The temporary folder being filled (write variant files under it, then :meth:`add_variant`)."""
        return self.tmp

    def add_file(self, role: str, rel: str, data: bytes | str | os.PathLike) -> FileEntry:
        """Put a file (bytes, or a path to copy; a path already at ``rel`` is kept) at ``rel`` and list it under ``role``."""
        dst = self.tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            dst.write_bytes(data)
        elif Path(data).resolve() != dst.resolve():
            shutil.copyfile(data, dst)
        self.files[role] = e = _entry(self.tmp, rel)
        return e

    def add_variant(self, name: str, backend: str, precision: str, files: dict[str, str], *,
                    static: dict | None = None, metrics: dict | None = None, recipe: dict | None = None,
                    source: dict | None = None) -> Variant:
        """Register a variant whose files (``role -> path relative to root``) are already written."""
        if any(v.name == name for v in self.variants):
            raise BundleError(f"variant {name!r} added twice", hint="give every variant a unique name")
        if precision not in PRECISIONS:
            raise BundleError(f"variant {name!r}: unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
        v = Variant(name, backend, precision, {r: _entry(self.tmp, rel) for r, rel in files.items()}, static or {}, metrics or {},
                    recipe or {}, source or {})
        self.variants.append(v)
        return v

    def manifest(self) -> BundleManifest:
        return BundleManifest(model_version=self.model_version, task=self.task, runtime=self.runtime, files=self.files,
                              variants=self.variants, id_scheme=self.id_scheme, meta=self.meta)

    def commit(self) -> Path:
        m = self.manifest()
        (self.tmp / MANIFEST).write_text(json.dumps(m.to_dict(), indent=1))
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def write_archive(bundle_dir: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Pack a bundle folder into one uncompressed ``.tar`` (written to a temp file, then renamed).

    The folder is verified first, so a corrupted bundle is never packed.
    """
    bundle_dir, archive = Path(bundle_dir), Path(archive)
    m = load_manifest(bundle_dir)
    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=f".{archive.name}", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            tar.add(bundle_dir / MANIFEST, arcname=MANIFEST)
            for f in m.all_files():
                tar.add(bundle_dir / f.path, arcname=f.path)
        os.replace(tmp, archive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return archive


def _read_manifest(root: Path) -> BundleManifest:
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} is not an edge-gr bundle (no {MANIFEST})", hint=_REBUILD)
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is corrupted ({e})", hint=_REBUILD) from None
    return BundleManifest.from_dict(doc)


def _verify(root: Path, m: BundleManifest, variants: Sequence[str] | None = None) -> None:
    """Every file of the manifest, or (``variants`` given) the shared files and those variants' files only."""
    files = m.all_files() if variants is None else list(m.files.values()) + [f for n in variants for f in m.variant(n).files.values()]
    verify_files(root, files)


def verify_files(root: str | os.PathLike, files) -> None:
    """Check each :class:`FileEntry` (inside the bundle, present, size, sha256); :class:`BundleError` names the first bad one."""
    root = Path(root)
    for f in files:
        p = (root / f.path).resolve()
        if root.resolve() not in p.parents:
            raise BundleError(f"{MANIFEST} lists {f.path!r}, which is outside the bundle", hint=_REBUILD)
        if not p.is_file():
            raise BundleError(f"{f.path} is missing from the bundle {root}", hint=f"copy the whole bundle again or {_REBUILD}")
        if p.stat().st_size != f.size:
            raise BundleError(f"{f.path} has {p.stat().st_size} bytes, the manifest says {f.size} (truncated or replaced)",
                              hint=f"copy the whole bundle again or {_REBUILD}")
        if _sha256(p) != f.sha256:
            raise BundleError(f"{f.path} does not match its sha256 in the manifest (corrupted)",
                              hint=f"copy the whole bundle again or {_REBUILD}")


def load_manifest(path: str | os.PathLike, *, verify: bool = True, variants: Sequence[str] | None = None) -> BundleManifest:
    """Read and (by default) fully verify the manifest of a bundle folder (``variants``: verify the shared files
    and only these variants' files, e.g. ``()`` before loading one variant and checking it alone)."""
    root = Path(path)
    m = _read_manifest(root)
    if verify:
        _verify(root, m, variants)
    return m


def open_bundle(path: str | os.PathLike, *, variants: Sequence[str] | None = None
                ) -> tuple[BundleManifest, Path, tempfile.TemporaryDirectory | None]:
    """Verify a bundle folder or ``.tar`` archive (all of it, or the shared files + ``variants``' files);
    return ``(manifest, root, tempdir-or-None)``.

    An archive is unpacked (with tarfile's ``data`` filter: no links, no paths outside)
    into a temporary folder that lives as long as the returned handle.
    """
    path = Path(path)
    if path.is_dir():
        return load_manifest(path, variants=variants), path, None
    if not path.exists():
        raise BundleError(f"no bundle at {path}", hint=_REBUILD)
    if not tarfile.is_tarfile(path):
        raise BundleError(f"{path} is neither a bundle folder nor a bundle .tar archive", hint=_REBUILD)
    td = tempfile.TemporaryDirectory(prefix="edge-gr-bundle-")
    try:
        with tarfile.open(path) as tar:
            tar.extractall(td.name, filter="data")
    except (tarfile.TarError, OSError) as e:
        td.cleanup()
        raise BundleError(f"{path} cannot be unpacked ({e})", hint=f"copy the archive again or {_REBUILD}") from None
    try:
        return load_manifest(td.name, variants=variants), Path(td.name), td
    except BaseException:
        td.cleanup()
        raise
