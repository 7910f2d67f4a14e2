"""Compression benchmark, first cut (issue #3, in progress): post-training variants of the teacher.

Takes the teachers trained by ``bench/core.py`` (``.cache/bench_ckpts``) and measures, in
one CPU process, each variant's parameters, bytes of weight storage (int4 counted packed),
p50/p99 latency per query at 1 thread, and quality with its ratio to the fp32 teacher:

    fp32, fp16, int8 (per-channel symmetric), int4 (group 32), mixed (chapter recipe:
    embeddings fp16, attention int8, head fp16, rest int8), pruned-30 / pruned-50
    (structured FFN + head pruning by |w*grad| on 16 calibration batches)

No distillation and no recovery fine-tuning yet, so the pruned rows show the raw
damage; distilled students are the next step of #3. Quantized variants here are
weight-only fake-quant in eager PyTorch (dequantize on the fly), so their latency is not
the device latency (that is #4's ExecuTorch/ORT work).

    .venv/bin/python bench/compression.py [--bible-queries 3000]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core import _load_bible, _load_ml, _machine, STAGE  # noqa: E402
from server.compress import Fp16Config, Int4Config, Int8Config, PruneConfig, chapter_recipe, model_nbytes, prune_, quantize_  # noqa: E402
from server.evaluate import evaluate_rec, evaluate_retrieval  # noqa: E402
from server.generative import GenerativeModel  # noqa: E402
from server.io import write_json  # noqa: E402
from server.pipeline import _GenRec, _GenSearch  # noqa: E402
from server.train import rec_windows  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _calib_rec(gm: GenerativeModel, split, n: int = 16, bs: int = 32):
    row = {it: i + 1 for i, it in enumerate(gm.ids.items)}
    hist = [[row[i] for i in h if i in row] for h in list(split.train.values())[: n * bs]]
    w = rec_windows(hist, gm.model.cfg.max_len)
    rng = np.random.default_rng(0)
    w = w[rng.permutation(len(w))[: n * bs]]
    return [(torch.from_numpy(w[i:i + bs]),) for i in range(0, len(w), bs)]


def _calib_ret(gm: GenerativeModel, data, n: int = 16, bs: int = 32):
    from server.text import encode

    qs = data.train[: n * bs]
    src = encode(gm.tokenizer, [q.text for q in qs], gm.model.cfg.max_len)
    tgt = gm.ids.codes[[gm.ids.index(sorted(q.relevant)[0]) for q in qs]]
    return [(torch.from_numpy(src[i:i + bs]), torch.from_numpy(tgt[i:i + bs])) for i in range(0, len(qs), bs)]


def variants(gm: GenerativeModel, calib) -> dict[str, GenerativeModel]:
    out = {"fp32": gm}
    for name, cfg in [("fp16", Fp16Config()), ("int8", Int8Config()), ("int4", Int4Config(group_size=64)),
                      ("int4-g128", Int4Config(group_size=128)), ("mixed", chapter_recipe())]:
        v = copy.deepcopy(gm)
        quantize_(v.model, cfg)
        out[name] = v
    for amount in (0.3, 0.5):
        v = copy.deepcopy(gm)
        prune_(v.model, PruneConfig(amount=amount), calib)
        out[f"pruned-{int(amount * 100)}"] = v
    return out


def _row(gm: GenerativeModel, m: dict, base: dict | None, key: str) -> dict:
    r = {k: m[k] for k in ("recall@1", "recall@10", "ndcg@10", "mrr@10", "p50_ms", "p99_ms")}
    r["params"] = sum(p.numel() for p in gm.model.parameters()) + sum(b.numel() for n, b in gm.model.named_buffers() if "weight" in n)
    r["size_mb"] = model_nbytes(gm.model) / 1e6
    if base is not None:
        r[f"{key}_ratio"] = m[key] / base[key] if base[key] else None
    return r


def _table(models: dict[str, GenerativeModel], measure, key: str) -> dict[str, dict]:
    """One row per variant; ``key``'s ratio is taken to the first variant (the fp32 teacher)."""
    rows, base = {}, None
    for name, v in models.items():
        m = measure(name, v)
        base = base or m
        rows[name] = _row(v, m, base, key)
        print(name, json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in rows[name].items()}), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpts", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--stage-dir", default=str(STAGE))
    ap.add_argument("--bible-queries", type=int, default=3000, help="seeded subset of the WEB test queries")
    ap.add_argument("--tasks", default="rec,retrieval")
    ap.add_argument("--bible-student", default=None, help="a distilled Bible student checkpoint: adds its fp32/fp16/int8/int4/mixed rows")
    args = ap.parse_args()
    ck, d = Path(args.ckpts), Path(args.stage_dir)
    old = json.loads((RESULTS / "compression.json").read_text()) if (RESULTS / "compression.json").is_file() else {}
    res = {"machine": _machine(), "date": datetime.date.today().isoformat(),
           "note": "post-training variants of the H200-trained teachers, and (student-*) of the distilled 2x128 student; "
                   "eager fake-quant latency; data sets not in --tasks are kept from the previous run"}
    res.update({k: v for k, v in old.items() if k in ("movielens-1m", "bible")})
    if "rec" in args.tasks:
        data = _load_ml(d)
        split = data.split()
        gm = GenerativeModel.load(ck / "rec-model")
        rows = _table(variants(gm, _calib_rec(gm, split)), lambda name, v: evaluate_rec({name: _GenRec(v, 50)}, split)[name], "ndcg@10")
        res["movielens-1m"] = {"methods": rows, "protocol": "as core.json (all 6,040 users, full ranking, seen kept)"}
    if "retrieval" in args.tasks:
        data = _load_bible(d)
        rng = np.random.default_rng(0)
        queries = [data.test[i] for i in sorted(rng.choice(len(data.test), min(args.bible_queries, len(data.test)), replace=False))]
        gm = GenerativeModel.load(ck / "retrieval-model")
        models = variants(gm, _calib_ret(gm, data))
        if args.bible_student:
            st = GenerativeModel.load(args.bible_student)
            models["student-fp32"] = st
            for name, cfg in [("fp16", Fp16Config()), ("int8", Int8Config()), ("int4", Int4Config(group_size=64)),
                              ("int4-g128", Int4Config(group_size=128)), ("mixed", chapter_recipe())]:
                v = copy.deepcopy(st)
                quantize_(v.model, cfg)  # the reference quantizer, in memory
                models[f"student-{name}"] = v
        rows = _table(models, lambda name, v: evaluate_retrieval({name: _GenSearch(v, 20)}, queries)[name], "recall@10")
        res["bible"] = {"methods": rows, "protocol": f"seeded subset of {len(queries)} WEB test queries, full ranking"}
    write_json(RESULTS / "compression.json", res)
    plot(RESULTS / "compression.json")
    print(f"wrote {RESULTS / 'compression.json'}")


def plot(path: Path) -> Path:
    """Quality ratio to the fp32 teacher vs weight bytes, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(path.read_text())
    sets = [(k, "ndcg@10_ratio" if k == "movielens-1m" else "recall@10_ratio") for k in ("movielens-1m", "bible") if k in res]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4), squeeze=False)
    for ax, (k, key) in zip(axes[0], sets):
        for name, m in res[k]["methods"].items():
            ax.scatter(m["size_mb"], m[key])
            ax.annotate(name, (m["size_mb"], m[key]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0.97, ls="--", c="gray", lw=0.8)
        ax.set_xlabel("weight storage, MB")
        ax.set_ylabel(key.replace("_", " ") + " (teacher = 1)")
        ax.set_title(k)
    fig.suptitle(f"compression variants (teachers; student-*: distilled 2x128 student) - {res['date']}", fontsize=9)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    main()
