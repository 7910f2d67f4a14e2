"""Device-side model updates: every version on the device is a complete bundle; ``edge_gr.load`` is the only load path.

::

    models/
      current            "v1.1\\n"  (temp file + fsync + os.replace: always names a complete, verified bundle)
      v1.0/              the previous bundle, kept until a newer one has verified and been switched to
      v1.1/              a bundle (edge_gr.bundle: manifest.json + ids, catalogue, variants/...)
      .staging/          where an update is materialised and checked (removed by the next writer)
      .lock              the store's lock file: one writer at a time (install / switch / recover / gc)

:meth:`BundleStore.install` takes an update package written by the registry
(``server.registry.Registry.bundle_package``; ``update.json`` format ``edge-gr-update``
version 2, kind ``bundle``)::

    update.json          {"from", "to", "manifest", "files", "steps", "rebuild", "tensors"}
    manifest.json        the target bundle's manifest
    delta/*.safetensors  tensor deltas (edge_gr.delta ops: LoRA factors, replaced tensors, appended rows)
    files/<path>         the bundle files the device cannot get otherwise (changed graphs, IDs, int8 variants, ...)

and materialises the target bundle in ``.staging/``, file by file of its manifest: a
file the package ships is copied from it; a file the device already holds (same
sha256, any kept version) is copied from there; a weight-bound file
(:mod:`edge_gr.weightmap`: the ONNX fp32 ``weights.bin``) is rebuilt from the current
bundle's tensors with the delta applied. Then

1. the result is checked by the bundle's own checks (every file's size and sha256,
   :func:`edge_gr.bundle.load_manifest`) and, with ``smoke=True``, loaded and run once
   with :func:`edge_gr.load`,
2. fsynced and renamed into place, ``current`` switched atomically,
3. versions older than the previous one are deleted.

Every change to the store (install, switch, recover, gc) holds an exclusive ``flock`` on ``.lock``, so
installs by several processes run one after the other; a process that dies drops its lock, and what
it left (``.staging``, temp files) is removed by the next writer, never while its owner lives.
Readers (:meth:`BundleStore.resolve`) take no lock unless what they read changes under them, then
they read again under a shared lock. Failures are :class:`UpdateError` / :class:`BundleError`, never
a raw ``OSError``.

A crash (or a kill) at any point leaves ``current`` naming a complete, verified bundle:
before the switch the old one, after it the new one. :meth:`BundleStore.path` verifies
the bundle it returns and, should it ever be damaged (e.g. flash corruption), falls back
to the newest other version that verifies. Rolling back to a version the device still
holds costs no download (:meth:`BundleStore.switch`).

>>> import tempfile, json, shutil
>>> from pathlib import Path
>>> from edge_gr.bundle import BundleWriter, RuntimeSpec
>>> src = Path(tempfile.mkdtemp()) / "b"     # a (model-less) bundle, as the registry exports it
>>> with BundleWriter(src, task="rec", model_version="v1.0", runtime=RuntimeSpec("rec", (4,), 8, 16)) as w:
...     _ = w.add_file("popularity", "popularity.json", b'["a"]')
>>> pkg = Path(tempfile.mkdtemp())           # a full package: Registry.bundle_package(None, "v1.0", ...)
>>> _ = shutil.copytree(src, pkg / "files"); _ = shutil.move(pkg / "files" / "manifest.json", pkg / "manifest.json")
>>> from edge_gr.delta import file_sha256, write_json_atomic
>>> files = {"popularity.json": {"sha256": file_sha256(pkg / "files" / "popularity.json"), "size": 5}}
>>> _ = write_json_atomic(pkg / "update.json", {"format": "edge-gr-update", "format_version": 2, "kind": "bundle", "from": None,
...     "to": "v1.0", "manifest": {"sha256": file_sha256(pkg / "manifest.json"), "size": (pkg / "manifest.json").stat().st_size},
...     "files": files, "steps": [], "rebuild": [], "tensors": {}})
>>> store = BundleStore(tempfile.mkdtemp(), smoke=False)   # smoke=True also runs the model (this bundle has none)
>>> r = store.install(pkg)
>>> (r.to_version, store.current(), store.path().name, (store.path() / "popularity.json").read_text())
('v1.0', 'v1.0', 'v1.0', '["a"]')
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .bundle import MANIFEST, BundleManifest, load_manifest
from .delta import apply_delta, file_sha256, list_versions, parse_version, read_tensors, tensor_sha256, write_text_atomic
from .errors import BackendUnavailableError, BundleError, EdgeGRError, MissingKeyError, TrustError, UpdateError
from .fsutil import file_lock
from .trust import RELEASE, ROOT_DIR, TrustPolicy, parse_root, read_metadata
from .weightmap import ROLE as WEIGHT_MAP, build_weights, read_map, recover_state

__all__ = ["BundleStore", "Resolved", "UpdateReport", "UpdateError", "StoreBusyError", "TrustError", "read_package", "STEPS",
           "PACKAGE_FORMAT", "PACKAGE_VERSION"]

CURRENT = "current"
STAGING = ".staging"
LOCK = ".lock"
TRUST = ".trust"      # the root metadata this store trusts now (rotations adopted from packages)
PACKAGE = "update.json"
PACKAGE_FORMAT = "edge-gr-update"
PACKAGE_VERSION = 2
STEPS = ("checked", "applied", "written", "switched", "cleaned")  # what ``on_step`` is called with, in order
_AGAIN = "download the update again"


class StoreBusyError(UpdateError):
    """Another process holds the store's lock (an install in progress) longer than ``lock_timeout``."""


