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
      variants/<name>/...    one model per backend x precision (encoder + decoder step); optionally encrypted
                             (AES-256-GCM, :mod:`edge_gr.sealed`: the entry's ``sealed`` record, sha256/size of the ciphertext)

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

A malformed manifest is refused naming the field:

>>> doc = json.loads((d / "b" / MANIFEST).read_text())
>>> doc["files"]["popularity"]["size"] = "5"
>>> try:
...     BundleManifest.from_dict(doc)
... except BundleError as e:
...     print(e.message)
manifest.json: files.popularity.size must be an integer, got str '5'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

from .errors import BundleError

__all__ = ["PRECISIONS", "BundleManifest", "FileEntry", "Seal", "Variant", "RuntimeSpec", "BundleWriter", "load_manifest", "open_bundle",
           "write_archive", "verify_files", "FORMAT_NAME", "FORMAT_VERSION", "MANIFEST", "TASKS", "MAX_MANIFEST_BYTES"]

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
class Seal:
    """How an encrypted ("sealed") bundle file was encrypted (:mod:`edge_gr.sealed`); not secret."""

    alg: str     # "AES-256-GCM"
    key_id: str  # names the data key (a KeyProvider looks it up)
    nonce: str   # hex, 12 bytes, fresh per file


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle, relative to its root (sealed: ``sha256``/``size`` are the ciphertext's, checked before decrypting)."""

    path: str    # POSIX path relative to the bundle root
    sha256: str  # hex digest
    size: int    # bytes
    sealed: Seal | None = None  # None: a clear file (the manifest omits the field)


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
        for files in [d["files"], *(v["files"] for v in d["variants"])]:  # clear files: no "sealed" field (older readers)
            for f in files.values():
                if f.get("sealed") is None:
                    f.pop("sealed", None)
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict) -> "BundleManifest":
        """Parse a manifest document, checking every field's type and value.

        Anything wrong is a :class:`BundleError` naming the field (``files.catalogue.size``,
        ``variants[0].precision``, ...), never a ``KeyError`` or ``TypeError``.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise BundleError(f"{MANIFEST} is not an {FORMAT_NAME} manifest", hint=_REBUILD)
        fv = d.get("format_version")
        if type(fv) is not int or fv != FORMAT_VERSION:  # `true == 1` in JSON-land: a bool is not a version
            raise BundleError(f"{MANIFEST} has format version {_show(fv)}, this edge-gr reads version {FORMAT_VERSION}",
                              hint=f"{_REBUILD} with a matching edge-gr version, or update edge-gr on the device")
        task = _field(d, "task", str, "")
        if task not in TASKS:
            raise _bad("task", f"is {_show(task)}; this edge-gr serves {' and '.join(TASKS)}")
        rt = _field(d, "runtime", dict, "")
        _known(rt, {"task", "levels", "max_len", "d_model", "io"}, "runtime")
        rt_task = _field(rt, "task", str, "runtime.")
        if rt_task != task:
            raise _bad("runtime.task", f"is {_show(rt_task)} but task is {task!r} (the bundle contradicts itself)")
        levels = _field(rt, "levels", list, "runtime.")
        if not levels:
            raise _bad("runtime.levels", "is empty")
        runtime = RuntimeSpec(task=task, levels=tuple(_pos_int(x, f"runtime.levels[{i}]") for i, x in enumerate(levels)),
                              max_len=_pos_int(_field(rt, "max_len", int, "runtime."), "runtime.max_len"),
                              d_model=_pos_int(_field(rt, "d_model", int, "runtime."), "runtime.d_model"),
                              **({"io": _field(rt, "io", str, "runtime.")} if "io" in rt else {}))
        files = _files(_field(d, "files", dict, ""), "files")
        variants: list[Variant] = []
        for n, v in enumerate(_field(d, "variants", list, "")):
            where = f"variants[{n}]"
            if not isinstance(v, dict):
                raise _bad(where, f"must be an object, got {type(v).__name__}")
            name = _field(v, "name", str, f"{where}.")
            if any(u.name == name for u in variants):
                raise _bad(f"{where}.name", f"{name!r} is used by two variants")
            precision = _field(v, "precision", str, f"{where}.")
            if precision not in PRECISIONS:
                raise _bad(f"{where}.precision", f"is {_show(precision)}, not one of {', '.join(PRECISIONS)}")
            static = _free(v, "static", f"{where}.")
            for key in ("batch", "beam", "max_batch", "max_beam", "max_len"):
                if static.get(key) is not None:
                    _pos_int(static[key], f"{where}.static.{key}")
            source = _free(v, "source", f"{where}.")
            cfg_task = source.get("config", {}).get("task") if isinstance(source.get("config"), dict) else None
            if cfg_task is not None and cfg_task != task:
                raise _bad(f"{where}.source.config.task", f"is {_show(cfg_task)} but task is {task!r} (the bundle contradicts itself)")
            variants.append(Variant(name=name, backend=_field(v, "backend", str, f"{where}."), precision=precision,
                                    files=_files(_field(v, "files", dict, f"{where}."), f"{where}.files"), static=static,
                                    metrics=_free(v, "metrics", f"{where}."), recipe=_free(v, "recipe", f"{where}."), source=source))
        return cls(model_version=_field(d, "model_version", str, ""), task=task, runtime=runtime, files=files, variants=variants,
                   id_scheme=_free(d, "id_scheme", ""), meta=_free(d, "meta", ""))

    def check_runnable(self) -> None:
        """The roles the device runtime reads must be listed: ``catalogue``, ``ids`` (or the compact ``index``),
        ``tokenizer`` for retrieval, and at least one variant; else a :class:`BundleError` naming the role."""
        need = ["catalogue", "ids" if "index" not in self.files else "index"] + (["tokenizer"] if self.task == "retrieval" else [])
        missing = [r for r in need if r not in self.files]
        if missing:
            listed = ", ".join(self.files) or "none"
            raise BundleError(f"{MANIFEST}: a {self.task} bundle needs files.{missing[0]}, which it does not list (it lists {listed})",
                              hint=f"{_REBUILD}; a bundle whose task was edited does not match its files")
        if not self.variants:
            raise BundleError(f"{MANIFEST} lists no variants (no model to run)", hint=_REBUILD)


TASKS = ("rec", "retrieval")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few KB; anything this large is not one
_MAX_DEPTH = 32                # free-form objects (meta, metrics, ...) nest at most this deep
_MISSING = object()


def _show(v) -> str:
    """A short picture of a manifest value for an error message."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        return f"a {v.bit_length()}-bit integer"
    try:
        s = repr(v)
    except RecursionError:  # a value nested too deeply to print
        return f"a deeply nested {type(v).__name__}"
    return s if len(s) <= 40 else s[:37] + "..."


def _bad(field: str, why: str) -> BundleError:
    return BundleError(f"{MANIFEST}: {field} {why}", hint=_REBUILD)


_TYPE_NAMES = {str: "a string", int: "an integer", dict: "an object", list: "a list"}


def _field(d: dict, key: str, typ: type, where: str, default=_MISSING):
    """``d[key]``, which must be of ``typ`` (``bool`` is not an integer)."""
    if key not in d:
        if default is not _MISSING:
            return default
        # the Kotlin core words it the same way (its vectors compare the messages' starts)
        raise BundleError(f"{MANIFEST} is malformed (missing field '{where}{key}')", hint=_REBUILD)
    v = d[key]
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise _bad(f"{where}{key}", f"must be {_TYPE_NAMES.get(typ, typ.__name__)}, got {type(v).__name__} {_show(v)}")
    return v


def _pos_int(v, field: str, low: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(field, f"must be an integer, got {type(v).__name__} {_show(v)}")
    if v < low:
        raise _bad(field, f"must be at least {low}, got {_show(v)}")
    return v


def _known(d: dict, keys: set[str], where: str) -> None:
    extra = sorted(str(k) for k in d if k not in keys)
    if extra:
        raise _bad(where, f"has unknown fields {extra[:5]}")


def _depth_ok(v) -> bool:
    """Whether ``v`` nests at most ``_MAX_DEPTH`` levels (iterative: a deep value cannot blow the stack here)."""
    stack = [(v, 0)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, (dict, list)):
            if depth >= _MAX_DEPTH:
                return False
            stack.extend((y, depth + 1) for y in (x.values() if isinstance(x, dict) else x))
    return True


def _free(d: dict, key: str, where: str) -> dict:
    """A free-form object field (``meta``, ``metrics``, ...): optional, an object, not nested absurdly deep."""
    v = _field(d, key, dict, where, default={})
    if not _depth_ok(v):
        raise _bad(f"{where}{key}", f"nests deeper than {_MAX_DEPTH} levels")
    return v


def _files(d: dict, where: str) -> dict[str, FileEntry]:
    out = {}
    for role, f in d.items():
        at = f"{where}.{role}"
        if not isinstance(f, dict):
            raise _bad(at, f"must be an object with path, sha256 and size, got {type(f).__name__}")
        _known(f, {"path", "sha256", "size", "sealed"}, at)
        path = _field(f, "path", str, f"{at}.")
        if not path or "\0" in path:
            raise _bad(f"{at}.path", f"is not a file path ({_show(path)})")
        seal = None
        if "sealed" in f:
            sd = _field(f, "sealed", dict, f"{at}.")
            _known(sd, {"alg", "key_id", "nonce"}, f"{at}.sealed")
            seal = Seal(alg=_field(sd, "alg", str, f"{at}.sealed."), key_id=_field(sd, "key_id", str, f"{at}.sealed."),
                        nonce=_field(sd, "nonce", str, f"{at}.sealed."))
        out[role] = FileEntry(path=path, sha256=_field(f, "sha256", str, f"{at}."),
                              size=_pos_int(_field(f, "size", int, f"{at}."), f"{at}.size", low=0), sealed=seal)
    return out


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
                    source: dict | None = None, seal=None) -> Variant:
        """Register a variant whose files (``role -> path relative to root``) are already written.

        ``seal`` (an :class:`edge_gr.sealed.DataKey`): encrypt every file of the variant in place first
        (:mod:`edge_gr.sealed`). A sealed variant drops its ``weight_map`` role and file: a weights file
        the device holds encrypted cannot be rebuilt from tensor deltas, so updates ship it whole."""
        if any(v.name == name for v in self.variants):
            raise BundleError(f"variant {name!r} added twice", hint="give every variant a unique name")
        if precision not in PRECISIONS:
            raise BundleError(f"variant {name!r}: unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
        if seal is None:
            entries = {r: _entry(self.tmp, rel) for r, rel in files.items()}
        else:
            from .sealed import seal_file
            from .weightmap import ROLE as WEIGHT_MAP

            files = dict(files)
            wm = files.pop(WEIGHT_MAP, None)
            if wm is not None and wm not in files.values():
                (self.tmp / wm).unlink(missing_ok=True)
            infos = {rel: Seal(**seal_file(self.tmp, rel, seal)) for rel in dict.fromkeys(files.values())}  # once per file
            entries = {r: replace(_entry(self.tmp, rel), sealed=infos[rel]) for r, rel in files.items()}
        v = Variant(name, backend, precision, entries, static or {}, metrics or {}, recipe or {}, source or {})
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
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath} has {size:,} bytes, too many for a manifest (corrupted?)", hint=_REBUILD)
        doc = json.loads(mpath.read_bytes().decode("utf-8"))
    except OSError as e:
        raise BundleError(f"{mpath} cannot be read ({e.strerror or e})", hint="check the bundle folder's permissions") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an integer of 5,000 digits; deep nesting
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise BundleError(f"{mpath} is corrupted ({why})", hint=_REBUILD) from None
    return BundleManifest.from_dict(doc)


def _verify(root: Path, m: BundleManifest, variants: Sequence[str] | None = None) -> None:
    """Every file of the manifest, or (``variants`` given) the shared files and those variants' files only."""
    files = m.all_files() if variants is None else list(m.files.values()) + [f for n in variants for f in m.variant(n).files.values()]
    verify_files(root, files)


def verify_files(root: str | os.PathLike, files) -> None:
    """Check each :class:`FileEntry` (inside the bundle, present, size, sha256); :class:`BundleError` names the first bad one."""
    root = Path(root)
    for f in files:
        try:
            _verify_one(root, f)
        except OSError as e:  # a path the file system refuses (too long, unreadable, ...)
            raise BundleError(f"{f.path!r} of the bundle {root} cannot be read ({e.strerror or e})",
                              hint=f"copy the whole bundle again or {_REBUILD}") from None


def _verify_one(root: Path, f: FileEntry) -> None:
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
