"""Device updates are bundles: registry versions (full, LoRA delta, appended item rows) reach the device as packages that
materialise into verified bundles; ``edge_gr.load`` serves them; kills never leave the device without a bundle."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import edge_gr
from edge_gr.errors import BundleError, UpdateError
from edge_gr.ids import SemanticIds
from edge_gr.update import STEPS, BundleStore
from server.data.base import Item
from server.generative import GenerativeModel
from server.incremental import grow_rec_model
from server.model import GenerativeRetriever, GRConfig
from server.registry import Registry

REPO = Path(__file__).resolve().parents[1]
N, NEW = 24, 4
HISTORIES = [["i1", "i2", "i3"], ["i5"], ["i20", "i7", "i11", "i0"], ["i9", "i9", "i14"]]
K, BEAM = 5, 32  # beam >= items: the search is exhaustive, so eager and exported scores compare position by position


def _ids(n: int) -> SemanticIds:
    return SemanticIds([f"i{j}" for j in range(n)], np.array([[j % 4, j // 4] for j in range(n)]), (4, 8))


def _registry(root: Path) -> Registry:
    """v1.0 full (random tiny recommender); v1.1 = LoRA (r=4) on every attention weight; v1.2 = 4 new items (appended rows)."""
    torch.manual_seed(0)
    ids = _ids(N)
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=N, d_model=64, n_heads=2, n_enc_layers=2, n_dec_layers=2, max_len=8, dropout=0.0)
    model = GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes))
    with torch.no_grad():  # like a trained model: no two tensors share a value
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gm = GenerativeModel(model, ids, [Item(f"i{j}", f"item {j}") for j in range(N)], popularity=["i0", "i1"])
    gm.save(root / "ckpt")
    reg = Registry(root / "reg")
    reg.publish_checkpoint(root / "ckpt", activate=True)
    state, _ = reg.rebuild("v1.0")
    rng = np.random.default_rng(0)
    lora = {k: (rng.normal(size=(4, v.shape[1])).astype(np.float32) * 0.1, rng.normal(size=(v.shape[0], 4)).astype(np.float32) * 0.1, 2.0)
            for k, v in state.items() if k.endswith(("attn.q.weight", "attn.kv.weight", "attn.o.weight"))}
    reg.publish(state, parent="v1.0", lora=lora)
    g1 = GenerativeModel.load(reg.materialize("v1.1", root / "m11"))
    g2 = grow_rec_model(g1, _ids(N + NEW), [Item(f"i{j}", f"new item {j}") for j in range(N, N + NEW)])
    g2.save(root / "ckpt2")
    reg.publish_checkpoint(root / "ckpt2", parent="v1.1")
    return reg


@pytest.fixture(scope="module")
def packages(tmp_path_factory, update_registry):
    root = tmp_path_factory.mktemp("upd")
    reg = update_registry
    pk, size = {}, {}
    for name, (a, b) in {"full": (None, "v1.0"), "p1": ("v1.0", "v1.1"), "p2": ("v1.1", "v1.2"), "p3": ("v1.2", "v1.0")}.items():
        pk[name], size[name] = reg.bundle_package(a, b, root / name)
    return reg, pk, size


def _hits(r, histories=HISTORIES):
    return [[(h.item_id, h.score) for h in hits] for hits in r.search_many(histories, K, beam=BEAM)]


def _same_bundle(reg, store, version):
    """The device's bundle is byte for byte the registry's export of ``version``."""
    want = json.loads((reg.bundle(version) / "manifest.json").read_text())
    got = store.resolve()
    return got.version == version and not got.fell_back and json.loads((got.path / "manifest.json").read_text()) == want


def test_versions_arrive_as_small_packages_and_run_as_the_registry_models(packages, tmp_path):
    reg, pk, size = packages
    store = BundleStore(tmp_path / "dev")
    seen = []
    r0 = store.install(pk["full"])
    assert (r0.to_version, r0.shipped, r0.rebuilt) == ("v1.0", len(store.resolve().manifest.all_files()), 0)
    r1 = store.install(pk["p1"], on_step=seen.append)
    assert seen == list(STEPS) and r1.to_version == "v1.1" and r1.bytes == size["p1"]
    doc1 = json.loads((pk["p1"] / "update.json").read_text())
    assert doc1["files"] == {} and r1.shipped == 0 and r1.rebuilt == 1          # LoRA: only tensors travel, weights rebuilt
    assert {o["op"] for s in doc1["steps"] for o in s["ops"].values()} == {"lora"}
    assert r1.bytes < 0.1 * r0.bytes, (r1.bytes, r0.bytes)
    assert _same_bundle(reg, store, "v1.1")
    cloud = edge_gr.load(reg.bundle("v1.1"), backend="onnxruntime")
    dev = store.load(backend="onnxruntime")
    assert _hits(dev) == _hits(cloud)                                              # the same bytes: the same answers
    eager = GenerativeModel.load(reg.materialize("v1.1", tmp_path / "m"))
    for got, ref in zip(_hits(dev), [eager.search(h, K, beam=BEAM) for h in HISTORIES]):
        np.testing.assert_allclose([s for _, s in got], [s for _, s in ref], atol=1e-4)
    r2 = store.install(pk["p2"])                                                   # new items: appended rows
    doc2 = json.loads((pk["p2"] / "update.json").read_text())
    assert r2.rebuilt == 1 and not any(p.endswith("weights.bin") for p in doc2["files"])
    assert {"ids.json", "catalogue.jsonl"} <= set(doc2["files"]) and r2.bytes < 0.5 * r0.bytes
    assert "variants/onnxruntime-fp32/decoder.onnx" not in doc2["files"]                # its weights did not move
    assert {o["op"] for s in doc2["steps"] for o in s["ops"].values()} == {"append_rows"}
    assert _same_bundle(reg, store, "v1.2") and store.versions() == ["v1.1", "v1.2"]
    new = store.load(backend="onnxruntime")
    assert len(new.ids) == N + NEW and [h.item_id for h in new.search([f"i{N + 1}"], 3)]
    assert _hits(new) == _hits(edge_gr.load(reg.bundle("v1.2"), backend="onnxruntime"))
    r3 = store.install(pk["p3"])                                                   # back to v1.0: a computed delta
    assert r3.to_version == "v1.0" and _same_bundle(reg, store, "v1.0")


def test_rollback_to_the_kept_previous_version_downloads_nothing(packages, tmp_path):
    reg, pk, _ = packages
    store = BundleStore(tmp_path / "dev")
    for p in ("full", "p1"):
        store.install(pk[p])
    store.switch("v1.0")
    assert store.current() == "v1.0" and _same_bundle(reg, store, "v1.0")
    r = store.install(pk["p1"])
    assert r.switched_only and store.current() == "v1.1"


def test_wrong_base_and_corrupted_or_tampered_packages_are_refused_and_the_model_stays(packages, tmp_path):
    reg, pk, _ = packages
    store = BundleStore(tmp_path / "dev")
    store.install(pk["full"])
    with pytest.raises(UpdateError, match="this device has v1.0"):
        store.install(pk["p2"])
    bad = tmp_path / "bad"
    shutil.copytree(pk["p1"], bad)
    doc = json.loads((bad / "update.json").read_text())
    f = bad / doc["steps"][0]["file"]
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    with pytest.raises(UpdateError, match="sha256"):
        store.install(bad)
    # the same change with a matching sha256 in update.json: the rebuilt bundle does not match the target manifest
    from edge_gr.delta import file_sha256

    doc["steps"][0].update(sha256=file_sha256(f), size=f.stat().st_size)
    doc["tensors"] = {}
    (bad / "update.json").write_text(json.dumps(doc))
    with pytest.raises(UpdateError, match="does not match its sha256 in the manifest of v1.1"):
        store.install(bad)
    assert store.current() == "v1.0" and _same_bundle(reg, store, "v1.0") and not (store.root / ".staging").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "update.json").write_text(json.dumps({"format": "edge-gr-update", "format_version": 1, "from": None, "to": "v1.0", "steps": []}))
    with pytest.raises(UpdateError, match="bundle package"):
        store.install(old)


def test_a_damaged_current_bundle_falls_back_to_the_previous(packages, tmp_path):
    reg, pk, _ = packages
    store = BundleStore(tmp_path / "dev")
    store.install(pk["full"])
    store.install(pk["p1"])
    w = store.root / "v1.1" / "variants" / "onnxruntime-fp32" / "weights.bin"
    w.write_bytes(b"\0" * w.stat().st_size)
    got = store.resolve()
    assert got.fell_back and got.version == "v1.0" and store.load().manifest.model_version == "v1.0"
    with pytest.raises(UpdateError, match="damaged"):  # a delta needs an intact base
        store.install(pk["p2"])
    for v in store.versions():
        (store.root / v / "ids.json").unlink()
    with pytest.raises(BundleError, match="no loadable bundle"):
        store.load()


CHILD = textwrap.dedent("""
    import os, signal, sys
    from edge_gr.update import BundleStore
    root, pk = sys.argv[1], dict(a.split("=") for a in sys.argv[2:])
    kill_step, kill_on = os.environ.get("KILL_STEP"), int(os.environ.get("KILL_ON", "0"))
    store = BundleStore(root)
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


