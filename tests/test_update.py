"""Device-side updates: deltas applied in staging, verified, swapped atomically; kills never leave the device without a model."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_gr.delta import DELTA, tensor_sha256
from edge_gr.errors import BundleError
from edge_gr.update import STEPS, ModelStore, UpdateError
from server.registry import Registry

REPO = Path(__file__).resolve().parents[1]


def _registry(root: Path, d: int = 96) -> Registry:
    """v1.0 full; v1.1 = LoRA on two weights; v1.2 = 8 new item rows + a changed ids file."""
    rng = np.random.default_rng(0)
    base = {"emb": rng.normal(size=(200, d)).astype(np.float32), "codes": rng.integers(0, 9, (200, 3)),
            **{f"l{i}.weight": rng.normal(size=(d, d)).astype(np.float32) for i in range(4)}}
    reg = Registry(root)
    reg.publish(base, full=True, aux={"ids.json": b'{"n": 200}'}, activate=True)
    lora = {k: (rng.normal(size=(4, d)).astype(np.float32), rng.normal(size=(d, 4)).astype(np.float32), 0.5) for k in ("l0.weight", "l2.weight")}
    reg.publish(base, lora=lora)
    s1, _ = reg.rebuild("v1.1")
    s2 = dict(s1, emb=np.concatenate([s1["emb"], rng.normal(size=(8, d)).astype(np.float32)]),
              codes=np.concatenate([s1["codes"], rng.integers(0, 9, (8, 3))]))
    reg.publish(s2, parent="v1.1", aux={"ids.json": b'{"n": 208}'})
    return reg


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("reg")
    reg = _registry(root / "reg")
    pk = {name: reg.update_package(a, b, root / name) for name, (a, b) in
          {"full": (None, "v1.0"), "p1": ("v1.0", "v1.1"), "p2": ("v1.1", "v1.2"), "p3": ("v1.2", "v1.0")}.items()}
    return reg, {k: v[0] for k, v in pk.items()}, {k: v[1] for k, v in pk.items()}


def _same_as_registry(reg, loaded):
    want = reg.manifest(loaded.version).tensors
    return all(tensor_sha256(loaded.tensors[k]) == t.sha256 for k, t in want.items()) and set(loaded.tensors) == set(want)


def test_updates_arrive_as_deltas_and_match_the_registry(packages, tmp_path):
    reg, pk, size = packages
    store = ModelStore(tmp_path / "dev")
    seen = []
    r0 = store.install(pk["full"])
    r1 = store.install(pk["p1"], on_step=seen.append)
    assert seen == list(STEPS)
    r2 = store.install(pk["p2"])
    assert (r0.to_version, r1.to_version, r2.to_version) == ("v1.0", "v1.1", "v1.2")
    assert r1.bytes == size["p1"] and r1.bytes < 0.15 * r0.bytes  # LoRA factors only
    assert r2.bytes < 0.15 * r0.bytes                              # 8 new rows + the new ids file
    m = store.load()
    assert m.version == "v1.2" and _same_as_registry(reg, m) and m.aux["ids.json"].read_bytes() == b'{"n": 208}'
    assert store.versions() == ["v1.1", "v1.2"]  # previous kept, older ones removed


def test_rollback_to_the_kept_previous_version_downloads_nothing_new(packages, tmp_path):
    reg, pk, _ = packages
    store = ModelStore(tmp_path / "dev")
    for p in ("full", "p1"):
        store.install(pk[p])
    store.switch("v1.0")
    assert store.current() == "v1.0" and _same_as_registry(reg, store.load())
    r = store.install(pk["p1"])
    assert r.reused and store.current() == "v1.1"


def test_wrong_base_and_corrupted_packages_are_refused_and_the_model_stays(packages, tmp_path):
    reg, pk, _ = packages
    store = ModelStore(tmp_path / "dev")
    store.install(pk["full"])
    with pytest.raises(UpdateError, match="this device has v1.0"):
        store.install(pk["p2"])
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(pk["p1"], bad)
    f = bad / "v1.1" / DELTA
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    with pytest.raises(UpdateError, match="sha256") as e:
        store.install(bad)
    assert "keeps v1.0" in str(e.value)
    assert store.current() == "v1.0" and store.load().version == "v1.0" and not (store.root / ".staging").exists()


def test_a_damaged_current_version_falls_back_to_the_previous(packages, tmp_path):
    reg, pk, _ = packages
    store = ModelStore(tmp_path / "dev")
    store.install(pk["full"])
    store.install(pk["p1"])
    w = store.root / "v1.1" / "weights.safetensors"
    w.write_bytes(b"\0" * w.stat().st_size)
    m = store.load()
    assert m.fell_back and m.version == "v1.0" and _same_as_registry(reg, m)
    for v in store.versions():
        (store.root / v / "weights.safetensors").unlink()
    with pytest.raises(BundleError, match="no loadable model"):
        store.load()


CHILD = textwrap.dedent("""
    import os, signal, sys
    from edge_gr.update import ModelStore
    root, pk = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
    kill_step, kill_on = os.environ.get("KILL_STEP"), int(os.environ.get("KILL_ON", "0"))
    store = ModelStore(root)
    nxt = {"v1.0": pk["p1"], "v1.1": pk["p2"], "v1.2": pk["p3"]}
    n = 0
    def on_step(s):
        if s == kill_step and n == kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
    print("ready", flush=True)
    while True:
        store.install(nxt[store.current()], on_step=on_step)
        n += 1
""")


def test_killing_the_device_at_random_points_of_updates_never_leaves_it_without_a_model(packages, tmp_path):
    """50 kills (SIGKILL): 25 at the update's step boundaries (each step, several update counts), 25 at random times."""
    reg, pk, _ = packages
    root = tmp_path / "dev"
    ModelStore(root).install(pk["full"])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    versions, interrupted = [], 0
    for i in range(50):
        e = dict(env)
        if i < 25:
            e.update(KILL_STEP=STEPS[i % len(STEPS)], KILL_ON=str(i // len(STEPS)))
        proc = subprocess.Popen([sys.executable, str(script), str(root), *(f"{k}={v}" for k, v in pk.items())],
                                stdout=subprocess.PIPE, env=e, cwd=REPO)
        assert proc.stdout.readline().strip() == b"ready"
        if i >= 25:
            time.sleep(float(rng.uniform(0.0, 0.15)))
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        interrupted += (root / ".staging").exists()
        store = ModelStore(root)  # the device restarts: cleans up, then must load a verified model
        m = store.load()
        assert not m.fell_back and m.version == store.current() and _same_as_registry(reg, m)
        versions.append(m.version)
    assert set(versions) == {"v1.0", "v1.1", "v1.2"}  # kills landed at different points of the cycle
    assert interrupted >= 5                            # and mid-update (the staging folder was left behind)
    assert not any(p.name.startswith(".trash") for p in root.iterdir())
