"""Incremental updates: grown models, EWC, LoRA deltas that rebuild bit-exactly through the registry, replay."""

import numpy as np
import pytest
import torch

from edge_gr.delta import tensor_sha256
from edge_gr.ids import SemanticIds
from server.data.base import Item
from server.generative import GenerativeModel
from server.incremental import (ReplayBuffer, UpdateConfig, ewc_penalty, fisher_diagonal, grow_rec_model, update_model)
from server.incremental_ids import assign_new_ids, with_headroom
from server.model import GenerativeRetriever, GRConfig
from server.registry import Registry, state_from_torch
from server.semantic_ids import build_ids
from server.train import rec_windows


def _base(n=40, seed=0):
    X = np.random.default_rng(seed).normal(size=(n + 6, 4)).astype(np.float32)
    ids = with_headroom(build_ids([str(i) for i in range(n)], X[:n], levels=(4, 4), seed=0), 4)
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=n, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=8, dropout=0.0)
    torch.manual_seed(seed)
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(str(i), str(i)) for i in range(n)])
    return gm, X


def _batches(rows, max_len=8, bs=8):
    w = rec_windows(rows, max_len)
    return lambda epoch: [(torch.from_numpy(w[s:s + bs]),) for s in range(0, len(w), bs)]


def _grown(gm, X):
    new_ids, _ = assign_new_ids(gm.ids, X[:40], [f"n{i}" for i in range(6)], X[40:])
    return grow_rec_model(gm, new_ids, [Item(f"n{i}", "") for i in range(6)])


def test_growing_keeps_old_rows_and_old_outputs():
    gm, X = _base()
    g = _grown(gm, X)
    assert g.model.item_in.weight.shape[0] == 47 and len(g.ids) == 46
    assert torch.equal(g.model.item_in.weight[:41], gm.model.item_in.weight)
    src = torch.randint(1, 41, (3, 8))
    with torch.no_grad():
        a, b = gm.model.encode(src)[0], g.model.encode(src)[0]
    assert torch.equal(a, b)


def test_ewc_penalty_is_zero_at_the_anchor_and_free_for_new_rows():
    gm, X = _base()
    old = _batches([[1 + (i + j) % 40 for j in range(9)] for i in range(16)])(0)
    F = fisher_diagonal(gm.model, old[:2])
    total = sum(f.sum() for f in F.values()) / sum(f.numel() for f in F.values())
    assert abs(float(total) - 1.0) < 1e-4
    anchor = {n: p.detach().clone() for n, p in gm.model.named_parameters()}
    assert float(ewc_penalty(gm.model, F, anchor)) == 0.0
    g = _grown(gm, X)
    with torch.no_grad():
        g.model.item_in.weight[41:] += 5.0  # new rows move: free
    assert float(ewc_penalty(g.model, F, anchor)) == 0.0
    with torch.no_grad():
        g.model.head.weight += 0.1
    assert float(ewc_penalty(g.model, F, anchor)) > 0


@pytest.mark.parametrize("method", ["naive", "replay", "ewc", "replay+ewc", "lora"])
def test_every_method_learns_new_items_and_leaves_old_rows_alone(method):
    gm, X = _base()
    g = _grown(gm, X)
    new_rows = [[1 + (i % 40), 41 + (i % 6), 1 + ((i + 1) % 40), 41 + ((i + 1) % 6)] * 2 for i in range(24)]
    old_rows = [[1 + (i + j) % 40 for j in range(9)] for i in range(24)]
    cfg = UpdateConfig(method=method, epochs=2, lr=3e-3, lora_r=2)
    before = g.model.rec_loss(torch.from_numpy(rec_windows(new_rows, 8))).item()
    up, info = update_model(g, _batches(new_rows), cfg, replay_batches=_batches(old_rows), old_batches=_batches(old_rows)(0), n_old_items=40)
    assert up.model.rec_loss(torch.from_numpy(rec_windows(new_rows, 8))).item() < before
    assert torch.equal(up.model.item_in.weight[:41], g.model.item_in.weight[:41])
    assert info["steps"] > 0 and info["seconds"] > 0 and (("lora" in info) == (method == "lora"))


def test_a_lora_update_published_as_a_delta_rebuilds_the_trained_model_bit_for_bit(tmp_path):
    gm, X = _base()
    reg = Registry(tmp_path / "reg")
    reg.publish(state_from_torch(gm.model.state_dict()), full=True)
    g = _grown(gm, X)
    rows = [[1 + (i % 40), 41 + (i % 6)] * 4 for i in range(16)]
    up, info = update_model(g, _batches(rows), UpdateConfig(method="lora", epochs=1, lora_r=2),
                            replay_batches=_batches(rows), n_old_items=40)
    m = reg.publish(state_from_torch(up.model.state_dict()), lora=info["lora"])
    assert {o["op"] for o in m.ops.values()} == {"lora", "append_rows"}
    assert set(k for k, o in m.ops.items() if o["op"] == "append_rows") == {"item_codes", "item_in.weight"}
    state, _ = reg.rebuild(m.version)
    trained = state_from_torch(up.model.state_dict())
    assert all(tensor_sha256(state[k]) == tensor_sha256(trained[k]) for k in trained)


def test_replay_buffer_is_a_uniform_reservoir():
    counts = np.zeros(100)
    for s in range(200):
        b = ReplayBuffer(10, seed=s)
        b.extend(range(100))
        counts[b.items] += 1
    assert len(b) == 10 and b.seen == 100
    assert counts[:50].sum() == pytest.approx(counts[50:].sum(), rel=0.2)


def test_unknown_method_says_what_to_do():
    from edge_gr.errors import InputError

    with pytest.raises(InputError, match="use one of"):
        UpdateConfig(method="magic")


def test_stream_pipeline_buffers_updates_validates_and_publishes_deltas(tmp_path):
    from server.incremental import StreamPipeline

    gm, X = _base()
    reg = Registry(tmp_path / "reg")
    reg.publish(state_from_torch(gm.model.state_dict()), full=True, activate=True)
    state = {"gm": gm, "n": 0}
    emb = {f"n{i}": X[40 + i] for i in range(6)}

    def update(batch):
        cur = state["gm"]
        old_rows = np.stack([X[int(i)] if not i.startswith("n") else emb[i] for i in cur.ids.items])
        ids, _ = assign_new_ids(cur.ids, old_rows, batch, np.stack([emb[i] for i in batch]))
        g = grow_rec_model(cur, ids, [Item(i, "") for i in batch])
        rows = [[1 + (j % 40), len(cur.ids) + 1 + (j % len(batch))] * 3 for j in range(8)]
        up, info = update_model(g, _batches(rows), UpdateConfig(method="lora", epochs=1, lora_r=2), replay_batches=_batches(rows),
                                n_old_items=len(cur.ids))
        return up, info

    def publish(cand, metrics):
        up, info = cand
        reg.publish(state_from_torch(up.model.state_dict()), lora=info["lora"], metrics=metrics, activate=True)
        state["gm"] = up

    p = StreamPipeline(3, update=update, validate=lambda c: {"n_items": len(c[0].ids)}, accept=lambda m: m["n_items"] > 40,
                       publish=publish)
    p.push(["n0", "n1"])
    assert p.published == 0 and p.pending == ["n0", "n1"]
    p.push(["n2", "n3", "n4", "n5"])
    assert p.published == 2 and not p.pending
    assert [r["version"] for r in reg.list()] == ["v1.0", "v1.1", "v1.2"] and reg.current() == "v1.2"
    assert reg.rebuild("v1.2")[0]["item_in.weight"].shape[0] == 47
