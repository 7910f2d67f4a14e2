"""The device store under concurrency (issue #16): installs by several processes take turns behind the store's lock;
random SIGKILLs never leave ``current`` without a loadable bundle; a live install's staging is never removed; every
failure is our own error with a hint, never a raw OSError."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edge_gr
from edge_gr.bundle import MANIFEST, FileEntry, load_manifest
from edge_gr.errors import EdgeGRError, UpdateError
from edge_gr.fsutil import file_lock
from edge_gr.update import LOCK, STAGING, BundleStore, StoreBusyError

REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("v1.0", "v1.1", "v1.2", "v1.3")


def _derive(src: Path, dst: Path, version: str) -> Path:
    """A copy of bundle ``src`` as ``version``: other popularity bytes and a 1 MB blob of its own, so every version's
    files differ and an install takes long enough to be killed in the middle of it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".edge-gr-*"))
    pop = json.dumps([f"m{VERSIONS.index(version)}", "m0"]).encode()
    (dst / "popularity.json").write_bytes(pop)
    blob = np.random.default_rng(VERSIONS.index(version)).bytes(1 << 20)
    (dst / "blob.bin").write_bytes(blob)
    m = load_manifest(src, verify=False)
    files = dict(m.files, popularity=FileEntry("popularity.json", hashlib.sha256(pop).hexdigest(), len(pop)),
                 blob=FileEntry("blob.bin", hashlib.sha256(blob).hexdigest(), len(blob)))
    (dst / MANIFEST).write_text(json.dumps(replace(m, model_version=version, files=files).to_dict(), indent=1))
    load_manifest(dst)  # verifies
    return dst


