"""The compression pipeline end to end on tiny data: retrieval distillation, hard negatives, named
variants that save and reload, progressive pruning with recovery, and the ``edge-gr compress`` CLI."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_model import ret_model, rec_model  # noqa: E402,F401  (fixtures)

from edge_gr.errors import InputError  # noqa: E402
from server.cli import main  # noqa: E402
from server.compress.distill import DistillConfig, Distiller, distill, hard_negative_loss, teacher_beams  # noqa: E402
from server.compress.variants import CompressConfig, compress, reference_model  # noqa: E402
from server.generative import GenerativeModel  # noqa: E402
from server.model import GRConfig  # noqa: E402
from server.train import TrainConfig  # noqa: E402

FAST = dict(batch_size=32, lr=5e-3, eval_queries=40, beam=10, progress=False, warmup_steps=10)


def test_hard_negative_loss_by_hand():
    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    expect = (np.log(np.e + 1 + np.e) - 1 + np.log(3)) / 2
    assert abs(hard_negative_loss(pos, neg).item() - expect) < 1e-6
    # a beam equal to the true ID is not a negative
    is_pos = torch.tensor([[False, True], [False, False]])
    expect2 = (np.log(np.e + 1) - 1 + np.log(3)) / 2
    assert abs(hard_negative_loss(pos, neg, is_pos).item() - expect2) < 1e-6


def test_negative_skip_is_checked_and_drops_the_first_beams():
    with pytest.raises(InputError, match="negative_skip"):
        DistillConfig(negative_weight=0.1, negative_skip=10, rank_k=10)
    pos, neg = torch.tensor([0.0]), torch.tensor([[5.0, 0.0]])
    # skipping the first beam leaves one equal-scored negative: log 2
    assert abs(hard_negative_loss(pos, neg[:, 1:]).item() - np.log(2)) < 1e-6


def recall(gm, data) -> float:
    ranked = gm.search_many([q.text for q in data.test], 10, beam=10)
    return float(np.mean([bool(q.relevant & {i for i, _ in r}) for q, r in zip(data.test, ranked)]))


def test_retrieval_distillation_with_all_terms(ret_model):
    t, data = ret_model
    cfg = DistillConfig(alpha=0.5, hidden_weight=0.5, rank_weight=0.5, seq_level=True, negative_weight=0.5, rank_k=4, rank_samples=20, rank_batch=8)
    src, cand, scores, tgt = teacher_beams(t, [q.text for q in data.train], 4, 10, targets=[sorted(q.relevant)[0] for q in data.train])
    L = len(t.ids.levels)
    assert cand.shape == (len(src), 4, L) and tgt.shape == (len(src), L)
    gm = distill(t, GRConfig(d_model=16, n_heads=2, dropout=0.0, n_enc_layers=1, n_dec_layers=1), data, cfg,
                 TrainConfig(epochs=40, patience=40, batch_size=16, **{k: v for k, v in FAST.items() if k != "batch_size"}))
    assert gm.model.n_params() < t.model.n_params() and gm.tokenizer is t.tokenizer
    assert gm.meta["n_beam_inputs"] > 0
    assert recall(gm, data) >= 0.9 * recall(t, data) > 0.5
    net = Distiller(t.model, gm.model, cfg)
    loss = net(*[torch.as_tensor(x) for x in (src[:4], t.ids.codes[:4].astype(np.int64))], src[:4], cand[:4], scores[:4], tgt[:4])
    assert torch.isfinite(loss)


def outputs(gm: GenerativeModel, histories) -> list:
    return [[i for i, _ in r] for r in gm.rank(histories, 5, beam=10)]


def test_named_variants_save_reload_and_keep_quality(rec_model, tmp_path):
    t, split, _ = rec_model
    cfg = CompressConfig(student=GRConfig(d_model=16, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                         distill=DistillConfig(alpha=0.5, rank_weight=0.5, seq_level=True, negative_weight=0.5, rank_k=5, rank_samples=64, rank_batch=16),
                         train=TrainConfig(epochs=40, patience=40, **FAST),
                         recover=TrainConfig(epochs=4, patience=4, **FAST), int4_group_size=8, groups=2, prune_step=0.25)
    names = ["fp32", "fp16", "int8", "int4", "mixed", "pruned-50", "grouped"]
    variants, report = compress(t, split, names, cfg, out_dir=tmp_path)
    assert list(report["variants"]) == names and (tmp_path / "report.json").is_file()
    b = report["variants"]
    assert b["int8"]["bytes"] < b["fp16"]["bytes"] < b["fp32"]["bytes"] and b["int4"]["bytes"] < b["int8"]["bytes"]
    assert b["pruned-50"]["params"] < b["fp32"]["params"] and b["grouped"]["params"] < b["fp32"]["params"]
    assert len(variants["pruned-50"].meta["compress"]["rounds"]) == 2  # 0.25 steps to 0.5
    hist = [split.test_history(u) for u in list(split.test_target)[:20]]
    for name in names:
        re = GenerativeModel.load(tmp_path / name)
        assert outputs(re, hist) == outputs(variants[name], hist), name
    users = list(split.test_target)
    # quantized variants are fp32 weights + a recipe; their quality is checked with the reference quantizer
    assert variants["int8"].recipe.precision == "int8" and variants["fp32"].recipe is None
    hits = {n: np.mean([split.test_target[u] in [i for i, _ in r]
                        for u, r in zip(users, reference_model(v).rank([split.test_history(u) for u in users], 10, beam=10))])
            for n, v in variants.items()}
    assert hits["fp32"] > 0.6 and hits["int8"] >= 0.9 * hits["fp32"] and hits["pruned-50"] >= 0.6 * hits["fp32"], hits


def test_cli_compress_and_bad_variant(rec_model, tmp_path, capsys):
    t, split, _ = rec_model
    t.save(tmp_path / "teacher")
    data = tmp_path / "data"
    from server.data.jsonl import write_interactions, write_items
    from test_model import toy_rec

    d = toy_rec()
    write_items(data / "items.jsonl", d.items)
    write_interactions(data / "interactions.jsonl", d.sequences)
    assert main(["compress", "--checkpoint", str(tmp_path / "teacher"), "--data", str(data), "--out", str(tmp_path / "v"),
                 "--variants", "fp32,bogus"]) == 2
    assert "unknown variants ['bogus']" in capsys.readouterr().err
    assert main(["compress", "--checkpoint", str(tmp_path / "teacher"), "--data", str(data), "--out", str(tmp_path / "v"),
                 "--variants", "fp32,int8", "--student", "16x1", "--epochs", "2", "--eval-queries", "20"]) == 0
    out = capsys.readouterr().out
    assert "int8" in out and (tmp_path / "v" / "int8" / "model.safetensors").is_file()
    re = GenerativeModel.load(tmp_path / "v" / "int8")
    assert re.recipe.precision == "int8" and (tmp_path / "v" / "int8" / "recipe.json").is_file()
    assert all(p.dtype == torch.float32 for p in re.model.state_dict().values() if p.is_floating_point())
    # the compressed student reaches a bundle: its fp32 weights quantized by the backend, recorded as the variant's source
    assert main(["export", "--checkpoint", str(tmp_path / "teacher"), "--source", f"student={tmp_path / 'v' / 'int8'}",
                 "--out", str(tmp_path / "b"), "--variants", "onnxruntime:fp32,onnxruntime:int8@student"]) == 0
    from edge_gr.bundle import load_manifest

    by = {v.name: v for v in load_manifest(tmp_path / "b").variants}
    assert by["onnxruntime-int8"].source["name"] == "student" and by["onnxruntime-fp32"].source["name"] == "model"
    assert by["onnxruntime-int8"].source["params"] == re.model.n_params() and by["onnxruntime-int8"].recipe["precision"] == "int8"
    assert main(["export", "--checkpoint", str(tmp_path / "teacher"), "--source", f"student={tmp_path / 'v' / 'int8'}",
                 "--out", str(tmp_path / "b2"), "--variants", "onnxruntime:fp32@student"]) == 2  # its recipe is int8
    assert "carries a int8 recipe" in capsys.readouterr().err