def test_killing_the_device_at_random_points_of_updates_never_leaves_it_without_a_bundle(packages, tmp_path):
    """40 kills (SIGKILL): 20 at the update's step boundaries (each step, several update counts), 20 at random times."""
    reg, pk, _ = packages
    root = tmp_path / "dev"
    BundleStore(root).install(pk["full"])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    rng = np.random.default_rng(0)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    versions, interrupted = [], 0
    for i in range(40):
        e = dict(env)
        if i < 20:
            e.update(KILL_STEP=STEPS[i % len(STEPS)], KILL_ON=str(i // len(STEPS)))
        proc = subprocess.Popen([sys.executable, str(script), str(root), *(f"{k}={v}" for k, v in pk.items())],
                                stdout=subprocess.PIPE, env=e, cwd=REPO)
        assert proc.stdout.readline().strip() == b"ready"
        if i >= 20:
            time.sleep(float(rng.uniform(0.0, 0.6)))
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=120) == -signal.SIGKILL
        interrupted += (root / ".staging").exists()
        store = BundleStore(root)  # the device restarts: cleans up, then must find a verified bundle
        v = store.current()
        assert _same_bundle(reg, store, v)
        versions.append(v)
    assert set(versions) == {"v1.0", "v1.1", "v1.2"}  # kills landed at different points of the cycle
    assert interrupted >= 5                            # and mid-update (the staging folder was left behind)
    assert not any(p.name.startswith(".trash") for p in root.iterdir())
    assert store.load().search(HISTORIES[0], 3)
