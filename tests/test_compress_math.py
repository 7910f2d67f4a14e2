"""The compression math (issue #3): quantization bounds, recipes, KD losses, grouped layers. Fast."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_gr.errors import EdgeGRError, InputError, QuantizationError
from server.compress import (
    FP16_MAX, Fp16Config, Fp16Embedding, Fp16Linear, GroupedLinear, QuantEmbedding, Int4Config, Int8Config, MixedPrecisionRecipe,
    QuantLinear, calibrate_activation_ranges, chapter_recipe, dequantize, dequantize_int4_groupwise, from_linear,
    model_nbytes, pack_int4, quantize_, quantize_int4_groupwise,
    quantize_int8_symmetric, replace_linear_, unpack_int4,
)
from server.compress.distill import kd_loss, listwise_rank_loss
from server.model import GenerativeRetriever, GRConfig

N_ITEMS, LEVELS = 30, (4, 4)
SLACK = 1e-4  # float32 rounding of w / s and q * s: relative to the scale


def tiny_model(seed: int = 0, std: float = 0.2) -> GenerativeRetriever:
    """A 1+1-layer rec model, d_model=16, with weights large enough that the outputs are not uniform."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (N_ITEMS, len(LEVELS)), generator=g)
    m = GenerativeRetriever(GRConfig(task="rec", levels=LEVELS, n_items=N_ITEMS, d_model=16, n_heads=2, max_len=6,
                                     dropout=0.0, n_enc_layers=1, n_dec_layers=1), codes=codes)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                mod.weight.normal_(0, std, generator=g)
    return m.eval()


def tiny_batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(1, N_ITEMS + 1, (4, 7), generator=torch.Generator().manual_seed(seed))


def extreme_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    outlier = torch.randn(8, 64, generator=g)
    outlier[3, 5] = 1e4
    mixed = torch.randn(6, 64, generator=g)
    mixed[0] = 0.0
    mixed[1] *= 1e6
    mixed[2] *= 1e-12
    return {"random": torch.randn(16, 64, generator=g), "zeros": torch.zeros(4, 64), "huge": torch.full((4, 64), 1e6) * torch.randn(4, 64, generator=g),
            "tiny": torch.randn(4, 64, generator=g) * 1e-12, "outlier": outlier, "mixed_rows": mixed}


