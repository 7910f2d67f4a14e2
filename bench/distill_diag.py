"""Diagnostic of #3's finding: the beam-based distillation terms lower a rec student's quality.

CPU: the 2x128 ML-1M teacher (.cache/bench_ckpts/rec-model) -> a 64x1 student, 150 AdamW steps of
128 windows (same Distiller and beam attachment as ``distill``), then NDCG@10 on the validation
targets of 200 users. Measured 2026-11-26 on the 2-core CPU:

    kd 0.0519 | + rank 0.1: 0.0480 | + rank 1.0: 0.0382 | + sequence-level: 0.0337 | + hard negatives 0.1: 0.0135
    (those with the teacher's top 10 beams; with its top 30: negatives 0.1 = 0.0278, negatives from ranks 11-30 = 0.0319)

All parameters stay finite; the training-time candidate scores equal the decoded beam scores
(checked separately, max difference 2.4e-7). Reading: in leave-one-out recommendation the
teacher's top beams are mostly plausible next items, so treating them as negatives demotes good
recommendations (false negatives by construction); the rank and sequence-level terms pull the
student towards a few beams of a small fixed sample of histories and slow the token-level learning.

    .venv/bin/python bench/distill_diag.py [kd rank0.1 rank1 neg0.1 seq]
"""
import sys, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import numpy as np, torch
torch.set_num_threads(2)
from core import _load_ml, STAGE
from server.generative import GenerativeModel
from server.compress import DistillConfig, Distiller, teacher_beams
from server.compress.distill import _attach_beams
from server.model import GRConfig, GenerativeRetriever
from server.train import rec_windows
from server.metrics import rank_metrics
split = _load_ml(STAGE).split()
t = GenerativeModel.load(ROOT / ".cache" / "bench_ckpts" / "rec-model")
ids = t.ids
row = {it: i + 1 for i, it in enumerate(ids.items)}
W = rec_windows([[row[i] for i in h] for h in split.train.values()], 50)
users = [u for u in split.train if len(split.train[u]) >= 2]
rng = np.random.default_rng(1)
pick = sorted(rng.choice(len(users), 512, replace=False))
B = teacher_beams(t, [split.train[users[i]][:-1] for i in pick], 30, 30, targets=[split.train[users[i]][-1] for i in pick])
B = (B[0][:, -50:],) + B[1:]
ev = users[:200]
def run(cfg, steps=150):
    torch.manual_seed(0)
    c = GRConfig(task="rec", levels=ids.levels, n_items=len(ids), d_model=64, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=50, dropout=0.1)
    s = GenerativeRetriever(c, codes=torch.from_numpy(ids.codes))
    net = Distiller(t.model, s, cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    mb = _attach_beams(lambda e: [(torch.from_numpy(W[o:o + 128]),) for o in np.random.default_rng(e).permutation(len(W))[:steps * 128:128]], B if cfg.uses_beams else None, cfg, 0)
    s.train()
    for i, b in enumerate(mb(0)[:steps]):
        loss = net(*b); opt.zero_grad(); loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if i % 50 == 0: print(" step", i, round(loss.item(), 3), "gnorm", round(float(gn), 3), flush=True)
    gm = GenerativeModel(s, ids, t.items)
    r = gm.rank([split.train[u] for u in ev], 10, beam=20)
    return rank_metrics([[i for i, _ in x] for x in r], [{split.valid_target[u]} for u in ev])["ndcg@10"], all(torch.isfinite(p).all() for p in s.parameters())
CONFIGS = {"kd": DistillConfig(alpha=0.5), "rank0.1": DistillConfig(alpha=0.5, rank_weight=0.1),
           "rank1": DistillConfig(alpha=0.5, rank_weight=1.0), "neg0.1": DistillConfig(alpha=0.5, negative_weight=0.1),
           "seq": DistillConfig(alpha=0.5, seq_level=True),
           "neg0.1-skip10": DistillConfig(alpha=0.5, negative_weight=0.1, negative_skip=10, rank_k=30)}
for name in sys.argv[1:] or CONFIGS:
    cfg = CONFIGS[name]
    t0 = time.time(); print(name, run(cfg), round(time.time() - t0), flush=True)
