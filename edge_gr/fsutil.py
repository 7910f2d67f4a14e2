"""Filesystem rules every edge-gr writer keeps: one writer at a time, never delete what edge-gr did not write,
and no temp folder left behind by a run that died.

* :func:`file_lock` - an ``fcntl.flock`` on a lock file (exclusive for writers, shared for readers); the kernel drops
  it when its process dies, so a killed writer never blocks the next one.
* :func:`output_folder` - write a whole output folder (``--out``) into a temp sibling and swap it in. An existing
  ``out`` is replaced only if it holds nothing but a previous output of the same command (the marker
  :data:`OUTPUT_MARKER` lists what that run wrote) or ``force=True``; otherwise :class:`~edge_gr.errors.InputError`
  names the files it would have deleted.
* :func:`owned_tempdir` - a temp folder that names its owner (pid) and holds a lock while in use; leftovers of
  dead owners with the same prefix are deleted by the next one.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> with output_folder(d / "out", "demo") as stage:
...     _ = (stage / "a.txt").write_text("a")
>>> sorted(p.name for p in (d / "out").iterdir())
['.edge-gr-output', 'a.txt']
>>> with output_folder(d / "out", "demo") as stage:   # its own previous output: replaced
...     _ = (stage / "b.txt").write_text("b")
>>> sorted(p.name for p in (d / "out").iterdir()), sorted(p.name for p in d.iterdir())
(['.edge-gr-output', 'b.txt'], ['out'])
>>> _ = (d / "out" / "notes.txt").write_text("mine")      # a file edge-gr did not write: refused, nothing touched
>>> with output_folder(d / "out", "demo") as stage:
...     pass
Traceback (most recent call last):
...
edge_gr.errors.InputError: ... holds files `edge-gr demo` did not write (notes.txt)... pass --force ...
>>> (d / "out" / "notes.txt").read_text()
'mine'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import EdgeGRError, InputError

__all__ = ["OUTPUT_MARKER", "file_lock", "output_folder", "check_output", "owned_tempdir", "clean_stale_temps", "fsync_dir",
           "git_work_tree"]

OUTPUT_MARKER = ".edge-gr-output"    # in every output folder: {"format", "command", "files": [what the run wrote]}
_MARKER_FORMAT = "edge-gr-output"
_OWNER = ".owner"                    # inside an owned temp folder: the lock file its owner holds
_STALE_UNLOCKED_S = 60.0             # an unlocked temp folder of a live pid older than this is a pid-reuse leftover
_TMP_TAG = ".edge-gr-tmp-"           # temp siblings of an output: ".<out name>.edge-gr-tmp-<pid>-<random>"

_live: set[str] = set()              # owned temp folders of this process (a leftover of an earlier process may carry our pid)
_live_guard = threading.Lock()

Legacy = Callable[[Path], "set[str] | None"]   # files a marker-less previous output evidently wrote (None: not one)


def git_work_tree(path: str | os.PathLike) -> Path | None:
    """The git work tree ``path`` lies in (None if none): where secrets (signing keys, data keys) must never be written."""
    path = Path(path)
    for p in [path, *path.parents]:
        if (p / ".git").exists():
            return p
    return None


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so a rename inside it survives a power cut (no-op where folders cannot be fsynced)."""
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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, timeout: float | None = None,
              busy: Callable[[], EdgeGRError] | None = None) -> Iterator[bool]:
    """Hold ``flock`` on ``path`` (created if missing) for the block; yields True.

    ``timeout``: give up after that many seconds (None: wait) and raise ``busy()``. A shared lock on a store that
    cannot even be opened (read-only media without the lock file) yields False: nobody can write there anyway.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield False
            return
    try:
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if timeout is None:
            fcntl.flock(fd, op)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, op | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise (busy() if busy else EdgeGRError(f"{path} is locked by another process",
                                                               hint="wait for it to finish, then run again")) from None
                    time.sleep(0.02)
        yield True
    finally:
        os.close(fd)  # closing drops the lock


# -- owned temp folders ------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, it is someone else's
        return True
    return True


def _try_lock_owner(folder: Path) -> int | None:
    """An fd holding the owner lock of ``folder`` (its owner is gone), or None while a live owner holds it."""
    try:
        fd = os.open(folder / _OWNER, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _restore_previous(folder: Path, out: Path | None) -> None:
    """A run killed between its two renames left the previous output in ``folder/old``: put it back."""
    old = folder / "old"
    if out is not None and old.exists() and not out.exists() and not out.is_symlink():
        with contextlib.suppress(OSError):
            os.replace(old, out)


def clean_stale_temps(parent: str | os.PathLike, prefix: str, *, out: str | os.PathLike | None = None) -> list[Path]:
    """Delete the folders ``parent/<prefix><pid>-*`` whose owner is gone; returns them.

    Gone: its lock is free *and* its pid is dead (or is this process, which does not know it, or is alive but the
    folder is older than a minute: a reused pid). A live owner holds the lock, so its folder is never touched; the
    pid check covers the instant between creating a folder and locking it. With ``out``, a previous output a killed
    swap had moved aside is put back at ``out`` first.
    """
    parent, gone = Path(parent), []
    try:
        entries = [p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return gone
    for p in entries:
        with _live_guard:
            if str(p) in _live:
                continue
        try:
            pid = int(p.name[len(prefix):].split("-", 1)[0])
        except ValueError:
            continue  # not one of ours
        if pid != os.getpid() and _pid_alive(pid):
            try:
                if time.time() - p.stat().st_mtime < _STALE_UNLOCKED_S:
                    continue
            except OSError:
                continue
        fd = _try_lock_owner(p)
        if fd is None:
            continue
        try:
            _restore_previous(p, Path(out) if out is not None else None)
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
        finally:
            os.close(fd)
    return gone


@contextlib.contextmanager
def owned_tempdir(parent: str | os.PathLike, prefix: str, *, out: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh folder ``parent/<prefix><pid>-<random>`` locked by this process for the block, deleted after it.
    Leftovers with the same prefix whose owner died are deleted first (:func:`clean_stale_temps`)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(parent, prefix, out=out)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))
    with _live_guard:
        _live.add(str(tmp))
    fd = None
    try:
        fd = os.open(tmp / _OWNER, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield tmp
    finally:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
            with _live_guard:
                _live.discard(str(tmp))


# -- output folders ------------------------------------------------------------------------
def _files(folder: Path) -> set[str]:
    """Every non-folder entry under ``folder`` (files, links), as POSIX paths relative to it."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        out |= {(rel / n).as_posix() for n in filenames}
        out |= {(rel / n).as_posix() for n in dirnames if (Path(dirpath) / n).is_symlink()}
    return out


