"""Device-side model updates: apply a delta in a staging folder, verify it, swap atomically, keep the previous version.

The device keeps complete (``kind="full"``) versions in the :mod:`edge_gr.delta` format::

    models/
      current            "v1.1\\n"  (temp file + fsync + os.replace: always names a complete version)
      v1.0/              the previous version, kept until a newer one has verified and been switched to
      v1.1/              manifest.json + weights.safetensors + aux files
      .staging/          where an update is rebuilt and checked (wiped on start)

:meth:`ModelStore.install` takes an update package written by the registry
(``server.registry.Registry.update_package``: ``update.json`` + one version folder per
step, each a delta or a full version) and

1. checks the package is for the version the device has (``from``),
2. checks every file's size and sha256, applies each step to the current weights and
   checks every resulting tensor's sha256,
3. writes the new full version into ``.staging/``, fsyncs it and renames it into place,
4. switches ``current`` atomically,
5. deletes versions older than the previous one.

A crash (or a kill) at any point leaves ``current`` naming a complete, verified
version: before step 4 the old one, after it the new one. :meth:`ModelStore.load`
verifies the version it loads and, should it ever be damaged (e.g. flash corruption),
falls back to the newest other version that verifies. Rolling back to a version the
device still holds costs no download (:meth:`ModelStore.switch`).

>>> import tempfile, numpy as np
>>> from pathlib import Path
>>> from edge_gr.delta import tensor_table, VersionManifest, write_tensors, MANIFEST, WEIGHTS, write_json_atomic
>>> pkg = Path(tempfile.mkdtemp())           # an update package, as Registry.update_package(None, "v1.0", ...) writes it
>>> st = {"w": np.ones((2, 2), np.float32)}
>>> (pkg / "v1.0").mkdir()
>>> f = write_tensors(pkg / "v1.0" / WEIGHTS, st)
>>> _ = write_json_atomic(pkg / "v1.0" / MANIFEST, VersionManifest("v1.0", "full", None, tensor_table(st), files={WEIGHTS: f}).to_dict())
>>> _ = write_json_atomic(pkg / "update.json", {"format": "edge-gr-update", "format_version": 1, "from": None, "to": "v1.0", "steps": ["v1.0"]})
>>> store = ModelStore(tempfile.mkdtemp())
>>> r = store.install(pkg)
>>> (r.to_version, r.bytes > 0, store.current(), store.load().tensors["w"].sum())
('v1.0', True, 'v1.0', np.float32(4.0))
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .delta import (MANIFEST, list_versions, write_text_atomic, WEIGHTS, DELTA, FileInfo, VersionManifest, apply_delta, file_sha256, parse_version, read_manifest,
                    read_tensors, verify_files, verify_tensors, write_json_atomic, write_tensors)
from .errors import BundleError

__all__ = ["ModelStore", "LoadedModel", "UpdateReport", "UpdateError", "read_package"]

CURRENT = "current"
STAGING = ".staging"
PACKAGE = "update.json"
STEPS = ("checked", "applied", "written", "switched", "cleaned")  # what ``on_step`` is called with, in order


class UpdateError(BundleError):
    """An update package cannot be applied (wrong base version, corrupted, inconsistent); the device keeps its model."""


@dataclass
class LoadedModel:
    version: str
    tensors: dict[str, np.ndarray]
    aux: dict[str, Path]          # aux file name -> path in the version folder
    manifest: VersionManifest
    fell_back: bool = False       # True when ``current`` was damaged and an older version was loaded


@dataclass
class UpdateReport:
    from_version: str | None
    to_version: str
    bytes: int                    # bytes of the package (what the device downloaded)
    seconds: float
    steps: list[str] = field(default_factory=list)
    reused: bool = False          # the target was already on the device: no rebuild, only the pointer moved


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_package(folder: str | os.PathLike) -> dict:
    """``update.json`` of a package: ``{"from", "to", "steps"}`` (checked)."""
    p = Path(folder) / PACKAGE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        assert doc["format"] == "edge-gr-update" and doc["format_version"] == 1
        steps = list(doc["steps"])
        for v in steps + [doc["to"]] + ([doc["from"]] if doc["from"] else []):
            parse_version(v)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError, BundleError) as e:
        raise UpdateError(f"{p} is not a readable update package ({type(e).__name__}: {e})", hint="download the update again") from None
    if not steps or steps[-1] != doc["to"]:
        raise UpdateError(f"{p}: steps {steps} do not end at {doc['to']}", hint="download the update again")
    return doc


class ModelStore:
    """The model versions on one device, under ``root``. ``keep`` complete versions are kept (current + previous)."""

    def __init__(self, root: str | os.PathLike, *, keep: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(2, keep)
        self.recover()

    # -- state ---------------------------------------------------------------------
    def recover(self) -> None:
        """Remove what an interrupted update left behind (staging, temp files, half-deleted versions)."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        for p in self.root.iterdir():
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".trash-")):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def versions(self) -> list[str]:
        return list_versions(self.root)

    def current(self) -> str | None:
        p = self.root / CURRENT
        try:
            v = p.read_text(encoding="utf-8").strip()
            parse_version(v)
            return v
        except (OSError, UnicodeDecodeError, BundleError):
            return None

    def _check(self, version: str) -> tuple[VersionManifest, dict[str, np.ndarray]]:
        folder = self.root / version
        m = read_manifest(folder)
        if m.kind != "full" or m.version != version:
            raise BundleError(f"{folder} holds {m.kind} {m.version}, not the full {version}", hint="install a full version")
        verify_files(folder, m)
        tensors = read_tensors(folder / WEIGHTS)
        verify_tensors(tensors, m.tensors, f"{folder}")
        return m, tensors

    def load(self, version: str | None = None) -> LoadedModel:
        """Verify and load ``version`` (default: the current one). If the current one is damaged, the newest
        other version that verifies is loaded instead (``fell_back=True``); raises only if none does."""
        want = version or self.current()
        tried: list[str] = []
        order = ([want] if want else []) + ([v for v in reversed(self.versions()) if v != want] if version is None else [])
        for v in order:
            try:
                m, tensors = self._check(v)
            except BundleError as e:
                tried.append(f"{v}: {e.message}")
                continue
            aux = {name: self.root / v / name for name in m.aux}
            return LoadedModel(v, tensors, aux, m, fell_back=(v != want))
        raise BundleError(f"no loadable model in {self.root} ({'; '.join(tried) or 'no version installed'})",
                          hint="install a full version (Registry.update_package(None, VERSION, ...))")

    def _set_current(self, version: str) -> None:
        write_text_atomic(self.root / CURRENT, version + "\n")
        _fsync_dir(self.root)

    def switch(self, version: str) -> None:
        """Point ``current`` at a version already on the device, after verifying it (no download)."""
        try:
            self._check(version)
        except BundleError as e:
            raise UpdateError(f"cannot switch to {version}: {e.message}", hint="install it again from the registry") from None
        cur = self.current()
        self._set_current(version)
        self._gc(cur)

    # -- updates -----------------------------------------------------------------
    def install(self, package: str | os.PathLike, *, on_step: Callable[[str], None] | None = None) -> UpdateReport:
        """Apply an update package (see the module docstring); returns what it cost. On any error the
        device keeps serving the version it had (:class:`UpdateError` says why)."""
        t0 = time.perf_counter()
        pkg = Path(package)
        doc = read_package(pkg)
        size = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())
        step = on_step or (lambda s: None)
        cur = self.current()
        to = doc["to"]
        if to in self.versions():
            try:
                self._check(to)
            except BundleError:
                pass  # damaged leftover: rebuild it below
            else:
                if to != cur:
                    self._set_current(to)
                step("switched")
                self._gc(cur)
                step("cleaned")
                return UpdateReport(cur, to, size, time.perf_counter() - t0, list(doc["steps"]), reused=True)
        if doc["from"] is not None and doc["from"] != cur:
            raise UpdateError(f"the update goes from {doc['from']} to {to}, but this device has {cur}",
                              hint=f"ask the registry for an update from {cur}")
        try:
            if doc["from"] is None:
                state: dict[str, np.ndarray] = {}
                aux_src: dict[str, Path] = {}
            else:
                base = self.load(cur)
                if base.fell_back:
                    raise UpdateError(f"the current version {cur} is damaged", hint="install a full version")
                state, aux_src = base.tensors, dict(base.aux)
            m = None
            for v in doc["steps"]:
                folder = pkg / v
                m = read_manifest(folder)
                if m.version != v:
                    raise UpdateError(f"{folder} holds {m.version}", hint="download the update again")
                verify_files(folder, m)
                if m.kind == "full":
                    state = read_tensors(folder / WEIGHTS)
                else:
                    state = apply_delta(state, read_tensors(folder / DELTA), m.ops)
                verify_tensors(state, m.tensors, f"{to} (step {v})")
                aux_src = {name: (folder / name if name in m.files else aux_src.get(name)) for name in m.aux}
                for name, sha in m.aux.items():
                    if aux_src[name] is None or (name not in m.files and file_sha256(aux_src[name]) != sha):
                        raise UpdateError(f"{to} needs {name} (sha256 {sha[:12]}...), which neither the update nor {cur} has",
                                          hint="ask the registry for a full version")
        except UpdateError:
            raise
        except BundleError as e:
            raise UpdateError(f"the update to {to} does not verify: {e.message}", hint="download the update again; "
                              f"the device keeps {cur}") from None
        step("checked")
        staging = self.root / STAGING / to
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        files = {WEIGHTS: write_tensors(staging / WEIGHTS, state)}
        for name, src in aux_src.items():
            shutil.copyfile(src, staging / name)
            files[name] = FileInfo(file_sha256(staging / name), (staging / name).stat().st_size)
            if files[name].sha256 != m.aux[name]:
                raise UpdateError(f"{name} changed while it was copied", hint="retry the update")
        full = VersionManifest(version=to, kind="full", parent=None, tensors=m.tensors, files=files, aux=m.aux, config=m.config,
                               metrics=m.metrics, created=m.created, note=m.note)
        write_json_atomic(staging / MANIFEST, full.to_dict())
        _fsync_dir(staging)
        step("applied")
        dst = self.root / to
        if dst.exists():  # a damaged copy (if it is the current one, it was not loadable anyway)
            trash = self.root / f".trash-{to}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dst, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, dst)
        _fsync_dir(self.root)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        step("written")
        self._set_current(to)
        step("switched")
        self._gc(cur)
        step("cleaned")
        return UpdateReport(cur, to, size, time.perf_counter() - t0, list(doc["steps"]))

    def _gc(self, previous: str | None) -> None:
        """Keep the current version, ``previous`` (the rollback target) and the newest others up to ``keep``."""
        cur = self.current()
        others = [v for v in reversed(self.versions()) if v not in (cur, previous)]
        kept = 1 + (previous is not None and previous != cur and previous in self.versions())
        for v in others[max(0, self.keep - kept):]:
            trash = self.root / f".trash-{v}"
            os.replace(self.root / v, trash)
            shutil.rmtree(trash, ignore_errors=True)
