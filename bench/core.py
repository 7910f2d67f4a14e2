"""Core benchmark (issue #2): the generative model against its peers, MovieLens-1M and Bible.

Writes ``bench/results/core.json``::

    {"machine", "date", "movielens-1m": {"methods": {NAME: {recall@1, recall@10, ndcg@10, mrr@10,
     p50_ms, p99_ms, params, size_mb, ...}}, ...}, "bible": {...}}

Full-size training takes hours on 2 CPU cores, so the job is split into stages that
can run on different machines (the same code, the same data files):

    python bench/core.py stage                    # here: data -> JSONL.gz + semantic IDs (.cache/bench_stage)
    python bench/core.py train --task rec  --device cuda --out CKPTS   # a GPU: generative rec + SASRec
    python bench/core.py train --task retrieval --device cuda --out CKPTS
    python bench/core.py eval --ckpts CKPTS       # here: peers, metrics, 1-thread latency -> core.json
    python bench/core.py all                      # every stage in one process (CPU: very slow)

Every method is evaluated in the same ``eval`` process on the same queries; SASRec is
trained in the same ``train`` job as the generative recommender.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from server.data.base import RecData  # noqa: E402
from server.data.jsonl import load_rec_jsonl, load_retrieval_jsonl, write_interactions, write_items, write_queries  # noqa: E402
from server.metrics import rank_metrics  # noqa: E402
from server.pipeline import REC_PRESETS, RETRIEVAL_PRESETS, rec_ids, retrieval_ids  # noqa: E402

STAGE = ROOT / ".cache" / "bench_stage"
RESULTS = ROOT / "bench" / "results"


def _machine() -> str:
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} CPU cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def stage(args) -> None:
    """Data sets in the generic JSONL format plus their semantic IDs (built on this machine)."""
    from server.data.bible import load_bible
    from server.data.movielens import load_movielens

    d = Path(args.stage_dir)
    rec_p, ret_p = REC_PRESETS["full"], RETRIEVAL_PRESETS["full"]
    ml = load_movielens("ml-1m")
    write_items(d / "ml-1m" / "items.jsonl.gz", ml.items)
    write_interactions(d / "ml-1m" / "interactions.jsonl.gz", ml.sequences)
    rec_ids(ml, ml.split(), rec_p).save(d / "ml-1m" / "ids.json")
    bib = load_bible(train_windows=ret_p.train_windows)
    write_items(d / "bible" / "docs.jsonl.gz", bib.docs)
    for name in ("train", "valid", "test"):
        write_queries(d / "bible" / f"{name}.jsonl.gz", getattr(bib, name))
    retrieval_ids(bib, ret_p).save(d / "bible" / "ids.json")
    print(f"staged into {d}")


def _load_ml(d: Path) -> RecData:
    data = load_rec_jsonl(d / "ml-1m" / "items.jsonl.gz", d / "ml-1m" / "interactions.jsonl.gz", name="ml-1m")
    return data


def _load_bible(d: Path):
    b = d / "bible"
    return load_retrieval_jsonl(b / "docs.jsonl.gz", b / "train.jsonl.gz", b / "test.jsonl.gz", name="bible", valid_path=b / "valid.jsonl.gz")


def train(args) -> None:
    from edge_gr.ids import SemanticIds
    from server.peers.sasrec import SASRecConfig, train_sasrec
    from server.train import train_rec, train_retrieval

    d, out = Path(args.stage_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"machine": _machine(), "date": datetime.date.today().isoformat()}
    if args.task == "rec":
        p = REC_PRESETS["full"]
        data = _load_ml(d)
        split = data.split()
        ids = SemanticIds.load(d / "ml-1m" / "ids.json")
        # Variants are compared on the *validation* targets (full ranking, all users);
        # the best one is saved and later evaluated once on the test targets.
        variants = json.loads(args.variants) if args.variants else [{"name": "preset"}]
        if args.only == "sasrec":
            variants = []
        best, t_all, info["variants"] = None, time.time(), []
        for v in variants:
            vids = SemanticIds.load(d / "ml-1m" / v["ids"]) if "ids" in v else ids
            tcfg = replace(p.train, device=args.device, max_minutes=args.max_minutes, **v.get("train", {}))
            t = time.time()
            gm, log = train_rec(split, data.items, vids, replace(p.model, **v.get("model", {})), tcfg)
            users = list(split.valid_target)
            ranked = gm.rank([split.train[u] for u in users], 10, beam=p.beam)
            val = rank_metrics([[i for i, _ in r] for r in ranked], [{split.valid_target[u]} for u in users])
            rec = {**v, "valid_full": val, "train_minutes": (time.time() - t) / 60, "log": log}
            info["variants"].append(rec)
            print(f"variant {v['name']}: valid NDCG@10 {val['ndcg@10']:.4f} R@10 {val['recall@10']:.4f} ({rec['train_minutes']:.1f} min)", flush=True)
            if best is None or val["ndcg@10"] > best[0]:
                best = (val["ndcg@10"], gm, v["name"])
    if args.task == "rec" and best is not None:
        gm = best[1]
        info["edge-gr-teacher"] = {"train_minutes": (time.time() - t_all) / 60, "selected": best[2],
                                   "log": next(x["log"] for x in info["variants"] if x["name"] == best[2])}
        gm.meta["variant"] = best[2]
        gm.model.to("cpu")
        gm.save(out / "rec-model")
    if args.task == "rec" and args.only != "gen":
        p, data = REC_PRESETS["full"], _load_ml(d)
        split = data.split()
        t = time.time()
        sas = train_sasrec(split, [i.id for i in data.items], SASRecConfig(**{**p.sasrec, "device": args.device}))
        info["sasrec"] = {"train_minutes": (time.time() - t) / 60, "log": getattr(sas, "history", [])}
        sas.model.to("cpu")
        sas.save(out / "sasrec")
    if args.task == "retrieval":
        p = RETRIEVAL_PRESETS["full"]
        data = _load_bible(d)
        ids = SemanticIds.load(d / "bible" / "ids.json")
        t = time.time()
        over = json.loads(args.train_json) if args.train_json else {}
        gm, log = train_retrieval(data, ids, replace(p.model), replace(p.train, device=args.device, max_minutes=args.max_minutes, **over),
                                  vocab_size=p.vocab_size, index_windows=p.index_windows)
        info["edge-gr-teacher"] = {"train_minutes": (time.time() - t) / 60, "log": log, "train_overrides": over}
        gm.model.to("cpu")
        gm.save(out / "retrieval-model")
    (out / f"train-{args.task}{'-' + args.only if args.only else ''}.json").write_text(json.dumps(info, indent=1, default=str))
    print(json.dumps({k: v for k, v in info.items() if k != "log"}, indent=1, default=str)[:3000])


def evaluate(args) -> None:
    from server.evaluate import evaluate_rec, evaluate_retrieval
    from server.generative import GenerativeModel
    from server.io import write_json
    from server.peers.popularity import PopularityPeer
    from server.peers.sasrec import SASRecPeer
    from server.pipeline import _GenRec, _GenSearch, _SafeRec

    d, ck = Path(args.stage_dir), Path(args.ckpts)
    out_path = Path(args.results)
    res = json.loads(out_path.read_text()) if out_path.is_file() else {}
    res.update({"machine": _machine(), "date": datetime.date.today().isoformat(),
                "note": "metrics and latency measured on 'machine' in one eval process; training machine per method under 'trained_on'"})
    if "rec" in args.tasks and (ck / "rec-model").is_dir():
        data = _load_ml(d)
        split = data.split()
        gm = GenerativeModel.load(ck / "rec-model")
        sas = SASRecPeer.load(ck / "sasrec", device="cpu")
        pop = PopularityPeer().fit(split, [i.id for i in data.items], include_valid=True)
        beam = REC_PRESETS["full"].beam
        m = evaluate_rec({"edge-gr-teacher": _GenRec(gm, beam), "sasrec": _SafeRec(sas, pop), "popularity": pop}, split)
        tinfo = {}
        for f in ("train-rec.json", "train-rec-gen.json", "train-rec-sasrec.json"):
            if (ck / f).is_file():
                tinfo.update(json.loads((ck / f).read_text()))
        for name in ("edge-gr-teacher", "sasrec"):
            if name in tinfo:
                m[name]["trained_on"] = tinfo["machine"]
                m[name]["train_minutes"] = tinfo[name]["train_minutes"]
        res["movielens-1m"] = {"protocol": "leave-one-out by timestamp, all 6,040 users, full ranking over all 3,706 items; "
                               "main keys keep already-seen items, 'seen_removed' removes them",
                               "ids": gm.ids.stats() | gm.ids.meta, "beam": beam, "methods": m,
                               "generative_config": gm.model.cfg.to_dict()}
    if "retrieval" in args.tasks and (ck / "retrieval-model").is_dir():
        from server.peers.bm25 import BM25Peer
        from server.peers.dense import DensePeer

        data = _load_bible(d)
        gm = GenerativeModel.load(ck / "retrieval-model")
        beam = RETRIEVAL_PRESETS["full"].beam
        methods = {"edge-gr-teacher": _GenSearch(gm, beam), "bm25": BM25Peer().fit(data.docs), "dense-minilm": DensePeer().fit(data.docs)}
        m = evaluate_retrieval(methods, data.test)
        tinfo = json.loads((ck / "train-retrieval.json").read_text()) if (ck / "train-retrieval.json").is_file() else {}
        if "edge-gr-teacher" in tinfo:
            m["edge-gr-teacher"]["trained_on"] = tinfo["machine"]
            m["edge-gr-teacher"]["train_minutes"] = tinfo["edge-gr-teacher"]["train_minutes"]
        res["bible"] = {"protocol": "docs = 31,102 KJV verses; queries = one seeded 6-word window of each WEB verse (seed 1234); "
                        "full ranking; a hit on any verse with identical KJV text counts", "ids": gm.ids.stats() | gm.ids.meta,
                        "beam": beam, "methods": m, "generative_config": gm.model.cfg.to_dict()}
    write_json(out_path, res)
    sys.path.insert(0, str(Path(__file__).parent))
    from plot_core import main as plot

    plot(out_path)
    from server.cli import _print_results

    _print_results({k: v | {"dataset": k} for k, v in res.items() if isinstance(v, dict) and "methods" in v})
    print(f"wrote {out_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["stage", "train", "eval", "all"])
    ap.add_argument("--stage-dir", default=str(STAGE))
    ap.add_argument("--task", choices=["rec", "retrieval"], default="rec")
    ap.add_argument("--tasks", default="rec,retrieval", help="eval: which data sets")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-minutes", type=float, default=None, help="train: wall-clock budget for the generative model")
    ap.add_argument("--variants", default=None, help='train rec: JSON list of {"name", "ids", "model": {...}, "train": {...}}; best on validation is kept')
    ap.add_argument("--only", choices=["gen", "sasrec"], default=None, help="train rec: only the generative model / only SASRec (to run both in parallel)")
    ap.add_argument("--train-json", default=None, help='train retrieval: JSON overrides of the preset TrainConfig, e.g. {"batch_size": 1024}')
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--ckpts", default=str(ROOT / ".cache" / "bench_ckpts"))
    ap.add_argument("--results", default=str(RESULTS / "core.json"))
    args = ap.parse_args()
    if args.stage in ("stage", "all"):
        stage(args)
    if args.stage in ("train", "all"):
        for t in (["rec", "retrieval"] if args.stage == "all" else [args.task]):
            train(replace_ns(args, task=t))
    if args.stage in ("eval", "all"):
        evaluate(args)


def replace_ns(ns, **kw):
    return argparse.Namespace(**{**vars(ns), **kw})


if __name__ == "__main__":
    main()