def _read_marker(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != _MARKER_FORMAT or not isinstance(doc.get("files"), list):
        return None
    return doc


def _problem(out: Path, command: str, legacy: Legacy | None) -> str | None:
    """Why replacing ``out`` would delete something ``command`` did not write (None: it would not)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        return f"{out} exists and is not a folder edge-gr wrote"
    if not out.exists():
        return None
    try:
        present = _files(out)
    except OSError as e:
        return f"{out} cannot be read ({e})"
    if not present:
        return None  # empty (or only empty folders): nothing to lose
    marker = _read_marker(out)
    if marker is not None and marker.get("command") != command:
        return f"{out} is the output of `edge-gr {marker.get('command')}`, not of `edge-gr {command}`"
    if marker is not None:
        ours = {str(f) for f in marker["files"]} | {OUTPUT_MARKER}
    else:
        try:
            ours = legacy(out) if legacy is not None else None
        except Exception:  # a damaged legacy output is not evidently ours
            ours = None
        if ours is None:
            ours = set()
    foreign = sorted(present - ours)
    if not foreign:
        return None
    more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
    return f"{out} holds files `edge-gr {command}` did not write ({', '.join(foreign[:3])}{more})"


def check_output(out: str | os.PathLike, command: str, *, force: bool = False, legacy: Legacy | None = None) -> None:
    """Raise :class:`InputError` unless ``out`` is missing, empty, a previous output of ``command`` with nothing
    added, or ``force`` is set. ``legacy(out)``: the files a previous output written before the marker existed
    evidently consists of (e.g. the files a bundle's manifest lists), or None."""
    if force:
        return
    why = _problem(Path(out), command, legacy)
    if why:
        raise InputError(why, hint="pick a new or empty --out, move those files away, or pass --force (force=True) to "
                                   "replace it, deleting them")


def _write_marker(stage: Path, command: str) -> None:
    files = sorted(_files(stage) - {OUTPUT_MARKER})
    doc = {"format": _MARKER_FORMAT, "command": command, "files": files, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with open(stage / OUTPUT_MARKER, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _swap(tmp: Path, stage: Path, out: Path) -> None:
    """Move the previous ``out`` (if any) into ``tmp`` and ``stage`` to ``out``; the caller deletes ``tmp``."""
    old = tmp / "old"
    moved = False
    if out.exists() or out.is_symlink():
        try:
            os.replace(out, old)
            moved = True
        except FileNotFoundError:
            pass  # another run moved it away a moment ago; ours goes in below
    try:
        os.replace(stage, out)
    except OSError as e:
        if moved:
            with contextlib.suppress(OSError):
                os.replace(old, out)
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise InputError(f"{out} was written by another process while this one ran", hint="run one writer at a time, "
                                                                                              "then run again") from None
        raise _unwritable(out, e) from None
    fsync_dir(out.parent)


def _unwritable(out: Path, e: OSError) -> InputError:
    return InputError(f"cannot write {out} ({type(e).__name__}: {e})",
                      hint="pick an --out in a folder you can write, on a disk with free space")


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, command: str, *, force: bool = False, legacy: Legacy | None = None) -> Iterator[Path]:
    """Fill the yielded (empty) folder; when the block ends without error it replaces ``out`` in two renames
    (a crash between them leaves the previous output in the temp folder, which the next run puts back).

    Refuses (before the block runs, and again just before the swap) what :func:`check_output` refuses. The temp
    folder is ``.<out name>.edge-gr-tmp-<pid>-*`` beside ``out``; those of dead runs are deleted on entry. Every
    output gets :data:`OUTPUT_MARKER` listing what it holds, so the next run of ``command`` may replace it.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(out, e) from None
    clean_stale_temps(out.parent, f".{out.name}{_TMP_TAG}", out=out)  # first: it may put a previous output back
    check_output(out, command, force=force, legacy=legacy)
    try:
        temp = owned_tempdir(out.parent, f".{out.name}{_TMP_TAG}", out=out)
        tmp = temp.__enter__()
    except OSError as e:
        raise _unwritable(out, e) from None
    with contextlib.ExitStack() as stack:
        stack.push(temp)  # leaving it deletes the temp folder, whatever happened
        stage = tmp / "out"
        stage.mkdir()
        yield stage
        try:
            _write_marker(stage, command)
        except OSError as e:
            raise _unwritable(out, e) from None
        fsync_dir(stage)
        check_output(out, command, force=force, legacy=legacy)  # someone may have written into it meanwhile
        _swap(tmp, stage, out)
