"""Diagnostic for the open #3 problem: the beam-based distillation terms lower a rec student's validation score.

CPU, 1 thread: the 2x128 ML-1M teacher (.cache/bench_ckpts/rec-model) -> a 64x1 student, KD only vs KD plus one beam term.
Measured 2026-11-26 (valid NDCG@10, 300 users): kd 0.0345/0.0457/0.0623 after 1/2/3 epochs; +negatives 0.1: 0.0116/0.0188/0.0214;
+rank 0.1: 0.0063 after 1 epoch.

    .venv/bin/python bench/distill_diag.py kd|neg|rank|seq [epochs]
"""
import sys, time, json
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import torch
torch.set_num_threads(1)
from core import _load_ml, STAGE
from server.generative import GenerativeModel
from server.compress import DistillConfig, distill
from server.model import GRConfig
from server.train import TrainConfig
split = _load_ml(STAGE).split()
t = GenerativeModel.load(ROOT / ".cache" / "bench_ckpts" / "rec-model")
which = sys.argv[1]
cfg = {"kd": DistillConfig(alpha=0.5), "neg": DistillConfig(alpha=0.5, negative_weight=0.1, rank_samples=512),
       "rank": DistillConfig(alpha=0.5, rank_weight=0.1, rank_samples=512), "seq": DistillConfig(alpha=0.5, seq_level=True, rank_samples=512)}[which]
t0 = time.time()
gm = distill(t, GRConfig(d_model=64, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=50, dropout=0.1), split, cfg,
             TrainConfig(epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 3, patience=3, eval_queries=300, beam=20, progress=False, threads=1))
print(which, json.dumps([(e["epoch"], round(e["loss"], 3), round(e.get("valid", -1), 4)) for e in gm.meta["log"]]), round(time.time() - t0), flush=True)
