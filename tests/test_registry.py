"""The model registry: full versions, deltas, the current pointer, rollback, list / diff / gc, corruption."""

import json

import numpy as np
import pytest

from edge_gr.delta import DELTA, merge_lora, tensor_sha256
from edge_gr.errors import BundleError
from server.registry import Registry, RegistryError


def _state(seed=0, n_items=50, d=16):
    rng = np.random.default_rng(seed)
    return {"emb": rng.normal(size=(n_items, d)).astype(np.float32),
            "l1.weight": rng.normal(size=(d, d)).astype(np.float32),
            "l1.bias": rng.normal(size=d).astype(np.float32),
            "codes": rng.integers(0, 8, size=(n_items, 3)).astype(np.int64)}


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "reg")
    r.publish(_state(), full=True, aux={"ids.json": b'{"n": 50}', "config.json": b"{}"}, metrics={"ndcg@10": 0.10}, activate=True)
    return r


def test_full_then_delta_stores_only_changed_tensors_and_files(reg):
    s = _state()
    s["l1.bias"] = s["l1.bias"] + 1
    m = reg.publish(s, aux={"ids.json": b'{"n": 50}', "config.json": b'{"x": 1}'}, metrics={"ndcg@10": 0.11})
    assert (m.version, m.kind, m.parent) == ("v1.1", "delta", "v1.0")
    assert m.ops == {"l1.bias": {"op": "replace"}}
    assert set(m.files) == {DELTA, "config.json"}  # ids.json did not change: found in v1.0
    state, aux = reg.rebuild("v1.1")
    assert all(tensor_sha256(state[k]) == tensor_sha256(s[k]) for k in s)
    assert aux["ids.json"].parent.name == "v1.0" and aux["config.json"].read_bytes() == b'{"x": 1}'


def test_new_items_become_appended_rows(reg):
    s, more = _state(), _state(seed=1, n_items=5)
    s2 = dict(s, emb=np.concatenate([s["emb"], more["emb"]]), codes=np.concatenate([s["codes"], more["codes"]]))
    m = reg.publish(s2)
    assert m.ops == {"codes": {"op": "append_rows"}, "emb": {"op": "append_rows"}}
    assert reg.rebuild(m.version)[0]["emb"].shape == (55, 16)


def test_lora_delta_is_small_and_rebuilds_bit_exactly(tmp_path):
    rng = np.random.default_rng(0)
    base = {f"layer{i}.weight": rng.normal(size=(256, 256)).astype(np.float32) for i in range(4)}
    reg = Registry(tmp_path / "r")
    full = reg.publish(base, full=True)
    lora = {k: (rng.normal(size=(4, 256)).astype(np.float32), rng.normal(size=(256, 4)).astype(np.float32), 2.0) for k in base}
    m = reg.publish(base, lora=lora)
    assert m.size / full.size < 0.05
    state, _ = reg.rebuild(m.version)
    for k, (A, B, sc) in lora.items():
        np.testing.assert_allclose(state[k], base[k] + sc * B @ A, rtol=1e-5, atol=1e-4)
        assert tensor_sha256(state[k]) == tensor_sha256(merge_lora(base[k], A, B, sc))


def test_pointer_set_rollback_and_history(reg):
    s = _state()
    s["l1.bias"][0] = 9
    reg.publish(s, activate=True)
    s["l1.bias"][1] = 9
    reg.publish(s, activate=True)
    assert reg.current() == "v1.2"
    assert reg.rollback() == "v1.1" and reg.current() == "v1.1"
    assert reg.rollback(to="v1.0") == "v1.0"
    assert [(h["from"], h["to"]) for h in reg.history()] == [(None, "v1.0"), ("v1.0", "v1.1"), ("v1.1", "v1.2"), ("v1.2", "v1.1"), ("v1.1", "v1.0")]
    assert (reg.root / "current").read_text() == "v1.0\n"
    assert not list(reg.root.glob(".*tmp*"))


def test_versions_are_immutable(reg):
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(_state(), full=True, version="v1.0")


@pytest.mark.parametrize("damage, match", [
    (lambda p: (p / DELTA).write_bytes(b"\0" + (p / DELTA).read_bytes()[1:]), "does not match its sha256"),
    (lambda p: (p / DELTA).write_bytes((p / DELTA).read_bytes()[:-3]), "truncated"),
    (lambda p: (p / DELTA).unlink(), "is missing"),
    (lambda p: (p / "manifest.json").write_text("{"), "is corrupted"),
])
def test_corruption_is_refused_and_nothing_is_lost(reg, damage, match):
    s = _state()
    s["l1.weight"][0, 0] = 5
    reg.publish(s)
    before = sorted(p.relative_to(reg.root) for p in reg.root.rglob("*"))
    damage(reg.path("v1.1"))
    reg._verified.clear()
    with pytest.raises(RegistryError, match=match) as e:
        reg.set_current("v1.1")
    assert "To fix" in str(e.value)
    assert reg.current() == "v1.0"
    assert reg.rebuild("v1.0")[0]["l1.weight"][0, 0] != 5  # the base still rebuilds
    assert sorted(p.relative_to(reg.root) for p in reg.root.rglob("*")) == before or match == "is missing"
    rows = {r["version"]: r["status"] for r in reg.list()}
    if match == "is corrupted":
        assert rows["v1.1"] != "ok"
        with pytest.raises(RegistryError, match="unreadable"):
            reg.gc(keep=1)