def _full_package(bundle: Path, out: Path) -> Path:
    """What ``Registry.bundle_package(None, version, out)`` writes: every file, the manifest, ``update.json``."""
    m = load_manifest(bundle)
    files = {}
    for f in m.all_files():
        (out / "files" / f.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle / f.path, out / "files" / f.path)
        files[f.path] = {"sha256": f.sha256, "size": f.size}
    shutil.copyfile(bundle / MANIFEST, out / MANIFEST)
    man = out / MANIFEST
    doc = {"format": "edge-gr-update", "format_version": 2, "kind": "bundle", "from": None, "to": m.model_version,
           "manifest": {"sha256": hashlib.sha256(man.read_bytes()).hexdigest(), "size": man.stat().st_size},
           "files": files, "steps": [], "rebuild": [], "tensors": {}}
    (out / "update.json").write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """Full packages of four versions of one tiny recommender (torch variant: the cheapest to export), and a delta
    package from a version no device has (always refused: exercises the error path of concurrent installers)."""
    import torch

    from edge_gr.ids import SemanticIds
    from server.data.base import Item
    from server.export.bundle import export_bundle
    from server.generative import GenerativeModel
    from server.model import GenerativeRetriever, GRConfig

    root = tmp_path_factory.mktemp("lock")
    n = 8
    ids = SemanticIds([f"m{i}" for i in range(n)], np.array([[i % 4, i // 4] for i in range(n)]), (4, 2))
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=n, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=4)
    torch.manual_seed(0)
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(f"m{i}", f"movie {i}") for i in range(n)],
                         popularity=["m0"])
    base = export_bundle(gm, root / "base", [("torch", "fp32")], model_version="v1.0")
    pk = {v: _full_package(_derive(base, root / f"b-{v}", v), root / f"p-{v}") for v in VERSIONS}
    bad = shutil.copytree(pk["v1.1"], root / "p-bad")
    doc = json.loads((bad / "update.json").read_text())
    (bad / "update.json").write_text(json.dumps(dict(doc, **{"from": "v9.0", "to": "v2.0"})))
    pk["bad"] = bad
    return pk


def _check_one_loadable_current(root: Path, *, store_load: bool = False) -> str:
    """``current`` names exactly one version, whose folder verifies and loads with the public device API."""
    with file_lock(root / LOCK, shared=True):  # a consistent view: no writer moves anything meanwhile
        text = (root / "current").read_text()
        v = text.strip()
        assert text == v + "\n" and v in VERSIONS, text
        m = load_manifest(root / v)
        assert m.model_version == v
        assert edge_gr.load(root / v, backend="torch").search(["m1"], 2)
    store = BundleStore(root, smoke=False)  # and the store's own lock-free read path (writers may be at work)
    got = store.resolve()
    assert not got.fell_back and got.version in VERSIONS
    if store_load:
        assert store.load(backend="torch").manifest.model_version in VERSIONS
    return v


INSTALLER = textwrap.dedent("""
    import os, random, signal, sys, traceback
    from edge_gr.errors import EdgeGRError
    from edge_gr.update import BundleStore
    root, n, seed, kill_step, kill_on, *pkgs = sys.argv[1:]
    rng, count = random.Random(int(seed)), 0
    def on_step(s):  # a scheduled kill at a step boundary: with the lock held, often with a complete staging
        if s == kill_step and count >= int(kill_on):
            os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    sys.stdin.readline()  # all installers start at once
    done = own = 0
    for i in range(int(n)):
        pkg = pkgs[-1] if i % 5 == 4 else rng.choice(pkgs[:-1])  # every 5th: the refused package
        try:
            BundleStore(root, smoke=False).install(pkg, on_step=on_step)  # a new store each time: its recover() runs too
            done += 1
        except EdgeGRError as e:
            own += 1
            print("own-error", type(e).__name__, e.hint is not None, flush=True)
        except BaseException:
            traceback.print_exc()
            sys.exit(3)
        count += 1
    print("done", done, own, flush=True)
""")
KILL_STEPS = ("checked", "applied", "written", "switched")  # edge_gr.update.STEPS but "cleaned" (the install is over)


def test_concurrent_installers_with_random_kills_always_leave_one_loadable_current(packages, tmp_path):
    """2-3 installer processes at once, 20 installs each (full packages of 4 versions + a refused delta); 8 SIGKILLs:
    4 at random times from outside, 4 self-inflicted at update step boundaries (lock held, staging in place) while
    the others wait for the lock. After every kill and at the end ``current`` names one loadable bundle, and no
    installer that was not killed raised anything but our own errors (with a hint)."""
    t0 = time.monotonic()
    root = tmp_path / "dev"
    BundleStore(root, smoke=False).install(packages["v1.0"])
    script = tmp_path / "installer.py"
    script.write_text(INSTALLER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    pkgs = [str(packages[v]) for v in VERSIONS] + [str(packages["bad"])]
    rng = np.random.default_rng(0)
    seeds = iter(range(1000))
    scheduled: list[str] = []
    doomed: set[int] = set()  # installers that will kill themselves at a step boundary (the test does not kill them)

    def spawn(n: int) -> list[subprocess.Popen]:
        ps = []
        for _ in range(n):
            step, on = "none", "0"
            if len(self_killed) + len([p for p in procs + ps if p.pid in doomed and p.poll() is None]) < 4:
                step, on = KILL_STEPS[len(scheduled) % len(KILL_STEPS)], str(int(rng.integers(1, 4)))
                scheduled.append(step)
            ps.append(subprocess.Popen([sys.executable, str(script), str(root), "20", str(next(seeds)), step, on, *pkgs],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=env, cwd=REPO))
            if step != "none":
                doomed.add(ps[-1].pid)
        for p in ps:
            assert p.stdout.readline().strip() == "ready"
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        return ps

    procs: list[subprocess.Popen] = []
    killed: set[int] = set()      # by the test, at random times
    self_killed: set[int] = set()  # at a step boundary
    reaped: set[int] = set()
    seen: set[str] = set()
    outs: dict[int, tuple[int, str]] = {}
    try:
        while len(killed) < 4 or len(self_killed) < 4:
            assert time.monotonic() - t0 < 50, f"installers too slow: {len(killed)} + {len(self_killed)} kills, {len(procs)} spawned"
            for p in procs:
                if p.pid not in reaped and p.poll() is not None:
                    reaped.add(p.pid)
                    if p.returncode == -9 and p.pid not in killed:
                        self_killed.add(p.pid)
                        seen.add(_check_one_loadable_current(root))
                    elif p.pid not in killed:
                        outs[p.pid] = (p.returncode, p.stdout.read())
            alive = [p for p in procs if p.poll() is None]
            if len(alive) < 2 or not any(p.pid not in doomed for p in alive):
                procs += spawn(max(1, 3 - len(alive)))  # keep 2-3 installers running at once
                continue
            time.sleep(float(rng.uniform(0.0, 0.15)))
            alive = [p for p in procs if p.poll() is None and p.pid not in doomed]
            if alive and len(killed) < 4:
                victim = alive[int(rng.integers(len(alive)))]
                victim.kill()
                victim.wait(timeout=10)
                killed.add(victim.pid)
                seen.add(_check_one_loadable_current(root))
        for p in procs:
            if p.pid not in reaped and p.pid not in killed:
                out, _ = p.communicate(timeout=max(5.0, 55 - (time.monotonic() - t0)))
                if p.returncode == -9:
                    self_killed.add(p.pid)
                else:
                    outs[p.pid] = (p.returncode, out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert len(killed) == 4 and len(self_killed) >= 4 and outs
    for rc, out in outs.values():
        assert rc == 0 and "Traceback" not in out, out  # no raw exception escaped a process that was not killed
        done, own = map(int, out.split("done ")[1].split())
        assert done + own == 20 and own >= 4          # the refused delta: our own error ...
        assert all(line.endswith("True") for line in out.splitlines() if line.startswith("own-error"))  # ... with a hint
    seen.add(_check_one_loadable_current(root, store_load=True))
    store = BundleStore(root, smoke=False)
    assert store.recover()  # nobody holds the lock now: what the victims left is removed
    assert not (root / STAGING).exists() and not [p for p in root.iterdir() if p.name.startswith(".trash") or p.name.endswith(".tmp")]
    store.install(packages["v1.3"])
    assert store.current() == "v1.3" and len(store.versions()) <= 2 and _check_one_loadable_current(root) == "v1.3"
    print(f"kills {len(killed)} random + {len(self_killed)} at steps {scheduled}, {len(outs)} installers finished, "
          f"currents seen {sorted(seen)}, {time.monotonic() - t0:.1f} s")


HOLDER = textwrap.dedent("""
    import sys
    from edge_gr.update import BundleStore
    def on_step(s):
        if s == "applied":  # the target is complete in .staging, current not yet moved: stop here
            print("paused", flush=True)
            sys.stdin.readline()
    BundleStore(sys.argv[1], smoke=False).install(sys.argv[2], on_step=on_step)
    print("installed", flush=True)
""")


def test_recover_never_removes_the_staging_of_a_live_install_and_removes_a_dead_ones(packages, tmp_path):
    root = tmp_path / "dev"
    BundleStore(root, smoke=False).install(packages["v1.0"])
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for finish in (True, False):
        p = subprocess.Popen([sys.executable, str(script), str(root), str(packages["v1.1" if finish else "v1.2"])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        try:
            assert p.stdout.readline().strip() == "paused"
            staged = root / STAGING / ("v1.1" if finish else "v1.2")
            store = BundleStore(root, smoke=False)           # what the reviewer ran: used to delete .staging here
            assert staged.is_dir() and store.recover(wait=False) is False and staged.is_dir()
            with pytest.raises(StoreBusyError, match="another process is changing") as e:
                BundleStore(root, smoke=False, lock_timeout=0.2).install(packages["v1.3"])
            assert e.value.hint and "wait" in e.value.hint
            assert store.resolve().version == ("v1.0" if finish else "v1.1")  # readers are not blocked by the install
            if finish:
                p.stdin.write("\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "installed" and p.wait(timeout=30) == 0
                assert store.current() == "v1.1" and not (root / STAGING).exists()
            else:
                p.kill()
                p.wait(timeout=10)
                assert staged.is_dir() and store.recover() is True and not (root / STAGING).exists()
                assert store.current() == "v1.1"
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_threads_of_one_process_take_turns_too(packages, tmp_path):
    root = tmp_path / "dev"
    shared = BundleStore(root, smoke=False)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        store = shared if i % 2 else BundleStore(root, smoke=False)  # one object shared by threads, and one each
        for j in range(5):
            try:
                store.install(packages[VERSIONS[(i + j) % len(VERSIONS)]])
                store.resolve()
            except BaseException as e:  # noqa: BLE001 - collected and reported below
                errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert _check_one_loadable_current(root) == shared.current()


def test_storage_errors_are_update_errors_and_the_device_keeps_its_bundle(packages, tmp_path, monkeypatch):
    store = BundleStore(tmp_path / "dev", smoke=False)
    store.install(packages["v1.0"])
    import edge_gr.update as update

    def full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(update.shutil, "copyfile", full)
    with pytest.raises(UpdateError, match="No space left") as e:
        store.install(packages["v1.1"])
    assert "free space" in e.value.hint and "keeps v1.0" in e.value.hint
    monkeypatch.undo()
    assert store.current() == "v1.0" and not (store.root / STAGING).exists()
    with pytest.raises(UpdateError, match="not a readable update package"):
        store.install(tmp_path / "missing")
    with pytest.raises(EdgeGRError, match="cannot create the model store"):
        (tmp_path / "file").write_text("x")
        BundleStore(tmp_path / "file" / "dev")