@dataclass(frozen=True)
class Resolved:
    """The bundle :meth:`BundleStore.resolve` picked: its version, folder and (verified) manifest."""

    version: str
    path: Path
    manifest: BundleManifest
    fell_back: bool = False       # True when ``current`` was damaged and an older version was picked


@dataclass
class UpdateReport:
    from_version: str | None
    to_version: str
    bytes: int                    # bytes of the package (what the device downloaded)
    seconds: float
    shipped: int = 0              # files copied from the package
    reused: int = 0               # files copied from bundles already on the device
    rebuilt: int = 0              # weight files rebuilt from tensors + delta
    switched_only: bool = False   # the target was already on the device: nothing built, only the pointer moved
    steps: list[str] = field(default_factory=list)


def _fsync(path: Path, *, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _safe_rel(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel


def read_package(folder: str | os.PathLike) -> dict:
    """``update.json`` of a bundle update package (format and fields checked, files not yet)."""
    p = Path(folder) / PACKAGE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
        assert doc.get("format") == PACKAGE_FORMAT, f"format {doc.get('format')!r}"
        if doc.get("format_version") != PACKAGE_VERSION or doc.get("kind") != "bundle":
            raise UpdateError(f"{p} is a {doc.get('kind', 'weights')} package of format version {doc.get('format_version')}; this "
                              f"device installs bundle packages (version {PACKAGE_VERSION})",
                              hint="ask the registry for a bundle package: `edge-gr registry package --from V --to V --out DIR`")
        parse_version(doc["to"])
        if doc["from"] is not None:
            parse_version(doc["from"])
        for rel in list(doc["files"]) + [s["file"] for s in doc["steps"]] + list(doc["rebuild"]):
            assert _safe_rel(rel), f"bad path {rel!r}"
        for s in doc["steps"]:
            assert isinstance(s["ops"], dict) and isinstance(s["sha256"], str) and int(s["size"]) >= 0
        assert isinstance(doc["tensors"], dict) and isinstance(doc["manifest"]["sha256"], str)
    except UpdateError:
        raise
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AssertionError, BundleError) as e:
        raise UpdateError(f"{p} is not a readable update package ({type(e).__name__}: {e})", hint=_AGAIN) from None
    return doc


def _check_file(path: Path, sha256: str, size: int) -> None:
    if not path.is_file():
        raise UpdateError(f"the package lacks {path.name} ({path})", hint=_AGAIN)
    if path.stat().st_size != size or file_sha256(path) != sha256:
        raise UpdateError(f"{path} does not match its size / sha256 in {PACKAGE} (corrupted or truncated download)", hint=_AGAIN)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    _fsync(dst)


class BundleStore:
    """The model bundles on one device, under ``root``. ``keep`` complete versions are kept (current + previous).

    ``smoke=True``: an installed bundle is also loaded and run once (:func:`edge_gr.load`) before ``current`` moves.
    ``lock_timeout``: seconds a writer waits for another process's install to end before :class:`StoreBusyError`
    (None: as long as it takes). Several processes (and threads) may use one store at once.
    ``trust``: the provisioned ``root.json`` (path or :class:`edge_gr.trust.TrustPolicy`). With it, every package must
    be signed (:mod:`edge_gr.trust`): forged, wrongly keyed, expired, replayed or downgrading packages are refused
    (:class:`TrustError`) before anything of them is read, and :meth:`switch` to an older version needs a signed
    rollback order. Root rotations a package carries are adopted and kept in ``.trust/root.json``.
    ``clock``: the time the expiry checks use (default: now, UTC).
    ``key_provider``: decrypts encrypted bundles (:mod:`edge_gr.sealed`) for the smoke run and :meth:`load`.
    """

    def __init__(self, root: str | os.PathLike, *, keep: int = 2, smoke: bool = True, lock_timeout: float | None = None,
                 trust: str | os.PathLike | TrustPolicy | None = None, clock: Callable[[], "datetime.datetime"] | None = None,
                 key_provider=None):
        self.root = Path(root)
        self.key_provider = key_provider
        self._anchor = trust if isinstance(trust, TrustPolicy) or trust is None else TrustPolicy.from_file(trust)
        self.clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UpdateError(f"cannot create the model store {self.root} ({type(e).__name__}: {e})",
                              hint="pick a folder this app can write, or free space on the device") from None
        self.keep = max(2, keep)
        self.smoke = smoke
        self.lock_timeout = lock_timeout
        self._guard = threading.RLock()  # threads of this process; the flock orders processes
        self._held = 0
        try:
            self.recover(wait=False)  # opportunistic: an install in progress keeps its staging, and cleans up itself
        except UpdateError:
            pass  # a store this process cannot write (read-only media) can still be read

    # -- the lock ----------------------------------------------------------------------
    def _busy(self) -> StoreBusyError:
        return StoreBusyError(f"another process is changing the model store {self.root} (it holds {self.root / LOCK})",
                              hint="wait for its install to finish, then try again (a process that died drops the lock)")

    @contextlib.contextmanager
    def _lock(self, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
        """Hold the store's flock for the block (exclusive: writers; shared: a reader that must not see a change).
        Re-entrant within this object: flock is per open file, so a second lock of our own would deadlock."""
        with self._guard:
            if self._held:
                self._held += 1
                try:
                    yield
                finally:
                    self._held -= 1
                return
            stack = contextlib.ExitStack()
            try:
                stack.enter_context(file_lock(self.root / LOCK, shared=shared, timeout=self.lock_timeout if wait else 0.0,
                                              busy=self._busy))
            except OSError as e:
                raise UpdateError(f"cannot lock the model store {self.root} ({type(e).__name__}: {e})",
                                  hint="pick a folder this app can write") from None
            with stack:
                self._held = 1
                try:
                    yield
                finally:
                    self._held = 0

    # -- state ---------------------------------------------------------------------
    def recover(self, *, wait: bool = True) -> bool:
        """Remove what an interrupted update left behind (staging, temp files, half-deleted versions).

        Takes the store's lock, so staging that a live install holds is never touched: ``wait=True`` waits for that
        install to end (up to ``lock_timeout``), ``wait=False`` returns False at once and changes nothing.
        """
        try:
            with self._lock(wait=wait):
                self._clean()
        except StoreBusyError:
            if wait:
                raise
            return False
        return True

    def _clean(self) -> None:
        """Leftovers of dead writers; call with the lock held (a live writer holds it, so none of this is its)."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return
        for p in entries:
            if p.name.startswith(".") and (p.name.endswith(".tmp") or p.name.startswith(".trash-")):
                with contextlib.suppress(OSError):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def versions(self) -> list[str]:
        """Bundle folders on the device, oldest first (complete ones: only renamed into place after verifying)."""
        try:
            return list_versions(self.root)
        except OSError:
            return []

    def current(self) -> str | None:
        """The version ``current`` names (None before the first install)."""
        try:
            v = (self.root / CURRENT).read_text(encoding="utf-8").strip()
            parse_version(v)
            return v
        except (OSError, UnicodeDecodeError, BundleError):
            return None

    def _check(self, version: str) -> BundleManifest:
        folder = self.root / version
        m = load_manifest(folder, verify=True)
        if m.model_version != version:
            raise BundleError(f"{folder} holds the bundle of {m.model_version}, not {version}", hint="install the version again")
        return m

    def _snapshot(self) -> tuple:
        return self.current(), tuple(self.versions())

    def resolve(self, version: str | None = None) -> Resolved:
        """Verify ``version`` (default: the current one) and return it. If the current one is damaged, the newest
        other version that verifies is returned instead (``fell_back=True``); raises only if none does.

        No lock is taken unless an install or gc changed the store while it was read (a version deleted under the
        check, ``current`` moved): then it reads again under a shared lock, which waits for that writer to end.
        """
        before = self._snapshot()
        try:
            got = self._resolve(version)
            if not got.fell_back or self._snapshot() == before:
                return got
        except BundleError:
            if self._snapshot() == before:
                raise
        except OSError:
            pass  # a file vanished while it was hashed: a writer is at work
        with self._lock(shared=True):
            try:
                return self._resolve(version)
            except OSError as e:
                raise BundleError(f"cannot read the bundles in {self.root} ({type(e).__name__}: {e})",
                                  hint="check the storage (permissions, errors), then install a full package") from None

    def _resolve(self, version: str | None) -> Resolved:
        want = version or self.current()
        tried: list[str] = []
        order = ([want] if want else []) + ([v for v in reversed(self.versions()) if v != want] if version is None else [])
        for v in order:
            try:
                m = self._check(v)
            except BundleError as e:
                tried.append(f"{v}: {e.message}")
                continue
            return Resolved(v, self.root / v, m, fell_back=(v != want))
        raise BundleError(f"no loadable bundle in {self.root} ({'; '.join(tried) or 'no version installed'})",
                          hint="install a full package (Registry.bundle_package(None, VERSION, ...))")

    def path(self, version: str | None = None) -> Path:
        """Folder of the verified bundle of ``version`` (default: current, falling back as :meth:`resolve` does)."""
        return self.resolve(version).path

    def load(self, **kw):
        """``edge_gr.load(self.path(), **kw)``: the one way to run the model on the device."""
        from .runtime import load

        if self.key_provider is not None:
            kw.setdefault("key_provider", self.key_provider)
        before = self._snapshot()
        try:
            return load(self.path(), **kw)
        except (EdgeGRError, OSError):  # e.g. a FormatError: a file gc removed while it was opened
            if self._snapshot() == before:
                raise
        with self._lock(shared=True):  # the version was replaced while it loaded: load what is current now
            try:
                return load(self.path(), **kw)
            except OSError as e:
                raise BundleError(f"cannot read the bundle in {self.root} ({type(e).__name__}: {e})",
                                  hint="check the storage (permissions, errors), then install a full package") from None

    def _set_current(self, version: str) -> None:
        write_text_atomic(self.root / CURRENT, version + "\n")
        _fsync(self.root, directory=True)

    def switch(self, version: str, *, order: str | os.PathLike | None = None) -> None:
        """Point ``current`` at a version already on the device, after verifying it (no download).

        On a store with ``trust``, going back to an older version needs ``order``: a signed rollback package (or its
        ``release.json``) from the registry for this device's current version (``edge-gr registry package --rollback``).
        """
        with self._lock():
            try:
                self._check(version)
            except BundleError as e:
                raise UpdateError(f"cannot switch to {version}: {e.message}", hint="install it again from the registry") from None
            cur = self.current()
            if self.trusted and cur is not None and parse_version(version) <= parse_version(cur) and version != cur:
                if order is None:
                    raise TrustError(f"switching back from {cur} to {version} needs a signed rollback order (this store only "
                                     f"installs signed updates)", hint=f"`edge-gr registry package --from {cur} --to {version} "
                                     f"--rollback --sign KEYS`, then switch(..., order=PACKAGE) or install it")
                o = Path(order)
                o = o / RELEASE if o.is_dir() else o
                pol = self.trust_policy()
                rel = pol.check_release(read_metadata(o, str(o)), installed=cur, now=self.clock())
                if not rel["rollback"] or rel["version"] != version:
                    raise TrustError(f"{o} is not a rollback order to {version}", hint="give the rollback package for this version")
            try:
                self._set_current(version)
            except OSError as e:
                raise UpdateError(f"cannot switch to {version} ({type(e).__name__}: {e})",
                                  hint=f"free space on the device and try again; the device keeps {cur}") from None
            self._gc(cur)

    def gc(self) -> list[str]:
        """Delete the versions beyond ``keep`` (never the current one); returns what is left."""
        with self._lock():
            self._clean()
            self._gc(None)
            return self.versions()

    # -- signed metadata ---------------------------------------------------------
    @property
    def trusted(self) -> bool:
        """True when this store installs signed packages only."""
        return self._anchor is not None

    def trust_policy(self) -> TrustPolicy | None:
        """The root trusted now: the provisioned one, walked forward through the rotations this store adopted from
        packages (kept as ``.trust/N.root.json``, each checked again against the previous one)."""
        if self._anchor is None:
            return None
        pol = TrustPolicy(self._anchor.root)
        kept = sorted((self.root / TRUST).glob("*.root.json")) if (self.root / TRUST).is_dir() else []
        try:
            pol.rotate([read_metadata(p, str(p)) for p in kept], now=datetime.datetime.min.replace(tzinfo=datetime.timezone.utc))
        except TrustError:
            pol = TrustPolicy(self._anchor.root)  # damaged copies: the packages carry every rotation again
        return pol

    def _verify_release(self, pkg: Path, installed: str | None) -> dict:
        """Check ``pkg``'s signatures, expiry and version rules before anything else of it is read; adopt root rotations."""
        pol = self.trust_policy()
        now = self.clock()
        newer = []
        rdir = pkg / ROOT_DIR
        if rdir.is_dir():
            newer = [read_metadata(p, f"{p}") for p in sorted(rdir.glob("*.root.json"))]
        adopted = pol.rotate(newer, now=now)
        rel = pol.check_release(read_metadata(pkg / RELEASE, f"{pkg / RELEASE}"), installed=installed, now=now)
        for part, path in (("update", pkg / PACKAGE), ("manifest", pkg / MANIFEST)):
            want = rel[part]
            if not path.is_file() or path.stat().st_size != want["size"] or file_sha256(path) != want["sha256"]:
                raise TrustError(f"{path.name} of the package is not the one its signed release names (altered after signing)",
                                 hint="do not install this package; ask the registry for a fresh one")
        for r in adopted:  # kept only once the whole package verified
            (self.root / TRUST).mkdir(exist_ok=True)
            write_text_atomic(self.root / TRUST / f"{r.version}.root.json", json.dumps(r.envelope))
        return rel

    # -- updates -----------------------------------------------------------------
    def install(self, package: str | os.PathLike, *, on_step: Callable[[str], None] | None = None) -> UpdateReport:
        """Install an update package (see the module docstring); returns what it cost. On any error the device
        keeps serving the bundle it had (:class:`UpdateError` says why). Installs by several processes take turns
        (the store's lock; :class:`StoreBusyError` after ``lock_timeout``)."""
        pkg = Path(package)
        with self._lock():
            try:
                return self._install(pkg, on_step or (lambda s: None))
            except OSError as e:  # disk full, permissions, a package folder that vanished: the device keeps its model
                shutil.rmtree(self.root / STAGING, ignore_errors=True)
                raise UpdateError(f"installing {pkg} into {self.root} failed ({type(e).__name__}: {e})",
                                  hint=f"free space on the device, {_AGAIN}, and install again; the device keeps "
                                       f"{self.current()}") from None

    def _install(self, pkg: Path, step: Callable[[str], None]) -> UpdateReport:
        t0 = time.perf_counter()
        self._clean()  # what a killed install left: we hold the lock, so its owner is gone
        cur = self.current()
        rel = self._verify_release(pkg, cur) if self.trusted else None  # signatures first: nothing unsigned is parsed
        doc = read_package(pkg)
        if rel is not None and (doc["to"] != rel["version"] or doc["from"] != rel["from"] or doc["manifest"] != rel["manifest"]):
            raise TrustError(f"{PACKAGE} says {doc['from']} -> {doc['to']}, its signed release {rel['from']} -> {rel['version']}",
                             hint="do not install this package; ask the registry for a fresh one")
        size = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file())
        to = doc["to"]
        if to in self.versions():
            try:
                self._check(to)
            except BundleError:
                pass  # damaged leftover: build it again below
            else:
                if to != cur:
                    self._set_current(to)
                step("switched")
                self._gc(cur)
                step("cleaned")
                return UpdateReport(cur, to, size, time.perf_counter() - t0, switched_only=True, steps=["switched", "cleaned"])
        if doc["from"] is not None and doc["from"] != cur:
            raise UpdateError(f"the update goes from {doc['from']} to {to}, but this device has {cur}",
                              hint=f"ask the registry for a package from {cur} (or a full one: no --from)")
        report = UpdateReport(cur, to, size, 0.0)
        staging = self.root / STAGING / to
        try:
            self._materialise(pkg, doc, staging, report, step)
        except UpdateError:
            shutil.rmtree(self.root / STAGING, ignore_errors=True)
            raise
        except MissingKeyError:  # an encrypted bundle and no key for it: not a bad download, a missing key_provider=
            shutil.rmtree(self.root / STAGING, ignore_errors=True)
            raise
        except BundleError as e:
            shutil.rmtree(self.root / STAGING, ignore_errors=True)
            raise UpdateError(f"the update to {to} does not verify: {e.message}",
                              hint=f"{_AGAIN}; the device keeps {cur}") from None
        dst = self.root / to
        if dst.exists():  # a damaged copy (it did not verify above)
            trash = self.root / f".trash-{to}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(dst, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, dst)
        _fsync(self.root, directory=True)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        step("written")
        self._set_current(to)
        step("switched")
        self._gc(cur)
        step("cleaned")
        report.seconds = time.perf_counter() - t0
        report.steps = list(STEPS)
        return report

    def _materialise(self, pkg: Path, doc: dict, staging: Path, report: UpdateReport, step: Callable[[str], None]) -> None:
        to, cur = doc["to"], doc["from"]
        # 1. the package itself: every file it brings, then the target manifest
        _check_file(pkg / MANIFEST, doc["manifest"]["sha256"], int(doc["manifest"]["size"]))
        for rel, info in doc["files"].items():
            _check_file(pkg / "files" / rel, info["sha256"], int(info["size"]))
        for s in doc["steps"]:
            _check_file(pkg / s["file"], s["sha256"], int(s["size"]))
        try:
            tm = BundleManifest.from_dict(json.loads((pkg / MANIFEST).read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UpdateError(f"{pkg / MANIFEST} is not JSON ({e})", hint=_AGAIN) from None
        if tm.model_version != to:
            raise UpdateError(f"the package's bundle is {tm.model_version}, its {PACKAGE} says {to}", hint=_AGAIN)
        # 2. what the device holds: the current bundle (verified) first, then the other kept versions
        base: Resolved | None = None
        if cur is not None:
            try:
                base = self.resolve(cur)
            except BundleError as e:
                raise UpdateError(f"the current bundle {cur} is damaged ({e.message})",
                                  hint="install a full package (no --from)") from None
        local: dict[str, Path] = {}
        for v in ([cur] if cur else []) + [v for v in reversed(self.versions()) if v != cur]:
            try:
                m = base.manifest if base is not None and v == cur else load_manifest(self.root / v, verify=False)
            except BundleError:
                continue
            for f in m.all_files():
                local.setdefault(f.sha256, self.root / v / f.path)
        # 3. the tensors the weight files are rebuilt from: the current bundle's, with the delta applied
        rebuild = set(doc["rebuild"])
        state = {}
        if rebuild:
            if base is None:
                raise UpdateError(f"the package rebuilds {sorted(rebuild)[:2]} from the device's tensors, but no bundle is installed",
                                  hint="install a full package (no --from)")
            for v in base.manifest.variants:
                if WEIGHT_MAP in v.files:
                    mrel = v.files[WEIGHT_MAP].path
                    wm = read_map(base.path / mrel)
                    state.update(recover_state(wm, base.path / PurePosixPath(mrel).parent / wm["file"]))
            for s in doc["steps"]:
                state = apply_delta(state, read_tensors(pkg / s["file"]), s["ops"])
            for name, sha in doc["tensors"].items():
                if name not in state:
                    raise UpdateError(f"the update to {to} needs tensor {name!r}, which neither the package nor {cur} has",
                                      hint="ask the registry for a full package (no --from)")
                if tensor_sha256(state[name]) != sha:
                    raise UpdateError(f"tensor {name!r} rebuilt from {cur} + the delta does not match its sha256 for {to}",
                                      hint=f"{_AGAIN}, or install a full package")
        step("checked")
        # 4. the target bundle, file by file of its manifest
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        later = []
        for f in tm.all_files():
            if not _safe_rel(f.path):
                raise UpdateError(f"the target manifest lists {f.path!r}, which is outside the bundle", hint=_AGAIN)
            dst = staging / f.path
            if f.path in doc["files"]:
                _copy(pkg / "files" / f.path, dst)
                report.shipped += 1
            elif f.sha256 in local:
                _copy(local[f.sha256], dst)
                report.reused += 1
            elif f.path in rebuild:
                later.append(f)
            else:
                raise UpdateError(f"{to} needs {f.path} (sha256 {f.sha256[:12]}...), which neither the package nor this device has",
                                  hint="ask the registry for a full package (no --from)")
        for f in later:
            wm = None
            for v in tm.variants:
                if WEIGHT_MAP in v.files:
                    mrel = v.files[WEIGHT_MAP].path
                    cand = read_map(staging / mrel)
                    if (PurePosixPath(mrel).parent / cand["file"]).as_posix() == f.path:
                        wm = cand
            if wm is None:
                raise UpdateError(f"the package rebuilds {f.path}, but no weight map of {to} describes it", hint=_AGAIN)
            info = build_weights(wm, state, staging / f.path)
            if info["sha256"] != f.sha256:
                raise UpdateError(f"{f.path} rebuilt from {cur} + the delta does not match its sha256 in the manifest of {to}",
                                  hint=f"{_AGAIN}, or install a full package")
            report.rebuilt += 1
        _copy(pkg / MANIFEST, staging / MANIFEST)
        for d in sorted({p for p in staging.rglob("*") if p.is_dir()}, reverse=True) + [staging]:
            _fsync(d, directory=True)
        # 5. the bundle's own checks, then (optionally) one run
        load_manifest(staging, verify=True)
        if self.smoke:
            from .runtime import load

            try:
                load(staging, key_provider=self.key_provider)
            except BackendUnavailableError as e:
                raise UpdateError(f"no variant of {to} can run on this device ({e.message})",
                                  hint=e.hint or "install a runtime backend") from None
        step("applied")

    def _gc(self, previous: str | None) -> None:
        """Keep the current version, ``previous`` (the rollback target) and the newest others up to ``keep``.
        Call with the lock held. A failure here is not the update's: what is left is removed by the next writer."""
        cur = self.current()
        others = [v for v in reversed(self.versions()) if v not in (cur, previous)]
        kept = 1 + (previous is not None and previous != cur and previous in self.versions())
        for v in others[max(0, self.keep - kept):]:
            trash = self.root / f".trash-{v}"
            with contextlib.suppress(OSError):
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(self.root / v, trash)  # out of sight atomically: a reader never sees half a version
                shutil.rmtree(trash, ignore_errors=True)
