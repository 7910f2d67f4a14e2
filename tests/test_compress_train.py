"""Compression that trains or reshapes the model (issue #3): distillation and structured pruning, on toy data."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_model import toy_ids, toy_rec  # noqa: E402

from server.compress import PruneConfig, layer_sensitivity, prune_  # noqa: E402
from server.compress.distill import DistillConfig, RecDistiller, distill, listwise_rank_loss, teacher_beams  # noqa: E402
from server.model import GenerativeRetriever, GRConfig  # noqa: E402
from server.train import TrainConfig, rec_windows, train_rec  # noqa: E402

FAST = dict(batch_size=32, lr=5e-3, eval_queries=40, beam=10, progress=False, warmup_steps=10)


@pytest.fixture(scope="module")
def teacher():
    d = toy_rec()
    split = d.split()
    gm, _ = train_rec(split, d.items, toy_ids(), GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                      TrainConfig(epochs=25, patience=25, **FAST))
    return gm, split


def student_cfg() -> GRConfig:
    return GRConfig(d_model=16, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=1)


def hit_rate(gm, split) -> float:
    users = list(split.test_target)
    ranked = gm.rank([split.test_history(u) for u in users], 10, beam=10)
    return float(np.mean([split.test_target[u] in [i for i, _ in r] for u, r in zip(users, ranked)]))


@pytest.fixture(scope="module")
def student(teacher):
    t, split = teacher
    cfg = DistillConfig(alpha=0.5, temperature=2.0, hidden_weight=0.5, rank_weight=0.5, seq_level=True, rank_k=5, rank_samples=64, rank_batch=16)
    gm = distill(t, student_cfg(), split, cfg, TrainConfig(epochs=60, patience=60, **FAST))
    return gm, cfg


def test_distilled_student_learns_the_pattern(teacher, student):
    t, split = teacher
    gm, _ = student
    assert gm.model.n_params() < t.model.n_params()
    assert gm.model.cfg.d_model == 16 and gm.ids is t.ids
    assert hit_rate(gm, split) > 0.6
    assert gm.meta["n_beam_inputs"] > 0 and gm.meta["log"]


def test_alpha_one_no_hidden_equals_plain_ce(teacher):
    t, split = teacher
    ids = t.ids
    s = student_cfg()
    s.task, s.n_items, s.levels = "rec", len(ids), ids.levels
    stu = GenerativeRetriever(s, codes=torch.from_numpy(ids.codes)).eval()
    net = RecDistiller(t.model, stu, DistillConfig(alpha=1.0, hidden_weight=0.0))
    row = {it: i + 1 for i, it in enumerate(ids.items)}
    seq = torch.from_numpy(rec_windows([[row[i] for i in h] for h in split.train.values()], 12)[:16])
    torch.testing.assert_close(net(seq), stu.rec_loss(seq))
    soft = RecDistiller(t.model, stu, DistillConfig(alpha=0.5, hidden_weight=1.0))
    assert not torch.isclose(soft(seq), stu.rec_loss(seq))
    assert isinstance(soft.proj, torch.nn.Linear) and not any(p is q for p in soft.parameters() for q in t.model.parameters())


def test_rank_loss_decreases_after_distillation(teacher, student):
    t, split = teacher
    gm, cfg = student
    hist, cand, scores = teacher_beams(t, [h[:-1] for h in split.train.values()][:64], 5, 10)  # the inputs the rank term samples
    assert cand.shape == (len(hist), 5, len(t.ids.levels)) and (scores[:, :-1] >= scores[:, 1:]).all()
    torch.manual_seed(0)
    fresh = GenerativeRetriever(gm.model.cfg, codes=torch.from_numpy(t.ids.codes)).eval()
    with torch.no_grad():
        before = RecDistiller(t.model, fresh, cfg).rank_loss(hist, cand, scores)
        after = RecDistiller(t.model, gm.model, cfg).rank_loss(hist, cand, scores)
    floor = listwise_rank_loss(scores, scores, cfg.temperature)  # entropy of the teacher's list distribution
    assert after - floor < 0.8 * (before - floor), (before, after, floor)


# -- structured pruning ---------------------------------------------------------------------------
def tiny(seed: int = 0) -> GenerativeRetriever:
    torch.manual_seed(seed)
    ids = toy_ids()
    return GenerativeRetriever(GRConfig(task="rec", levels=ids.levels, n_items=len(ids), d_model=16, n_heads=4, max_len=6, dropout=0.0,
                                        n_enc_layers=1, n_dec_layers=2), codes=torch.from_numpy(ids.codes)).eval()


def calib(n: int = 2) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randint(1, 31, (8, 7), generator=g),) for _ in range(n)]


def outputs(m: GenerativeRetriever, seq: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        mem, pad = m.encode(seq[:, :-1])
        return m.decode(mem, pad, torch.zeros(seq.shape[0], 2, 2, dtype=torch.long))


def test_prune_shapes_and_param_count():
    m, d = tiny(), 16
    rep = prune_(m, PruneConfig(amount=0.5), calib())
    units = rep["units"]
    assert set(units) == {"enc.0.attn", "enc.0.ffn", "dec.0.self_attn", "dec.0.cross_attn", "dec.0.ffn",
                          "dec.1.self_attn", "dec.1.cross_attn", "dec.1.ffn"}
    expect = 0
    for n, u in units.items():
        gone = u["before"] - u["after"]
        assert u["after"] == u["before"] // 2 and len(u["removed"]) == gone
        expect += gone * (2 * d + 1) if n.endswith("ffn") else gone * 4 * (4 * d + 3)  # hs = 4
    assert rep["params_before"] - rep["params_after"] == expect == rep["params_before"] - m.n_params()
    assert m.enc[0].attn.nh == 2 and m.dec[1].ffn.net[2].in_features == 32 and m.cfg.layer_shapes["dec.1.cross_attn"] == [2, 4]
    seq = calib(1)[0][0]
    assert torch.isfinite(outputs(m, seq)).all() and torch.isfinite(m(seq))


def test_prune_amount_zero_is_identity_and_protect_per_layer():
    m, seq = tiny(), calib(1)[0][0]
    ref = outputs(m, seq)
    rep = prune_(m, PruneConfig(amount=0.0), calib())
    assert rep["params_after"] == rep["params_before"]
    torch.testing.assert_close(outputs(m, seq), ref, rtol=0, atol=0)
    m2 = tiny()
    rep = prune_(m2, PruneConfig(amount=0.5, protect=["dec.*"], per_layer={"enc.0.ffn": 0.25}, steps=2), calib())
    assert all(u["after"] == u["before"] for n, u in rep["units"].items() if n.startswith("dec."))
    assert rep["units"]["enc.0.ffn"]["after"] == 48 and rep["units"]["enc.0.attn"]["after"] == 2


def test_importance_removes_a_zeroed_channel_and_head():
    m = tiny()
    with torch.no_grad():
        ffn = m.dec[0].ffn.net
        ffn[0].weight[17].zero_(); ffn[0].bias[17].zero_(); ffn[2].weight[:, 17].zero_()
        att = m.enc[0].attn  # head 2 of 4, hs 4
        for lin in (att.q, att.kv):
            lin.weight[8:12].zero_(); lin.bias[8:12].zero_()
        att.kv.weight[24:28].zero_(); att.kv.bias[24:28].zero_(); att.o.weight[:, 8:12].zero_()
    rep = prune_(m, PruneConfig(amount=1 / 64, targets=("ffn",)), calib())
    assert rep["units"]["dec.0.ffn"]["removed"] == [17]
    rep = prune_(m, PruneConfig(amount=0.25, targets=("heads",)), calib())
    assert rep["units"]["enc.0.attn"]["removed"] == [2]


def test_prune_teacher_ffn_30pct_and_sensitivity(teacher):
    t, split = teacher
    import copy

    m = copy.deepcopy(t.model)
    row = {it: i + 1 for i, it in enumerate(t.ids.items)}
    w = torch.from_numpy(rec_windows([[row[i] for i in h] for h in split.train.values()], 12))
    batches = [(w[:32],), (w[32:64],)]
    rep = prune_(m, PruneConfig(amount=0.3, targets=("ffn",)), batches)
    assert m.n_params() < t.model.n_params() and rep["units"]["enc.0.ffn"]["after"] == 90
    with torch.no_grad():
        assert torch.isfinite(m(*batches[0]))
    sens = layer_sensitivity(t.model, batches, 0.5)
    assert set(sens) == set(rep["units"]) | {"enc.0.attn", "dec.0.self_attn", "dec.0.cross_attn"}
    assert all(np.isfinite(v) for v in sens.values())


def test_pruned_checkpoint_roundtrip(teacher, tmp_path):
    import copy

    from server.generative import GenerativeModel

    t, split = teacher
    gm = copy.deepcopy(t)
    row = {it: i + 1 for i, it in enumerate(t.ids.items)}
    w = torch.from_numpy(rec_windows([[row[i] for i in h] for h in split.train.values()], 12))[:32]
    prune_(gm.model, PruneConfig(amount=0.4, per_layer={"dec.0.cross_attn": 0.5}), [(w,)])
    back = GenerativeModel.load(gm.save(tmp_path / "pruned"))
    assert back.model.cfg.layer_shapes == gm.model.cfg.layer_shapes and back.model.dec[0].cross_attn.nh == 1
    torch.testing.assert_close(outputs(back.model, w), outputs(gm.model, w), rtol=0, atol=0)
    h = split.test_history("u0")
    assert back.search(h, 5) == gm.search(h, 5)