def test_a_tensor_hash_mismatch_after_rebuild_names_the_tensor(reg):
    s = _state()
    s["l1.bias"][0] = 7
    m = reg.publish(s)
    doc = json.loads((reg.path(m.version) / "manifest.json").read_text())
    doc["tensors"]["l1.bias"]["sha256"] = "0" * 64
    (reg.path(m.version) / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="tensor 'l1.bias'"):
        reg.rebuild(m.version)


def test_diff_list_and_gc_keeps_what_kept_versions_need(reg):
    s = _state()
    for i in range(4):
        s = dict(s, **{"l1.bias": s["l1.bias"] + 1})
        reg.publish(s, parent=f"v1.{i}", metrics={"ndcg@10": 0.1 + i / 100})
    full2 = reg.publish(_state(seed=3), full=True)
    reg.set_current("v1.2")
    d = reg.diff("v1.0", "v1.2")
    assert list(d["changed"]) == ["l1.bias"] and d["params_changed"] == 16 and not d["added"]
    assert reg.gc(keep=1, dry_run=True) == ["v1.3", "v1.4"]  # v1.0-v1.2: the current one's chain; v2.0 newest
    assert reg.gc(keep=1) == ["v1.3", "v1.4"]
    assert [r["version"] for r in reg.list()] == ["v1.0", "v1.1", "v1.2", full2.version]
    assert reg.verify("v1.2").version == "v1.2"


def test_checkpoint_publish_and_materialize_roundtrip(tmp_path):
    import torch

    from edge_gr.ids import SemanticIds
    from server.data.base import Item
    from server.generative import GenerativeModel
    from server.model import GenerativeRetriever, GRConfig

    ids = SemanticIds([str(i) for i in range(12)], np.array([[i % 3, i // 3] for i in range(12)]), (3, 4))
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=12, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=8)
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(str(i), f"t{i}") for i in range(12)],
                         popularity=["1", "2"])
    gm.save(tmp_path / "ckpt")
    reg = Registry(tmp_path / "reg")
    reg.publish_checkpoint(tmp_path / "ckpt", activate=True)
    with torch.no_grad():
        gm.model.head.bias += 1
    gm.save(tmp_path / "ckpt")
    m = reg.publish_checkpoint(tmp_path / "ckpt")
    assert list(m.ops) == ["head.bias"] and set(m.files) == {DELTA}
    back = GenerativeModel.load(reg.materialize(m.version, tmp_path / "out"))
    assert torch.equal(back.model.head.bias, gm.model.head.bias)
    assert back.search(["1", "2"], k=3) == gm.search(["1", "2"], k=3)


def test_package_steps_reuse_the_chain_and_fall_back_to_a_computed_delta(reg):
    """What a bundle package carries as tensor delta (bundle_package itself runs end to end in tests/test_update.py)."""
    s = _state()
    A, B = np.ones((2, 16), np.float32), np.ones((16, 2), np.float32)
    reg.publish(s, lora={"l1.weight": (A, B, 0.5)})                                  # v1.1: LoRA
    s2, _ = reg.rebuild("v1.1")
    reg.publish(dict(s2, emb=np.concatenate([s2["emb"], s2["emb"][:3]])), parent="v1.1")  # v1.2: 3 appended rows
    known = needed = {"l1.weight", "emb", "l1.bias"}
    steps = reg._package_steps("v1.0", "v1.2", known, needed)                         # the published chain, as is
    assert [(v, sorted(o)) for v, _, o in steps] == [("v1.1", ["l1.weight"]), ("v1.2", ["emb"])]
    assert sorted(steps[0][1]) == ["l1.weight::lora_A", "l1.weight::lora_B"] and steps[1][2]["emb"]["op"] == "append_rows"
    # the device cannot read l1.weight back (not stored whole): the LoRA step cannot be applied -> one computed delta
    (v, tensors, ops), = reg._package_steps("v1.0", "v1.2", {"emb"}, needed)
    assert v == "v1.2" and ops == {"emb": {"op": "append_rows"}, "l1.weight": {"op": "replace"}, "l1.bias": {"op": "replace"}}
    back = reg._package_steps("v1.2", "v1.0", known, needed)                          # not an ancestor: computed
    assert sorted(back[0][2]) == ["emb", "l1.weight"]


def test_missing_registry_and_bad_names_say_what_to_do(tmp_path):
    with pytest.raises(RegistryError, match="no registry"):
        Registry(tmp_path / "nope", create=False)
    r = Registry(tmp_path / "r")
    with pytest.raises(BundleError, match="vMAJOR.MINOR"):
        r.manifest("latest")
    with pytest.raises(RegistryError, match="no version v9.9"):
        r.manifest("v9.9")