# -- int8 / int4 math ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(extreme_weights()))
def test_int8_per_channel_error_is_at_most_half_a_step(case):
    w = extreme_weights()[case]
    q, s = quantize_int8_symmetric(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and s.shape == (w.shape[0],)
    assert torch.isfinite(s).all() and (s > 0).all() and q.abs().max() <= 127
    err = (w - dequantize(q, s)).abs().amax(1)
    assert (err <= s * (0.5 + SLACK)).all(), (err / s).max()
    nonzero = w.abs().amax(1) > 0
    assert torch.equal(s[~nonzero], torch.ones_like(s[~nonzero]))  # all-zero channels: scale 1, no NaN
    assert torch.allclose(s[nonzero], w.abs().amax(1)[nonzero] / 127)


def test_int8_other_axis_and_bad_inputs():
    w = torch.randn(5, 3)
    q, s = quantize_int8_symmetric(w, axis=1)
    assert s.shape == (3,) and ((w - dequantize(q, s, axis=1)).abs() <= s * (0.5 + SLACK)).all()
    with pytest.raises(InputError, match="axis 2"):
        quantize_int8_symmetric(w, axis=2)
    with pytest.raises(InputError, match="floating-point"):
        quantize_int8_symmetric(torch.ones(2, 2, dtype=torch.long))
    w[0, 0] = float("nan")
    with pytest.raises(QuantizationError, match="NaN or inf"):
        quantize_int8_symmetric(w)


@pytest.mark.parametrize("case", list(extreme_weights()))
def test_int4_groupwise_error_is_at_most_half_a_step(case):
    w = extreme_weights()[case]
    q, s = quantize_int4_groupwise(w, group_size=16)
    assert q.dtype == torch.int8 and q.abs().max() <= 7 and s.shape == (w.shape[0], w.shape[1] // 16)
    err = (w - dequantize_int4_groupwise(q, s)).abs().view(w.shape[0], -1, 16).amax(-1)
    assert (err <= s * (0.5 + SLACK)).all(), (err / s).max()
    assert torch.isfinite(s).all() and (s > 0).all()


def test_int4_packed_size_and_group_size_errors():
    lin = nn.Linear(256, 256)
    q8, q4 = QuantLinear(lin, Int8Config()), QuantLinear(lin, Int4Config(group_size=128))
    assert q8.nbytes() == 256 * 256 + 256 * 4 + 256 * 4
    assert q4.nbytes() == 256 * 256 // 2 + 256 * 2 * 4 + 256 * 4
    assert q4.nbytes() <= 0.55 * q8.nbytes()
    # group_size=32 with float32 scales costs 5 bits a weight: about 0.62x int8, not <= 0.55x
    assert QuantLinear(lin, Int4Config()).nbytes() == 256 * 256 // 2 + 256 * 8 * 4 + 256 * 4
    q, _ = quantize_int4_groupwise(lin.weight, 32)
    assert pack_int4(q).numel() == q.numel() // 2 and torch.equal(unpack_int4(pack_int4(q), q.numel()).view_as(q), q)
    with pytest.raises(InputError, match="not divisible by group_size 32") as e:
        quantize_int4_groupwise(torch.randn(4, 48), group_size=32)
    assert "e.g. 16" in str(e.value)
    with pytest.raises(InputError):
        Int4Config(group_size=0)


def test_quant_linear_matches_its_dequantized_weight():
    lin = nn.Linear(32, 8)
    x = torch.randn(3, 32)
    for cfg in (Int8Config(), Int4Config(group_size=16)):
        ql = QuantLinear(lin, cfg)
        assert {n for n, _ in ql.named_buffers()} == {"qweight", "scales", "bias"} and ql.qweight.dtype == torch.int8
        assert torch.allclose(ql(x), F.linear(x, ql.dequantized_weight(), lin.bias), atol=1e-6)
        half_step = (ql.scales[:, None] if ql.bits == 8 else ql.scales.repeat_interleave(16, 1)).expand(8, 32) / 2
        bound = x.abs() @ half_step.T  # |y - y_hat| <= sum_i |x_i| * s_i / 2
        assert ((ql(x) - lin(x)).abs() <= bound * (1 + SLACK) + 1e-6).all()


# -- recipes and quantize_ ----------------------------------------------------------------------
def test_recipe_first_match_wins():
    names = [n for n, m in tiny_model().named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert {"code_in", "item_in", "pos_in", "dec_in", "level_in", "enc.0.attn.q", "dec.0.cross_attn.kv", "head", "dec.0.ffn.net.2"} <= set(names)
    r = chapter_recipe()
    got = {n: r.config_for(n).precision for n in names}
    assert got["code_in"] == got["dec_in"] == got["pos_in"] == got["head"] == "fp16"
    assert got["enc.0.attn.q"] == got["dec.0.cross_attn.kv"] == got["dec.0.self_attn.o"] == "int8"
    assert got["enc.0.ffn.net.0"] == "int8"
    early = MixedPrecisionRecipe([("*", Int8Config()), ("head", Fp16Config())])
    assert early.config_for("head").precision == "int8"  # the catch-all came first
    keep = MixedPrecisionRecipe([("*attn*", None), ("*.attn.*", Int4Config())])
    assert keep.config_for("enc.0.attn.q") is None and keep.config_for("xyz") is None
    with pytest.raises(InputError, match="bad recipe rule"):
        MixedPrecisionRecipe([("*", "int8")])


def test_quantize_tiny_model_stays_close_and_gets_smaller():
    seq = tiny_batch()
    ref = tiny_model()
    with torch.no_grad():
        loss_ref = ref(seq).item()
    for recipe in (chapter_recipe(), chapter_recipe(Int4Config(group_size=16))):
        m = tiny_model()
        report = quantize_(m, recipe)
        with torch.no_grad():
            loss_q = m(seq).item()
        assert abs(loss_q - loss_ref) / loss_ref < 0.05, (loss_q, loss_ref)
        assert report["bytes_after"] < report["bytes_before"] == model_nbytes(ref)
        assert report["bytes_after"] == model_nbytes(m)
        mods = report["modules"]
        assert mods["code_in"]["precision"] == mods["head"]["precision"] == "fp16"
        assert mods["enc.0.attn.kv"]["precision"] == "int8"
        assert mods["dec.0.ffn.net.0"]["precision"] == recipe.rules[-1][1].precision
        assert all(e["bytes"] < e["bytes_before"] for e in mods.values())
        assert isinstance(m.code_in, Fp16Embedding) and m.code_in.weight.dtype == torch.float16
        assert isinstance(m.head, Fp16Linear) and isinstance(m.enc[0].attn.q, QuantLinear)
        assert not any(isinstance(x, (nn.Linear, nn.Embedding)) for x in m.modules())
        mem, pad = m.encode(seq[:, :-1])
        assert mem.dtype == torch.float32 and torch.isfinite(mem).all()


def test_quantize_errors_leave_the_model_untouched():
    m = tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(InputError, match=r"enc\.0\.ffn\.net\.2: input size 64 is not divisible by group_size 48"):
        quantize_(m, MixedPrecisionRecipe([("*ffn.net.2", Int4Config(group_size=48))]))
    with pytest.raises(InputError, match="a config or a MixedPrecisionRecipe"):
        quantize_(m, "int8")
    after = m.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    big = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        big[0].weight.fill_(1e6)
    with pytest.raises(QuantizationError, match="0: .*fp16 range"):
        quantize_(big, Fp16Config())
    assert quantize_(big, Int8Config())["modules"]["0"]["precision"] == "int8"  # int8 scales handle it
    emb = nn.Sequential(nn.Embedding(5, 48))
    with pytest.raises(InputError, match="0: input size 48"):
        quantize_(emb, Int4Config(group_size=32))
    assert isinstance(emb[0], nn.Embedding)


@pytest.mark.parametrize("cfg", [Int8Config(), Int4Config(group_size=16)])
def test_quant_embedding_error_bound_and_lookup(cfg):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 32, padding_idx=0)
    with torch.no_grad():
        emb.weight[7] *= 1e4  # one extreme row must not hurt the others (per-row scales)
    q = QuantEmbedding(emb, cfg)
    idx = torch.arange(50)
    w_hat = q(idx)
    step = q.scales.repeat_interleave(32 // q.scales.shape[1], dim=1)
    assert (w_hat - emb.weight).abs().le(step / 2 + 1e-6 * step).all()
    assert torch.equal(q(torch.tensor([[0]])), torch.zeros(1, 1, 32))  # padding row stays zero
    assert torch.equal(q(torch.tensor([[3, 9]]))[0], w_hat[[3, 9]])
    per_weight = 1 if isinstance(cfg, Int8Config) else 0.5
    assert q.nbytes() == int(50 * 32 * per_weight) + q.scales.numel() * 4


# -- calibration ------------------------------------------------------------------------------
def test_calibration_ranges_and_nan_activations_raise():
    m = tiny_model()
    seq = tiny_batch()
    ranges = calibrate_activation_ranges(m, [(seq,), (tiny_batch(2),)])
    assert {"enc.0.attn.q", "dec.0.cross_attn.kv", "head"} <= set(ranges)
    assert all(lo <= hi for lo, hi in ranges.values())
    with pytest.raises(QuantizationError, match="beyond the limit"):
        calibrate_activation_ranges(m, [(seq,)], limit=1e-3)
    assert calibrate_activation_ranges(m, [(seq,)], limit=FP16_MAX)
    m.train()
    with torch.no_grad():
        m.code_in.weight[1:] = float("nan")
    with pytest.raises(QuantizationError, match=r"non-finite activation \(NaN/inf\) entering 'enc\.0\.attn\.q' in batch 0") as e:
        calibrate_activation_ranges(m, [(seq,)])
    assert isinstance(e.value, EdgeGRError) and m.training  # mode restored
    assert not any(mod._forward_pre_hooks for mod in m.modules())  # hooks removed


# -- distillation losses ----------------------------------------------------------------------
def test_kd_loss_by_hand_on_two_classes():
    T, alpha = 2.0, 0.5
    student = torch.tensor([[0.0, 0.0]])  # p_S = (1/2, 1/2) at any temperature
    teacher = torch.tensor([[2 * math.log(3), 0.0]])  # at T=2: p_T = (3/4, 1/4)
    target = torch.tensor([0])
    ce = math.log(2)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    expected = alpha * ce + (1 - alpha) * T * T * kl
    assert kd_loss(student, teacher, target, alpha, T).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_limits_and_masking():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    y = torch.randint(0, 7, (3, 5), generator=g)
    ce = F.cross_entropy(s.reshape(-1, 7), y.reshape(-1))
    assert kd_loss(s, t, y, alpha=1.0).item() == pytest.approx(ce.item(), rel=1e-6)
    T = 3.0
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="none").sum(-1).mean()
    assert kd_loss(s, t, y, alpha=0.0, temperature=T).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    assert kd_loss(s, t, None, alpha=0.0, temperature=T).item() == pytest.approx(T * T * kl.item(), rel=1e-5)
    assert kd_loss(s, s, y, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, :2] = True
    y_ign = y.clone()
    y_ign[1:] = -100
    y_ign[0, 2:] = -100
    want = kd_loss(s[0, :2], t[0, :2], y[0, :2]).item()
    assert kd_loss(s, t, y, mask=mask).item() == pytest.approx(want, rel=1e-6)
    assert kd_loss(s, t, y_ign).item() == pytest.approx(want, rel=1e-6)
    s_req = s.clone().requires_grad_()
    t_req = t.clone().requires_grad_()
    kd_loss(s_req, t_req, y).backward()
    assert s_req.grad is not None and t_req.grad is None  # teacher is detached
    for bad in (dict(alpha=1.5), dict(temperature=0.0)):
        with pytest.raises(InputError):
            kd_loss(s, t, y, **bad)
    with pytest.raises(InputError, match="needs a target"):
        kd_loss(s, t, None)


def test_listwise_rank_loss_is_minimal_for_the_teachers_order():
    teacher = torch.tensor([[4.0, 2.0, 1.0, 0.5, -1.0], [0.0, 3.0, 1.0, 2.0, -2.0]])
    p = F.softmax(teacher, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    same = listwise_rank_loss(teacher, teacher)
    assert same.item() == pytest.approx(entropy.item(), rel=1e-6)
    assert listwise_rank_loss(teacher + 5.0, teacher).item() == pytest.approx(entropy.item(), rel=1e-6)  # shift-invariant
    order = teacher.argsort(-1)
    reversed_scores = torch.empty_like(teacher).scatter_(-1, order, teacher.sort(-1, descending=True).values)
    assert listwise_rank_loss(reversed_scores, teacher) > same + 0.1
    # top-k: only the teacher's 2 best count, so junk elsewhere is free
    student = teacher.clone()
    student[0, 2:] = torch.tensor([100.0, -50.0, 7.0])
    top2 = teacher.topk(2, -1).values
    p2 = F.softmax(top2, -1)
    assert listwise_rank_loss(student, teacher, top_k=2).item() == pytest.approx(-(p2 * p2.log()).sum(-1).mean().item(), rel=1e-6)
    assert listwise_rank_loss(teacher, teacher, temperature=0.5) < listwise_rank_loss(teacher, teacher, temperature=2.0)


# -- grouped linear ---------------------------------------------------------------------------
def test_grouped_linear_parameter_count():
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(nn.Linear(768, 768)) == 590_592
    g = GroupedLinear(768, 768, groups=8)
    assert g.weight.numel() == 73_728 and g.bias.numel() == 768 and count(g) == 74_496
    with pytest.raises(InputError, match="divisible by groups=5"):
        GroupedLinear(768, 768, groups=5)


def test_from_linear_is_exact_on_a_block_diagonal_weight():
    g = torch.Generator().manual_seed(0)
    dense = nn.Linear(12, 6)
    with torch.no_grad():
        dense.weight.copy_(torch.block_diag(*[torch.randn(2, 4, generator=g) for _ in range(3)]))
    x = torch.randn(2, 5, 12, generator=g)
    grouped = from_linear(dense, 3)
    assert torch.allclose(grouped(x), dense(x), atol=1e-6)
    assert torch.equal(grouped.dense_weight(), dense.weight.detach())
    shuffled = from_linear(dense, 3, shuffle=True)
    assert torch.allclose(shuffled(x), F.linear(x, shuffled.dense_weight(), shuffled.bias), atol=1e-6)
    assert not torch.allclose(shuffled(x), dense(x))


def test_replace_linear_keeps_the_models_shapes():
    m = tiny_model()
    seq = tiny_batch()
    mem0, pad = m.encode(seq[:, :-1])
    prefix = torch.zeros(4, 3, 2, dtype=torch.long)
    shape0 = m.decode(mem0, pad, prefix).shape
    names = replace_linear_(m, "*ffn.net.*", groups=4)
    assert names == ["enc.0.ffn.net.0", "enc.0.ffn.net.2", "dec.0.ffn.net.0", "dec.0.ffn.net.2"]
    assert all(isinstance(m.get_submodule(n), GroupedLinear) for n in names)
    mem, pad = m.encode(seq[:, :-1])
    assert mem.shape == mem0.shape and m.decode(mem, pad, prefix).shape == shape0
    assert torch.isfinite(m(seq))
    with pytest.raises(InputError, match="head: .*divisible by groups=3"):
        replace_linear_(m, "head", groups=3)
