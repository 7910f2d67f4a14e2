"""Core benchmark: the generative model against the peers a user would pick instead.

Writes ``bench/results/core.json``::

    {"machine", "date", "movielens-1m": {"methods": {NAME: {recall@1, recall@10, ndcg@10, mrr@10,
     p50_ms, p99_ms, params, size_mb, [seeds, std, train_examples_per_s, gpu_minutes]}}, "comparison": ...},
     "bible": {...}}

Trained methods carry ``seeds`` (per-seed results); their main keys are the mean over
seeds. Full-size training wants a GPU, so the job is split into stages that run the
same code on either machine:

    python bench/core.py stage                                # here: data -> JSONL.gz folders + semantic IDs
    python bench/core.py train-rec --seed 0 --variant base --device cuda --out CK
    python bench/core.py train-sasrec --seed 0 --device cuda --out CK
    python bench/core.py train-retrieval --seed 0 --device cuda --out CK [--docs-only]
    python bench/core.py finetune-dense --device cuda --out CK
    python bench/core.py eval --tasks rec,retrieval --ckpts CK   # every method on the same test queries, one process
    python bench/core.py merge A.json B.json [--patch P.json]   # sections evaluated elsewhere -> bench/results/core.json
    bench/gpu_rec.sh / bench/gpu_retrieval.sh                    # the GPU runs as made for this table (parallel seeds)

Settings are picked on validation data only: the rec variant with the best mean
validation NDCG@10 over its seeds is the one evaluated on the test targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from server.pipeline import REC_PRESETS, RETRIEVAL_PRESETS  # noqa: E402

STAGE = ROOT / ".cache" / "bench_stage"
RESULTS = ROOT / "bench" / "results"
# Rec variants tried (each with every seed); the best mean validation NDCG@10 is evaluated on test.
REC_VARIANTS = {
    "base": {},
    "ema": {"train": {"ema": 0.999}},
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPU cores{gpu}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


# -- stage ----------------------------------------------------------------------------
def stage(args) -> None:
    """The two data sets as user folders (the generic JSONL format) plus their semantic IDs."""
    from server.data.bible import load_bible
    from server.data.jsonl import write_doc_texts, write_interactions, write_items, write_queries
    from server.data.movielens import load_movielens
    from server.pipeline import rec_ids, retrieval_ids

    d = Path(args.stage_dir)
    rp, bp = REC_PRESETS["full"], RETRIEVAL_PRESETS["full"]
    ml = load_movielens("ml-1m")
    write_items(d / "ml-1m" / "items.jsonl.gz", ml.items)
    write_interactions(d / "ml-1m" / "interactions.jsonl.gz", ml.sequences)
    rec_ids(ml, ml.split(), rp).save(d / "ml-1m" / "ids.json")
    bib = load_bible(train_windows=bp.train_windows, max_valid=bp.max_valid)
    b = d / "bible"
    write_items(b / "docs.jsonl.gz", bib.docs)
    write_doc_texts(b / "doc_texts.jsonl.gz", bib.doc_texts)
    write_queries(b / "valid_queries.jsonl.gz", bib.valid)
    write_queries(b / "test_queries.jsonl.gz", bib.test)
    ids = retrieval_ids(bib, bp)
    ids.save(b / "ids.json")
    print(f"staged into {d}; Bible IDs {ids.stats()}")


def _ml(d: Path):
    from server.data.jsonl import load_rec_jsonl

    return load_rec_jsonl(d / "ml-1m" / "items.jsonl.gz", d / "ml-1m" / "interactions.jsonl.gz", name="ml-1m")


def _bible(d: Path, docs_only: bool = False):
    from server.data.jsonl import load_retrieval_folder

    from server.pipeline import docs_only as only_docs

    data = load_retrieval_folder(d / "bible")
    data.name = "bible"
    return only_docs(data) if docs_only else data


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


# -- training (one process per seed / method, so seeds run side by side on one GPU) -----
def train_rec_cmd(args) -> None:
    from edge_gr.ids import SemanticIds
    from server.metrics import rank_metrics
    from server.pipeline import _train_info
    from server.train import train_rec

    p, d, out = REC_PRESETS["full"], Path(args.stage_dir), Path(args.out)
    data = _ml(d)
    split = data.split()
    v = REC_VARIANTS[args.variant]
    over = json.loads(args.train_json) if args.train_json else {}
    t = time.time()
    gm, log = train_rec(split, data.items, SemanticIds.load(d / "ml-1m" / "ids.json"), replace(p.model, **v.get("model", {})),
                        replace(p.train, device=args.device, seed=args.seed, threads=args.threads, **{**v.get("train", {}), **over}))
    info = _train_info(log, (time.time() - t) / 60, args.device)
    users = list(split.valid_target)
    ranked = gm.rank([split.train[u] for u in users], 10, beam=p.beam)
    info["valid_full"] = rank_metrics([[i for i, _ in r] for r in ranked], [{split.valid_target[u]} for u in users])
    name = f"rec-{args.variant}-seed{args.seed}"
    gm.meta["dataset"] = "ml-1m"
    gm.model.to("cpu")
    gm.save(out / name)
    _write(out / f"{name}.json", {"machine": machine(), "variant": args.variant, "seed": args.seed, **info, "log": log})
    print(f"{name}: valid NDCG@10 {info['valid_full']['ndcg@10']:.4f} R@10 {info['valid_full']['recall@10']:.4f} "
          f"({info['train_minutes']:.1f} min)", flush=True)


def train_sasrec_cmd(args) -> None:
    import torch

    from server.peers.sasrec import SASRecConfig, train_sasrec

    if args.threads:
        torch.set_num_threads(args.threads)
    p, d, out = REC_PRESETS["full"], Path(args.stage_dir), Path(args.out)
    data = _ml(d)
    split = data.split()
    t = time.time()
    over = json.loads(args.train_json) if args.train_json else {}
    sas = train_sasrec(split, [i.id for i in data.items],
                       SASRecConfig(**{"max_minutes": p.train.max_minutes, **p.sasrec, "device": args.device, "seed": args.seed, **over}))
    minutes = (time.time() - t) / 60
    sas.model.to("cpu")
    sas.save(out / f"sasrec-seed{args.seed}")
    best = max(sas.history, key=lambda e: e["val_ndcg@10"]) if sas.history else {}
    _write(out / f"sasrec-seed{args.seed}.json", {"machine": machine(), "seed": args.seed, "train_minutes": minutes,
                                                  "gpu_minutes": minutes if args.device.startswith("cuda") else None,
                                                  "valid_ndcg@10": best.get("val_ndcg@10"), "log": sas.history})
    print(f"sasrec seed {args.seed}: best valid NDCG@10 {best.get('val_ndcg@10')} ({minutes:.1f} min)", flush=True)


def train_retrieval_cmd(args) -> None:
    from edge_gr.ids import SemanticIds
    from server.pipeline import _train_info
    from server.train import train_retrieval

    p, d, out = RETRIEVAL_PRESETS["full"], Path(args.stage_dir), Path(args.out)
    data = _bible(d, args.docs_only)
    over = json.loads(args.train_json) if args.train_json else {}
    sampler = replace(p.sampler, **json.loads(args.sampler_json)) if args.sampler_json else p.sampler
    t = time.time()
    gm, log = train_retrieval(data, SemanticIds.load(d / "bible" / "ids.json"), replace(p.model),
                              replace(p.train, device=args.device, seed=args.seed, **over), vocab_size=p.vocab_size, sampler=sampler)
    info = _train_info(log, (time.time() - t) / 60, args.device)
    name = f"retrieval{'-docsonly' if args.docs_only else ''}-seed{args.seed}"
    gm.model.to("cpu")
    gm.save(out / name)
    _write(out / f"{name}.json", {"machine": machine(), "seed": args.seed, "docs_only": args.docs_only, "train_overrides": over,
                                  "sampler": sampler.to_dict(), **info, "log": log})
    print(f"{name}: best valid R@10 {max((e.get('valid', 0) for e in log), default=0):.4f} ({info['train_minutes']:.1f} min, "
          f"{info['train_examples_per_s'] or 0:,.0f} examples/s)", flush=True)


def finetune_dense_cmd(args) -> None:
    from server.peers.dense import finetune_minilm
    from server.train import retrieval_texts

    p, d, out = RETRIEVAL_PRESETS["full"], Path(args.stage_dir), Path(args.out)
    data = _bible(d)
    texts, _, queries = retrieval_texts(data)
    t = time.time()
    cfg = replace(p.dense_finetune, device=args.device, **(json.loads(args.train_json) if args.train_json else {}))
    finetune_minilm(texts, [x.text for x in data.docs], out / "dense-minilm-finetuned", cfg, queries)
    minutes = (time.time() - t) / 60
    _write(out / "dense-minilm-finetuned.json", {"machine": machine(), "train_minutes": minutes, "config": cfg.__dict__,
                                                 "gpu_minutes": minutes if args.device.startswith("cuda") else None})
    print(f"dense fine-tune: {minutes:.1f} min", flush=True)


# -- evaluation --------------------------------------------------------------------------
def _seeded(ck: Path, prefix: str) -> list[tuple[int, Path, dict]]:
    out = []
    for j in sorted(ck.glob(f"{prefix}-seed*.json")):
        folder = j.with_suffix("")
        if folder.is_dir():
            out.append((int(folder.name.rsplit("seed", 1)[1]), folder, json.loads(j.read_text())))
    return out


def eval_rec(ck: Path, d: Path, device: str) -> dict:
    from server.evaluate import combine_seeds, compare_methods, evaluate_rec
    from server.generative import GenerativeModel
    from server.peers.popularity import PopularityPeer
    from server.peers.sasrec import SASRecPeer
    from server.pipeline import _GenRec, _SafeRec

    data = _ml(d)
    split = data.split()
    beam = REC_PRESETS["full"].beam
    pop = PopularityPeer().fit(split, [i.id for i in data.items], include_valid=True)
    # choose the variant on validation (mean over its seeds), never on test
    variants = {}
    for v in REC_VARIANTS:
        runs = _seeded(ck, f"rec-{v}")
        if runs:
            variants[v] = (sum(r[2]["valid_full"]["ndcg@10"] for r in runs) / len(runs), runs)
    if not variants:
        return {}
    chosen = max(variants, key=lambda v: variants[v][0])
    gen_runs, sas_runs = [], []
    for seed, folder, info in variants[chosen][1]:
        gm = GenerativeModel.load(folder, device=device)
        r = evaluate_rec({"edge-gr-teacher": _GenRec(gm, beam)}, split)["edge-gr-teacher"]
        gen_runs.append(r | {k: info[k] for k in ("train_minutes", "train_examples_per_s", "gpu_minutes") if k in info}
                        | {"seed": seed, "valid_ndcg@10": info["valid_full"]["ndcg@10"], "trained_on": info["machine"]})
    for seed, folder, info in _seeded(ck, "sasrec"):
        sas = SASRecPeer.load(folder, device=device)
        r = evaluate_rec({"sasrec": _SafeRec(sas, pop)}, split)["sasrec"]
        sas_runs.append(r | {k: info[k] for k in ("train_minutes", "gpu_minutes") if info.get(k) is not None}
                        | {"seed": seed, "valid_ndcg@10": info.get("valid_ndcg@10"), "trained_on": info["machine"]})
    methods = {"edge-gr-teacher": combine_seeds(gen_runs)}
    if sas_runs:
        methods["sasrec"] = combine_seeds(sas_runs)
    methods["popularity"] = evaluate_rec({"popularity": pop}, split)["popularity"]
    comparison = {"edge-gr-teacher - sasrec": compare_methods(methods["edge-gr-teacher"], methods["sasrec"])} if sas_runs else {}
    return {"protocol": "leave-one-out by timestamp, all 6,040 users, full ranking over all 3,706 items; main keys keep "
                        "already-seen items, 'seen_removed' removes them; trained methods: mean over seeds",
            "ids": gm.ids.stats() | gm.ids.meta, "beam": beam, "methods": methods, "comparison": comparison,
            "variant_selection": {"chosen": chosen, "by": "mean validation NDCG@10 over seeds (all users)",
                                  "valid_ndcg@10": {v: x[0] for v, x in variants.items()}},
            "generative_config": gm.model.cfg.to_dict()}


def eval_retrieval(ck: Path, d: Path, device: str, extra: dict | None = None, dense: bool = True) -> dict:
    from server.evaluate import combine_seeds, compare_methods, evaluate_retrieval
    from server.generative import GenerativeModel
    from server.pipeline import _GenSearch, retrieval_peers

    p = RETRIEVAL_PRESETS["full"]
    data = _bible(d)
    out_methods, gm = {}, None
    for prefix, name in (("retrieval", "edge-gr-teacher"), ("retrieval-docsonly", "edge-gr-docs-only")):
        runs = []
        for seed, folder, info in _seeded(ck, prefix):
            gm_s = GenerativeModel.load(folder, device=device)
            gm = gm or gm_s
            r = evaluate_retrieval({name: _GenSearch(gm_s, p.beam)}, data.test)[name]
            best = max((e.get("valid", 0.0) for e in info["log"]), default=None)
            runs.append(r | {k: info[k] for k in ("train_minutes", "train_examples_per_s", "gpu_minutes") if k in info}
                        | {"seed": seed, "valid_recall@10": best, "trained_on": info["machine"]})
        if runs:
            out_methods[name] = combine_seeds(runs)
    ft = ck / "dense-minilm-finetuned"
    peers = retrieval_peers(data, replace(p, dense_finetune=None), device=device, finetuned=ft if ft.is_dir() else None, dense=dense)
    out_methods |= evaluate_retrieval(peers, data.test)
    # methods measured in another eval process on the same queries (e.g. the fine-tuned MiniLM,
    # evaluated on the GPU host that trained it): metrics are comparable, their latency is from that process
    for name, m in (extra or {}).get("methods", {}).items():
        if name not in out_methods and "_hits" in m:
            out_methods[name] = m | {"measured_in": f"a separate eval process on {extra.get('machine')}; latency from that process "
                                                    f"(its bm25 p50 there: {extra['methods'].get('bm25', {}).get('p50_ms')} ms)"}
    if ft.is_dir() and (ck / "dense-minilm-finetuned.json").is_file():
        info = json.loads((ck / "dense-minilm-finetuned.json").read_text())
        out_methods["dense-minilm-finetuned"] |= {"train_minutes": info["train_minutes"], "gpu_minutes": info.get("gpu_minutes"),
                                                  "trained_on": info["machine"]}
    comparison = {}
    if "edge-gr-teacher" in out_methods:
        for peer in [m for m in out_methods if not m.startswith("edge-gr")]:
            comparison[f"edge-gr-teacher - {peer}"] = compare_methods(out_methods["edge-gr-teacher"], out_methods[peer],
                                                                     metrics=("recall@1", "recall@10", "mrr@10"))
    return {"protocol": "docs = 31,102 KJV verses; queries = one seeded 6-word window of each WEB verse (seed 1234, a translation "
                        "never trained on); full ranking; a hit on any verse with identical KJV text counts",
            "ids": gm.ids.stats() | gm.ids.meta if gm else {}, "beam": p.beam, "methods": out_methods, "comparison": comparison,
            "training": "edge-gr: examples cut afresh every step from KJV + ASV/Darby/YLT verse texts (server.sampling); "
                        "edge-gr-docs-only: windows of the KJV alone; bm25-expanded indexes KJV + ASV/Darby/YLT per verse; "
                        "dense-minilm-finetuned: MultipleNegativesRankingLoss on the same windows",
            "generative_config": gm.model.cfg.to_dict() if gm else {}}


def evaluate(args) -> None:
    from server.evaluate import strip_private
    from server.io import write_json

    d, ck, out_path = Path(args.stage_dir), Path(args.ckpts), Path(args.results)
    res = json.loads(out_path.read_text()) if out_path.is_file() else {}
    res.update({"machine": machine(), "date": datetime.date.today().isoformat(),
                "note": "metrics and 1-thread CPU latency measured on 'machine' in one eval process per data set; "
                        "training machine per method under 'trained_on'"})
    if "rec" in args.tasks:
        r = eval_rec(ck, d, args.device)
        if r:
            res["movielens-1m"] = r | {"machine": machine()}
    if "retrieval" in args.tasks:
        extra = json.loads(Path(args.extra).read_text()).get("bible") if args.extra else None
        r = eval_retrieval(ck, d, args.device, extra, dense=not args.no_dense)
        if r.get("methods"):
            res["bible"] = r | {"machine": machine()}
    write_json(out_path, strip_private(res))
    if args.hits_out:  # per-query hit ranks, for paired CIs against methods evaluated elsewhere (not committed)
        write_json(Path(args.hits_out), res)
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from plot_core import main as plot

        plot(out_path)
    except ImportError as e:  # matplotlib missing on a GPU host: plot later, here
        print(f"no plot ({e})")
    print(json.dumps({k: {m: {x: v["methods"][m].get(x) for x in ("recall@1", "recall@10", "ndcg@10", "mrr@10", "p50_ms")}
                          for m in v["methods"]} for k, v in res.items() if isinstance(v, dict) and "methods" in v}, indent=1))
    print(f"wrote {out_path}")


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge(args) -> None:
    """Combine the data-set sections of eval results made elsewhere (e.g. on the GPU host) into
    ``--results``; ``--patch`` files are deep-merged on top (a method re-evaluated in another process)."""
    from server.io import write_json

    out_path = Path(args.results)
    res = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for part in args.parts:
        p = json.loads(Path(part).read_text())
        for k, v in p.items():
            if isinstance(v, dict) and "methods" in v:
                res[k] = v
    for patch in args.patch or []:
        res = _deep_merge(res, json.loads(Path(patch).read_text()))
    res.update({"date": datetime.date.today().isoformat(),
                "note": "each data set's metrics and 1-thread CPU latency were measured in one eval process on its 'machine' "
                        "(methods evaluated elsewhere say so under 'measured_in'); training machine per method under 'trained_on'"})
    res.pop("machine", None)
    write_json(out_path, res)
    sys.path.insert(0, str(Path(__file__).parent))
    from plot_core import main as plot

    plot(out_path)
    print(f"wrote {out_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["stage", "train-rec", "train-sasrec", "train-retrieval", "finetune-dense", "eval", "merge"])
    ap.add_argument("parts", nargs="*", help="merge: eval result files whose data-set sections go into --results")
    ap.add_argument("--patch", action="append", help="merge: JSON deep-merged on top (repeatable)")
    ap.add_argument("--stage-dir", default=str(STAGE))
    ap.add_argument("--tasks", default="rec,retrieval", help="eval: which data sets")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of a training process")
    ap.add_argument("--variant", choices=list(REC_VARIANTS), default="base")
    ap.add_argument("--docs-only", action="store_true", help="train-retrieval: KJV windows only (a user with documents only)")
    ap.add_argument("--train-json", default=None, help='JSON overrides of the preset TrainConfig, e.g. {"max_minutes": 8}')
    ap.add_argument("--sampler-json", default=None, help='train-retrieval: JSON overrides of the SamplerConfig')
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--ckpts", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--results", default=str(RESULTS / "core.json"))
    ap.add_argument("--hits-out", default=None, help="eval: also write the results with per-query hit ranks here")
    ap.add_argument("--no-dense", action="store_true", help="eval retrieval: skip the MiniLM peers (take them from --extra)")
    ap.add_argument("--extra", default=None, help="eval retrieval: a --hits-out file of another eval process to merge methods from")
    args = ap.parse_args()
    {"stage": stage, "train-rec": train_rec_cmd, "train-sasrec": train_sasrec_cmd, "train-retrieval": train_retrieval_cmd,
     "finetune-dense": finetune_dense_cmd, "eval": evaluate, "merge": merge}[args.stage](args)


if __name__ == "__main__":
    main()
