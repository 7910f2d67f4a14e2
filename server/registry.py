"""The model registry: full versions, deltas, an atomic ``current`` pointer, rollback, list / diff / gc.

Layout (every version folder is the format of :mod:`edge_gr.delta`)::

    registry/
      current              "v1.1\\n" - replaced atomically (temp file + fsync + os.replace)
      history.jsonl        one line per pointer move {"time", "from", "to", "reason"}
      v1.0/                kind "full":  manifest.json + weights.safetensors + aux files
      v1.1/                kind "delta": manifest.json + delta.safetensors (changed tensors only:
                           replaced, LoRA factors, appended rows) + the aux files that changed
      v2.0/                a later full version (e.g. a full retrain)
      bundles/v1.1/<variants>/  the device bundle exported from v1.1 (Registry.bundle; a cache, re-exported if lost)

Devices get bundles, never these folders: :meth:`Registry.bundle_package` writes what a
device holding the bundle of one version downloads to get the bundle of another (the
target manifest, a small tensor delta, and only the files it cannot rebuild from tensors).

A version is written into a hidden temp folder (``.tmp-<version>-*``, under the registry's
lock) and renamed into place, so a crash never leaves half a version; nothing is ever
modified after that. The temp folder of a publish that died is deleted by the next
writer that takes the lock (only one writer holds it, so it cannot belong to a live one).
:meth:`Registry.materialize` and :meth:`Registry.bundle_package` write their ``out``
folder with :func:`edge_gr.fsutil.output_folder`: an existing ``out`` is replaced only
if it is their own previous output (or ``force=True``), never a folder of the user's.

Reading a version checks every file's size and sha256, and rebuilding a model from its full base and the chain
of deltas checks every tensor's sha256 after every step. A corrupted version raises
:class:`RegistryError` naming the file; nothing is deleted or moved because of it (the
pointer stays where it was, ``gc`` refuses to run on an unreadable registry).

>>> import tempfile, numpy as np
>>> reg = Registry(tempfile.mkdtemp())
>>> base = {"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)}
>>> reg.publish(base, full=True, metrics={"ndcg@10": 0.1}, activate=True).version
'v1.0'
>>> A, B = np.ones((1, 4), np.float32), np.ones((4, 1), np.float32)
>>> m = reg.publish(base, parent="v1.0", lora={"w": (A, B, 2.0)})
>>> m.version, m.kind, sorted(m.ops)
('v1.1', 'delta', ['w'])
>>> reg.rebuild("v1.1")[0]["w"][0, 0]
np.float32(2.0)
>>> reg.set_current("v1.1"); reg.rollback()
'v1.0'
>>> [(e["version"], e["kind"], e["current"]) for e in reg.list()]
[('v1.0', 'full', True), ('v1.1', 'delta', False)]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterator, Mapping, Sequence

import numpy as np

from edge_gr.bundle import MANIFEST as BUNDLE_MANIFEST
from edge_gr.bundle import load_manifest
from edge_gr.delta import (DELTA, MANIFEST, SEP, WEIGHTS, FileInfo, VersionManifest, apply_delta, file_sha256, list_versions, make_delta,
                           parse_version, read_manifest, read_tensors, tensor_table, verify_files, verify_tensors, write_json_atomic,
                           write_tensors, write_text_atomic)
from edge_gr.errors import BundleError
from edge_gr.fsutil import check_output, file_lock, output_folder, owned_tempdir

__all__ = ["Registry", "RegistryError", "CHECKPOINT_WEIGHTS", "DEFAULT_BUNDLE_VARIANTS", "state_from_torch", "lora_ratio"]

CURRENT = "current"
HISTORY = "history.jsonl"
LEFTOVERS = (".tmp-v", ".gc-")     # made only under the registry's lock: any seen while holding it is a dead writer's
BUNDLES = "bundles"                # exported device bundles per version (cache: rebuilt by Registry.bundle if missing)
WEIGHT_MAP_ROLE = "weight_map"     # edge_gr.weightmap.ROLE
DEFAULT_BUNDLE_VARIANTS: tuple[tuple[str, str], ...] = (("onnxruntime", "fp32"),)
CHECKPOINT_WEIGHTS = "model.safetensors"  # the weights file of a server.generative checkpoint folder


class RegistryError(BundleError):
    """The registry (or one of its versions) cannot do what was asked; says which version / file and what to do."""


def state_from_torch(sd: Mapping) -> dict[str, np.ndarray]:
    """A torch ``state_dict`` -> numpy arrays (detached, CPU, contiguous)."""
    return {k: v.detach().cpu().contiguous().numpy() for k, v in sd.items()}


def lora_ratio(delta: VersionManifest, full: VersionManifest) -> float:
    """Bytes a device downloads for ``delta`` / bytes of the full version ``full``."""
    return delta.size / max(1, full.size)


def _package_files(folder: Path) -> set[str] | None:
    """The files a bundle package written before output markers existed consists of (None: not a package)."""
    doc = json.loads((folder / "update.json").read_text(encoding="utf-8"))
    if doc.get("format") != "edge-gr-update":
        return None
    return ({"update.json", "manifest.json"} | {f"files/{rel}" for rel in doc.get("files", {})}
            | {s["file"] for s in doc.get("steps", [])})


class Registry:
    """Versions of one model under ``root`` (created if missing)."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            if not create:
                raise RegistryError(f"no registry at {self.root}", hint="publish a first version with `edge-gr registry publish`")
            self.root.mkdir(parents=True)
        self._verified: set[str] = set()

    # -- reading ---------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Version names, oldest first (by major, minor)."""
        return list_versions(self.root)

    def path(self, version: str) -> Path:
        return self.root / version

    def manifest(self, version: str, *, verify: bool = False) -> VersionManifest:
        """The manifest of ``version`` (``verify=True`` also checks its files' sizes and sha256)."""
        parse_version(version)
        folder = self.path(version)
        if not folder.is_dir():
            raise RegistryError(f"no version {version} in {self.root}", hint=f"pick one of {self.versions()}")
        try:
            m = read_manifest(folder)
            if m.version != version:
                raise RegistryError(f"{folder}/{MANIFEST} says it is {m.version}", hint="the folder was renamed; rename it back")
            if verify and version not in self._verified:
                verify_files(folder, m)
                self._verified.add(version)
        except RegistryError:
            raise
        except BundleError as e:
            raise RegistryError(e.message, hint=f"version {version} is damaged: restore {folder} from a backup, or publish "
                                               f"it again; nothing was changed") from None
        return m

    def current(self) -> str | None:
        """The version the pointer names (None before the first activation)."""
        p = self.root / CURRENT
        if not p.is_file():
            return None
        v = p.read_text(encoding="utf-8").strip()
        parse_version(v)
        return v

    def chain(self, version: str) -> list[str]:
        """Versions from the full base to ``version``: ``["v1.0", "v1.1", "v1.2"]``."""
        out, seen = [], set()
        v: str | None = version
        while v is not None:
            if v in seen:
                raise RegistryError(f"version {version}'s parents form a cycle at {v}", hint="restore the registry from a backup")
            seen.add(v)
            m = self.manifest(v)
            out.append(v)
            v = m.parent
        return out[::-1]

    def rebuild(self, version: str) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
        """The full model of ``version``: (tensors, aux file name -> path), every file and tensor hash checked."""
        chain = self.chain(version)
        state: dict[str, np.ndarray] = {}
        for v in chain:
            m = self.manifest(v, verify=True)
            folder = self.path(v)
            if m.kind == "full":
                state = read_tensors(folder / WEIGHTS)
            else:
                tensors = read_tensors(folder / DELTA)
                try:
                    state = apply_delta(state, tensors, m.ops)
                except BundleError as e:
                    raise RegistryError(f"{v}: {e.message}", hint=e.hint) from None
            try:
                verify_tensors(state, m.tensors, f"version {v} (rebuilt from {chain[0]})")
            except BundleError as e:
                raise RegistryError(e.message, hint=e.hint) from None
        return state, self._aux_paths(version, chain)

    def _aux_paths(self, version: str, chain: list[str]) -> dict[str, Path]:
        want = self.manifest(version).aux
        out: dict[str, Path] = {}
        for name, sha in want.items():
            for v in reversed(chain):
                f = self.manifest(v).files.get(name)
                if f is not None and f.sha256 == sha:
                    out[name] = self.path(v) / name
                    break
            else:
                raise RegistryError(f"version {version} needs {name} (sha256 {sha[:12]}...), which no version of its chain {chain} stores",
                                    hint="publish the version again with that file")
        return out

    def verify(self, version: str) -> VersionManifest:
        """Check one version completely (files, and the rebuilt tensors); returns its manifest."""
        self.rebuild(version)
        return self.manifest(version)

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The registry's writer lock (publish, pointer moves, gc); entering it also clears dead writers' leftovers."""
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                self._clean_leftovers()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _clean_leftovers(self) -> list[str]:
        """Delete ``.tmp-v*`` (a publish that died) and ``.gc-v*`` (a gc that died). Call with the lock held: they are
        only ever made under it, so none of them belongs to a live process."""
        gone = []
        for p in self.root.iterdir():
            if p.name.startswith(LEFTOVERS):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone

    def _next_version(self, parent: str | None) -> str:
        vs = [parse_version(v) for v in self.versions()]
        if parent is None:
            return f"v{max((a for a, _ in vs), default=0) + 1}.0"
        major = parse_version(parent)[0]
        return f"v{major}.{max((b for a, b in vs if a == major), default=0) + 1}"

    def publish(self, state: Mapping[str, np.ndarray], *, parent: str | None = None, full: bool = False,
                lora: Mapping[str, tuple[np.ndarray, np.ndarray, float]] | None = None,
                aux: Mapping[str, bytes | str | os.PathLike] | None = None, config: dict | None = None,
                metrics: dict | None = None, version: str | None = None, note: str = "", activate: bool = False) -> VersionManifest:
        """Write a new version and return its manifest.

        ``full=True`` (or no version yet): all of ``state`` as ``weights.safetensors``.
        Else a delta against ``parent`` (default: the current version): only tensors that
        differ, LoRA factors for the names in ``lora`` (``name -> (A (r, in), B (out, r), scale)``,
        their weights then *are* ``W + scale * B @ A``, whatever ``state`` holds for them), and
        only the aux files whose bytes changed. ``aux`` maps file name -> bytes or a path;
        an aux file of the parent that is not named is carried over unchanged.
        """
        with self._lock():
            if not self.versions():
                full = True
            if full and lora:
                raise RegistryError("a full version cannot hold LoRA factors", hint="merge them into the state, or publish a delta")
            parent = None if full else (parent or self.current() or self.versions()[-1])
            version = version or self._next_version(parent)
            parse_version(version)
            if self.path(version).exists():
                raise RegistryError(f"version {version} already exists", hint="versions are immutable: publish under a new name")
            state = {k: np.asarray(v) for k, v in state.items()}
            aux_bytes = {name: (data if isinstance(data, bytes) else Path(data).read_bytes()) for name, data in (aux or {}).items()}
            for name in aux_bytes:
                if name in (MANIFEST, WEIGHTS, DELTA) or "/" in name or name.startswith("."):
                    raise RegistryError(f"aux file name {name!r} is reserved or not a plain file name", hint="rename it")
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".tmp-{version}-"))
            try:
                files: dict[str, FileInfo] = {}
                if full:
                    files[WEIGHTS] = write_tensors(tmp / WEIGHTS, state)
                    result, ops, aux_sha = state, {}, {}
                    parent_aux: dict[str, str] = {}
                else:
                    pstate, _ = self.rebuild(parent)
                    tensors, ops = make_delta(pstate, state, lora=lora)
                    result = apply_delta(pstate, tensors, ops)
                    files[DELTA] = write_tensors(tmp / DELTA, tensors)
                    parent_aux = dict(self.manifest(parent).aux)
                    aux_sha = dict(parent_aux)
                for name, data in aux_bytes.items():
                    sha = _bytes_sha256(data)
                    aux_sha[name] = sha
                    if parent_aux.get(name) == sha:
                        continue  # unchanged: found in an ancestor
                    (tmp / name).write_bytes(data)
                    files[name] = FileInfo(sha, len(data))
                m = VersionManifest(version=version, kind="full" if full else "delta", parent=parent, tensors=tensor_table(result),
                                    ops=ops, files=files, aux=aux_sha, config=dict(config or (self.manifest(parent).config if parent else {})),
                                    metrics=dict(metrics or {}), created=VersionManifest.now(), note=note)
                write_json_atomic(tmp / MANIFEST, m.to_dict())
                os.replace(tmp, self.path(version))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        if activate:
            self.set_current(version, reason="publish")
        return m

    def publish_checkpoint(self, ckpt_dir: str | os.PathLike, **kw) -> VersionManifest:
        """Publish a ``server.generative`` checkpoint folder: its ``model.safetensors`` as tensors,
        every other file (config, IDs, catalogue, tokenizer, popularity) as aux files.
        Keyword arguments are :meth:`publish`'s."""
        ckpt = Path(ckpt_dir)
        if not (ckpt / CHECKPOINT_WEIGHTS).is_file():
            raise RegistryError(f"{ckpt} has no {CHECKPOINT_WEIGHTS}", hint="pass a folder written by `edge-gr train`")
        state = read_tensors(ckpt / CHECKPOINT_WEIGHTS)
        aux = {p.name: p for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != CHECKPOINT_WEIGHTS and not p.name.startswith(".")}
        cfg = {}
        if (ckpt / "edge_gr_model.json").is_file():
            cfg = json.loads((ckpt / "edge_gr_model.json").read_text()).get("config", {})
        kw.setdefault("config", cfg)
        return self.publish(state, aux=aux, **kw)

    def materialize(self, version: str, out: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the rebuilt model of ``version`` as a checkpoint folder (``model.safetensors`` + aux files),
        atomically; ``server.generative.GenerativeModel.load(out)`` reads it.

        An existing ``out`` is replaced only if it is a previous ``materialize`` output with nothing added, or with
        ``force=True``; else :class:`~edge_gr.errors.InputError` (before anything is rebuilt).
        """
        self.manifest(version)
        out = Path(out)
        with output_folder(out, "registry materialize", force=force) as tmp:
            state, aux = self.rebuild(version)
            write_tensors(tmp / CHECKPOINT_WEIGHTS, state)
            for name, p in aux.items():
                shutil.copyfile(p, tmp / name)
        return out

    # -- the pointer -------------------------------------------------------------------
    def set_current(self, version: str, *, reason: str = "") -> None:
        """Point ``current`` at ``version`` after verifying it completely (a bad version is refused, the pointer stays)."""
        self.verify(version)
        with self._lock():
            old = self.current()
            write_text_atomic(self.root / CURRENT, version + "\n")
            with open(self.root / HISTORY, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": VersionManifest.now(), "from": old, "to": version, "reason": reason}) + "\n")

    def history(self) -> list[dict]:
        """Pointer moves, oldest first (a torn last line from a crash is skipped)."""
        p = self.root / HISTORY
        if not p.is_file():
            return []
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def rollback(self, to: str | None = None, *, reason: str = "rollback") -> str:
        """Point ``current`` back at ``to`` (default: the version it pointed at before the current one)."""
        cur = self.current()
        if to is None:
            prev = [h["from"] for h in self.history() if h.get("to") == cur and h.get("from") and h["from"] != cur]
            if not prev:
                raise RegistryError(f"no earlier version to roll back to from {cur}", hint="name one: `edge-gr registry rollback VERSION`")
            to = prev[-1]
        self.set_current(to, reason=reason)
        return to

    # -- listing, diff, gc --------------------------------------------------------------
    def list(self) -> list[dict]:
        """One row per version: version, kind, parent, bytes, created, metrics, current, status ("ok" or the problem)."""
        cur = self.current()
        rows = []
        for v in self.versions():
            row = {"version": v, "current": v == cur}
            try:
                m = self.manifest(v)
                row.update(kind=m.kind, parent=m.parent, bytes=m.size, tensors=len(m.tensors), changed=len(m.ops),
                           created=m.created, metrics=m.metrics, note=m.note, status="ok")
            except BundleError as e:
                row.update(kind="?", parent=None, bytes=0, tensors=0, changed=0, created="", metrics={}, note="", status=str(e))
            rows.append(row)
        return rows

    def diff(self, a: str, b: str) -> dict:
        """What differs between two versions: tensors added / removed / changed (shape a -> b), aux files, metrics."""
        ma, mb = self.manifest(a), self.manifest(b)
        ta, tb = ma.tensors, mb.tensors
        changed = {k: {"a": list(ta[k].shape), "b": list(tb[k].shape)} for k in sorted(set(ta) & set(tb)) if ta[k].sha256 != tb[k].sha256}
        aux = sorted(k for k in set(ma.aux) | set(mb.aux) if ma.aux.get(k) != mb.aux.get(k))
        metrics = {k: {"a": ma.metrics.get(k), "b": mb.metrics.get(k)} for k in sorted(set(ma.metrics) | set(mb.metrics))
                   if ma.metrics.get(k) != mb.metrics.get(k)}
        n = lambda t: int(np.prod(t.shape)) if t.shape else 1  # noqa: E731
        return {"a": a, "b": b, "added": sorted(set(tb) - set(ta)), "removed": sorted(set(ta) - set(tb)), "changed": changed,
                "params_changed": sum(n(tb[k]) for k in changed) + sum(n(tb[k]) for k in set(tb) - set(ta)),
                "params_total": sum(n(t) for t in tb.values()), "aux_changed": aux, "metrics": metrics}

    def gc(self, keep: int = 3, *, dry_run: bool = False) -> list[str]:
        """Delete versions that are not among the newest ``keep``, not current, not in the pointer's
        recent history (rollback targets) and not an ancestor of a kept version. Returns the removed
        (or, with ``dry_run``, the removable) versions. Refuses to run if any manifest is unreadable."""
        with self._lock():
            rows = self.list()
            bad = [r["version"] for r in rows if r["status"] != "ok"]
            if bad:
                raise RegistryError(f"versions {bad} are unreadable; gc would not know what they need",
                                    hint="repair or remove them by hand first (`edge-gr registry list` shows the problem)")
            vs = [r["version"] for r in rows]
            keep_set = set(vs[-keep:]) if keep > 0 else set()
            cur = self.current()
            if cur:
                keep_set.add(cur)
            keep_set |= {h["from"] for h in self.history()[-keep:] if h.get("from")} & set(vs)
            need = set()
            for v in keep_set:
                need |= set(self.chain(v))
            doomed = [v for v in vs if v not in need]
            if not dry_run:
                for v in doomed:
                    trash = self.root / f".gc-{v}"
                    os.replace(self.path(v), trash)  # out of sight atomically, then delete
                    shutil.rmtree(trash)
                    shutil.rmtree(self.root / BUNDLES / v, ignore_errors=True)
                    self._verified.discard(v)
            return doomed

    # -- shipping to devices ------------------------------------------------------------
    def bundle(self, version: str, variants: Sequence[tuple[str, str]] = DEFAULT_BUNDLE_VARIANTS) -> Path:
        """The device bundle of ``version`` (``model_version`` = the version name), exported once and kept
        under ``bundles/<version>/<variants>/`` so every package is computed against the very bytes devices got.

        Exporting needs torch: :meth:`materialize`, ``GenerativeModel.load``, ``export_bundle``.
        """
        parse_version(version)
        self.manifest(version)
        variants = [tuple(v)[:2] for v in variants]  # one checkpoint per registry version: no @source
        key = "+".join(f"{b}-{p}" for b, p in variants)
        out = self.root / BUNDLES / version / key
        if (out / BUNDLE_MANIFEST).is_file():
            try:
                load_manifest(out, verify=True)
                return out
            except BundleError:
                pass  # damaged cache: export again below
        from .export.bundle import export_bundle
        from .generative import GenerativeModel

        (self.root / BUNDLES).mkdir(exist_ok=True)
        with file_lock(self.root / BUNDLES / ".lock"):  # two processes exporting the same cache would race their swaps
            if (out / BUNDLE_MANIFEST).is_file():
                try:
                    load_manifest(out, verify=True)
                    return out  # exported by another process while this one waited
                except BundleError:
                    pass
            with owned_tempdir(self.root, ".tmp-bundle-") as td:  # the temp folders of dead exports go first
                gm = GenerativeModel.load(self.materialize(version, td / "ckpt"))
                # the cache is the registry's own folder: a damaged or older copy there is replaced whatever it holds
                export_bundle(gm, out, list(variants), model_version=version, metrics={}, force=True)
        return out

    def bundle_package(self, from_version: str | None, to_version: str, out: str | os.PathLike, *,
                       variants: Sequence[tuple[str, str]] = DEFAULT_BUNDLE_VARIANTS, force: bool = False,
                       signer=None, rollback: bool = False) -> tuple[Path, int]:
        """Write what a device holding the bundle of ``from_version`` (None: nothing) downloads to get the bundle of
        ``to_version``; returns (folder, bytes). ``edge_gr.update.BundleStore.install`` reads it.

        Layout (``update.json`` format ``edge-gr-update`` version 2, kind ``bundle``)::

            out/update.json       from, to, shipped files, delta steps, the tensors the device rebuilds weights from
            out/manifest.json     the target bundle's manifest (every file's sha256: the device checks against it)
            out/delta/*.safetensors  tensor deltas (edge_gr.delta ops: LoRA factors, replaced tensors, appended rows)
            out/files/<path>      bundle files the device neither has nor can rebuild (graphs whose shapes
                                  changed, IDs / catalogue, self-contained variants such as ORT int8)

        A weight-bound variant file (``edge_gr.weightmap``) is rebuilt on the device from the tensors it
        holds plus the delta. The delta is the registry's own chain of deltas (``from`` an ancestor of ``to``)
        limited to the tensors the target's weight files need, else one computed with ``make_delta``
        between the two models (e.g. a rollback to an older version).

        An existing ``out`` is replaced only if it is a previous package (with nothing added), or with ``force=True``.

        ``signer`` (:class:`server.keys.Signer`): the package also carries ``release.json`` (the targets key's
        signature over the sha256 of ``update.json`` and ``manifest.json``, the versions, an expiry) and
        ``root/N.root.json`` (every root version), which a device with a trust anchor requires
        (:mod:`edge_gr.trust`). ``rollback=True`` makes the release a signed rollback order: only for a device at
        ``from_version``, only to an older version.
        """
        from edge_gr.weightmap import needed_tensors, read_map, recoverable_tensors

        if from_version == to_version:
            raise RegistryError(f"a device at {to_version} needs no update to {to_version}", hint="pick another --to or --from")
        if rollback:
            if signer is None:
                raise RegistryError("a rollback order must be signed", hint="add --sign KEYS")
            if from_version is None or parse_version(to_version) >= parse_version(from_version):
                raise RegistryError(f"a rollback order goes from the device's version to an older one (got {from_version} -> "
                                    f"{to_version})", hint="give --from the version devices hold now and --to an older one")
        check_output(out, "registry package", force=force, legacy=_package_files)  # refuse before exporting bundles
        target = self.bundle(to_version, variants)
        tm = load_manifest(target, verify=True)
        have: set[str] = set()
        known: set[str] = set()
        base = None
        if from_version is not None:
            base = self.bundle(from_version, variants)
            bm = load_manifest(base, verify=True)
            have = {f.sha256 for f in bm.all_files()}
            for v in bm.variants:
                if WEIGHT_MAP_ROLE in v.files:
                    known |= recoverable_tensors(read_map(base / v.files[WEIGHT_MAP_ROLE].path))
        rebuild: dict[str, set[str]] = {}  # weights file -> tensors it needs
        if base is not None:
            for v in tm.variants:
                if WEIGHT_MAP_ROLE in v.files:
                    mrel = v.files[WEIGHT_MAP_ROLE].path
                    wm = read_map(target / mrel)
                    wrel = (PurePosixPath(mrel).parent / wm["file"]).as_posix()
                    entry = next((f for f in v.files.values() if f.path == wrel), None)
                    if entry is not None and entry.sha256 not in have:
                        rebuild[wrel] = needed_tensors(wm)
        needed = set().union(*rebuild.values()) if rebuild else set()
        steps = self._package_steps(from_version, to_version, known, needed) if needed else []
        out = Path(out)
        with output_folder(out, "registry package", force=force, legacy=_package_files) as tmp:
            shipped: dict[str, dict] = {}
            for f in tm.all_files():
                if f.sha256 in have or f.path in rebuild or f.path in shipped:
                    continue
                dst = tmp / "files" / f.path
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target / f.path, dst)
                shipped[f.path] = {"sha256": f.sha256, "size": f.size}
            doc_steps = []
            for i, (v, tensors, ops) in enumerate(steps):
                (tmp / "delta").mkdir(exist_ok=True)
                name = f"delta/{i:02d}-{v}.safetensors"
                info = write_tensors(tmp / name, tensors)
                doc_steps.append({"version": v, "file": name, "sha256": info.sha256, "size": info.size, "ops": ops})
            shutil.copyfile(target / BUNDLE_MANIFEST, tmp / "manifest.json")
            want = self.manifest(to_version).tensors
            doc = {"format": "edge-gr-update", "format_version": 2, "kind": "bundle", "from": from_version, "to": to_version,
                   "manifest": {"sha256": file_sha256(tmp / "manifest.json"), "size": (tmp / "manifest.json").stat().st_size},
                   "files": shipped, "steps": doc_steps, "rebuild": sorted(rebuild),
                   "tensors": {k: want[k].sha256 for k in sorted(needed)}}
            write_json_atomic(tmp / "update.json", doc)
            if signer is not None:
                from edge_gr.trust import RELEASE, ROOT_DIR

                info = {n: {"sha256": file_sha256(tmp / n), "size": (tmp / n).stat().st_size} for n in ("update.json", "manifest.json")}
                env = signer.sign_release(to=to_version, frm=from_version, update=info["update.json"],
                                          manifest=info["manifest.json"], rollback=rollback)
                write_json_atomic(tmp / RELEASE, env)
                (tmp / ROOT_DIR).mkdir()
                for p in signer.roots():
                    shutil.copyfile(p, tmp / ROOT_DIR / p.name)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())  # everything a device downloads, manifests included
        return out, size

    def _package_steps(self, from_version: str, to_version: str, known: set[str], needed: set[str]) -> list[tuple[str, dict, dict]]:
        """Delta steps ``(version, tensors, ops)`` that take a device holding tensors ``known`` of ``from_version``
        to tensors ``needed`` of ``to_version``: the published chain when it can, else one computed delta."""
        chain = self.chain(to_version)
        if from_version in chain:
            have, steps = set(known), []
            for v in chain[chain.index(from_version) + 1:]:
                m = self.manifest(v, verify=True)
                stored = read_tensors(self.path(v) / DELTA) if m.ops else {}
                tensors, ops = {}, {}
                for name, spec in m.ops.items():
                    op = spec.get("op")
                    if op == "replace" and name in needed:
                        tensors[name], ops[name] = stored[name], spec
                        have.add(name)
                    elif op in ("lora", "append_rows") and name in needed and name in have:
                        keys = [name + SEP + "lora_A", name + SEP + "lora_B"] if op == "lora" else [name + SEP + "rows"]
                        tensors.update({k: stored[k] for k in keys})
                        ops[name] = spec
                    else:  # removed, not needed, or its base is not on the device: the device's copy is stale
                        have.discard(name)
                if ops:
                    steps.append((v, tensors, ops))
            if needed <= have:
                return steps
        old, _ = self.rebuild(from_version)
        new, _ = self.rebuild(to_version)
        missing = needed - set(new)
        if missing:
            raise RegistryError(f"the bundle of {to_version} needs tensors {sorted(missing)[:3]} that version {to_version} lacks",
                                hint="export the bundle again from this registry version")
        tensors, ops = make_delta({k: old[k] for k in known if k in old}, {k: new[k] for k in needed})
        ops = {k: o for k, o in ops.items() if o["op"] != "remove"}
        return [(to_version, tensors, ops)] if ops else []


def _bytes_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
