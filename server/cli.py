"""The ``edge-gr`` command: thin - parses, calls the library, prints.

    edge-gr demo                          # both comparisons on the small default data (minutes on CPU)
    edge-gr eval --task rec --preset full --out bench/results/rec.json
    edge-gr ids --task rec --data ml-1m --levels 64,64,64 --out ids.json
    edge-gr train --task retrieval --preset demo --out ckpt/
    edge-gr search ckpt/ "in the beginning was the word"
    edge-gr search rec-ckpt/ --history "Star Wars (1977)" "Alien (1979)"
    edge-gr compress --teacher ckpt/ --out variants/ --variants fp32,int8,int4,pruned-30
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from edge_gr.errors import EdgeGRError

__all__ = ["main"]


def _levels(s: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("levels are comma-separated integers, e.g. 64,64,64") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("every level needs at least one code")
    return out


def _tasks(args) -> list[str]:
    task = getattr(args, "task", None)
    return ["rec", "retrieval"] if task in (None, "all") else [task]


def _presets(args):
    from .pipeline import REC_PRESETS, RETRIEVAL_PRESETS

    rec = replace(REC_PRESETS[args.preset])
    ret = replace(RETRIEVAL_PRESETS[args.preset])
    if getattr(args, "dataset", None):
        tasks = _tasks(args)
        if len(tasks) != 1:
            raise EdgeGRError("--data names the data of one task", hint="add --task rec or --task retrieval")
        if tasks[0] == "rec":
            rec.dataset = args.dataset
        else:
            ret.dataset = args.dataset
    if getattr(args, "epochs", None):  # the same kind of budget for the generative model and its trained peer
        rec.train = replace(rec.train, epochs=args.epochs)
        ret.train = replace(ret.train, epochs=args.epochs)
        rec.sasrec = {**rec.sasrec, "epochs": args.epochs}
    if getattr(args, "levels", None):
        rec.levels = ret.levels = args.levels
    return rec, ret


def fmt_table(title: str, methods: dict) -> "object":
    from rich.table import Table

    t = Table(title=title)
    for c in ["method", "R@1", "R@10", "NDCG@10", "MRR@10", "p50 ms", "p99 ms", "params", "MB"]:
        t.add_column(c, justify="right" if c != "method" else "left")
    for name, m in methods.items():
        t.add_row(name, *(f"{m[k]:.4f}" for k in ("recall@1", "recall@10", "ndcg@10", "mrr@10")),
                  f"{m['p50_ms']:.2f}", f"{m['p99_ms']:.2f}", f"{m['params']:,}", f"{m['size_mb']:.2f}")
    return t


def _print_results(res: dict) -> None:
    from rich.console import Console

    con = Console(width=max(Console().width, 132))  # the tables have 9 columns
    for key, r in res.items():
        if not isinstance(r, dict) or "methods" not in r:
            continue
        con.print(fmt_table(f"{key}: {r['dataset']} ({r['protocol']})", r["methods"]))
        seen = {n: m["seen_removed"] | {k: m[k] for k in ("p50_ms", "p99_ms", "params", "size_mb")}
                for n, m in r["methods"].items() if "seen_removed" in m}
        if seen:
            con.print(fmt_table(f"{key}: {r['dataset']}, already-seen items removed from the ranking", seen))


def _run(args, tasks: list[str]) -> dict:
    from .evaluate import one_thread  # noqa: F401  (import check before long work)
    from .pipeline import run_rec, run_retrieval
    import datetime, platform

    rec, ret = _presets(args)
    out = Path(args.out) if args.out else None
    ckpt = Path(args.checkpoints) if getattr(args, "checkpoints", None) else None
    res: dict = {"machine": f"{platform.node()} {platform.machine()} {_cpu()}", "date": datetime.date.today().isoformat(),
                 "preset": args.preset}
    if "rec" in tasks:
        res["movielens"] = run_rec(rec, out_dir=ckpt, device=args.device)
    if "retrieval" in tasks:
        res["bible" if ret.dataset == "bible" else "retrieval"] = run_retrieval(ret, out_dir=ckpt, device=args.device)
    from .evaluate import strip_private

    res = strip_private(res)
    if out:
        from .io import write_json

        write_json(out, res)
    _print_results(res)
    return res


def _cpu() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    import os

    return f"{os.cpu_count()} CPU cores"


def cmd_demo(args) -> None:
    """Both comparisons, then each task's device bundle by `edge-gr build` from the teacher just trained."""
    _run(args, ["rec", "retrieval"])
    if args.no_bundles:
        return
    from .build import BuildSpec, build

    rec, ret = _presets(args)
    root = Path(args.checkpoints) if args.checkpoints else Path(".cache/edge_gr/demo")
    for task, p in (("rec", rec), ("retrieval", ret)):
        teacher = root / f"{task}-model" if args.checkpoints else None
        out = build(BuildSpec(task=task, data=p.dataset, out=str(root / "bundles" / task), preset=args.preset,
                              device=args.device or "cpu", teacher=str(teacher) if teacher and teacher.is_dir() else None))
        rep = json.loads((out.with_name(out.name + ".build") / "verify.json").read_text())
        for name, v in rep["variants"].items():
            print(f"{task} bundle {name:<18} from {v['source']:<8} overlap@10 {v['overlap@10']:.3f}  recall@10 {v['recall@10']:.3f}")
        print(f"wrote {out}  (on the device: edge_gr.load({str(out)!r}).search(...))")


def cmd_eval(args) -> None:
    _run(args, ["rec", "retrieval"] if args.task == "all" else [args.task])


def cmd_ids(args) -> None:
    from .pipeline import load_rec_data, load_retrieval_data, rec_ids, retrieval_ids

    rec, ret = _presets(args)
    if args.task == "rec":
        rec.id_source, rec.id_method = args.source, args.method or rec.id_method
        data = load_rec_data(rec)
        ids = rec_ids(data, data.split(), rec)
    else:
        ret.id_method = args.method or ret.id_method
        ids = retrieval_ids(load_retrieval_data(ret), ret)
    ids.save(args.out)
    print(json.dumps(ids.stats(), indent=1))
    print(f"wrote {args.out}")


def cmd_train(args) -> None:
    from .pipeline import load_rec_data, load_retrieval_data, rec_ids, retrieval_ids
    from .train import train_rec, train_retrieval

    rec, ret = _presets(args)
    dev = args.device or "cpu"
    if args.task == "rec":
        data = load_rec_data(rec)
        split = data.split()
        gm, _ = train_rec(split, data.items, rec_ids(data, split, rec), replace(rec.model), replace(rec.train, device=dev))
        gm.meta["dataset"] = rec.dataset
    else:
        data = load_retrieval_data(ret)
        gm, _ = train_retrieval(data, retrieval_ids(data, ret), replace(ret.model), replace(ret.train, device=dev),
                                vocab_size=ret.vocab_size, sampler=ret.sampler, index_windows=ret.index_windows)
        gm.meta["dataset"] = ret.dataset
    gm.model.to("cpu")
    gm.save(args.out)
    print(f"wrote {args.out} ({gm.model.n_params():,} parameters)")


def _user_history(gm, user: str) -> list[str]:
    """A known user's full history (train + validation items) from the checkpoint's data set."""
    from .pipeline import RecPreset, load_rec_data

    dataset = gm.meta.get("dataset")
    if gm.task != "rec" or not dataset:
        raise EdgeGRError("this checkpoint does not know its users", hint="pass --history ITEM [ITEM ...] instead of --user")
    data = load_rec_data(RecPreset(dataset=dataset))
    if user not in data.sequences:
        from edge_gr.errors import InputError

        sample = ", ".join(list(data.sequences)[:3])
        raise InputError(f"unknown user {user!r} in {dataset}", hint=f"use a user id of that data set (e.g. {sample}) or pass --history")
    return data.sequences[user][:-1]


def cmd_search(args) -> None:
    """A checkpoint (cloud model) or a bundle (device runtime, no torch on its path) answers the same way."""
    from edge_gr.validate import check_beam, check_k

    from .api import load

    check_beam(args.beam, check_k(args.k))  # before a model is loaded: `-k 0`, `-k -5`, `--beam 0` fail at once (exit 2)
    path = Path(args.checkpoint)
    bundle = (path / "manifest.json").is_file() or path.suffix == ".tar"
    if bundle:
        import edge_gr

        if args.user is not None:
            raise EdgeGRError("--user needs a checkpoint (it names the user's data set)", hint="pass --history ITEM ... to a bundle")
        keys = None
        if args.key:
            from edge_gr.sealed import FileKeyProvider

            keys = FileKeyProvider(*args.key)
        searcher = edge_gr.load(path, key_provider=keys)
    else:
        searcher = load(args.checkpoint)
    q = args.history if args.history is not None else args.query
    if args.user is not None:
        q = _user_history(searcher, args.user)
    if q is None:
        raise EdgeGRError("nothing to search for", hint="give a query text or --history ITEM [ITEM ...]")
    # one Searcher protocol, one output: the cloud checkpoint and the device bundle print alike
    for rank, h in enumerate(searcher.search(q, args.k, beam=args.beam, exclude_seen=args.exclude_seen), 1):
        print(f"{rank:>3}  {h.score:8.3f}  {searcher.ids.format_id(h.item_id):>12}  {h.item_id}  {(h.title or '')[:80]}")


def _compress_data(gm, spec: str | None):
    """The data a checkpoint was trained on: a data-set name or a JSONL folder (see ``edge-gr compress -h``)."""
    from .data.jsonl import find_jsonl, load_rec_jsonl, load_retrieval_jsonl
    from .pipeline import RETRIEVAL_PRESETS, RecPreset, load_rec_data, load_retrieval_data

    spec = spec or (gm.meta or {}).get("dataset")
    if not spec:
        raise EdgeGRError("this checkpoint does not name its data set", hint="pass --data (ml-1m, bible-full, or a JSONL folder)")
    folder = Path(spec)
    if gm.task == "rec":
        if folder.is_dir() and find_jsonl(folder, "items") and find_jsonl(folder, "interactions"):
            return load_rec_jsonl(find_jsonl(folder, "items"), find_jsonl(folder, "interactions"), name=folder.name).split()
        return load_rec_data(RecPreset(dataset=spec)).split()
    if folder.is_dir():
        need = {s: find_jsonl(folder, s) for s in ("docs", "train", "test")}
        if not all(need.values()):
            raise EdgeGRError(f"{folder} lacks {[s for s, p in need.items() if p is None]} (.jsonl or .jsonl.gz)",
                              hint="a retrieval folder holds docs, train, test and optionally valid JSONL files")
        return load_retrieval_jsonl(need["docs"], need["train"], need["test"], name=folder.name, valid_path=find_jsonl(folder, "valid"))
    presets = {f"bible-{k}": v for k, v in RETRIEVAL_PRESETS.items()}
    if spec not in presets:
        raise EdgeGRError(f"unknown retrieval data {spec!r}", hint=f"use one of {', '.join(presets)} or a JSONL folder")
    return load_retrieval_data(presets[spec])


def _student(spec: str):
    """``128x2`` -> a GRConfig of width 128 with 2 encoder and 2 decoder layers; ``none`` -> None."""
    from .model import GRConfig

    if spec == "none":
        return None
    try:
        d, n = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise EdgeGRError(f"bad --student {spec!r}", hint="use WIDTHxLAYERS, e.g. 128x2, or none") from None
    return GRConfig(d_model=d, n_heads=max(1, d // 32), n_enc_layers=n, n_dec_layers=n, dropout=0.1)


def cmd_compress(args) -> None:
    from .compress.distill import DistillConfig
    from .compress.variants import CompressConfig, compress
    from .generative import GenerativeModel
    from .train import TrainConfig

    teacher = GenerativeModel.load(args.teacher, device=args.device or "cpu")
    data = _compress_data(teacher, args.data)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    student = GenerativeModel.load(args.init).model if args.init else _student(args.student)
    if student is not None and not args.init and teacher.task == "rec":
        student.max_len = min(teacher.model.cfg.max_len, args.student_max_len or teacher.model.cfg.max_len)
    dev = args.device or "cpu"
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience, device=dev,
                        max_minutes=args.minutes, eval_queries=args.eval_queries)
    recover = TrainConfig(epochs=args.recover_epochs, batch_size=args.batch_size, lr=args.lr / 4, patience=args.recover_epochs,
                          warmup_steps=20, device=dev, max_minutes=args.recover_minutes, eval_queries=args.eval_queries)
    dcfg = DistillConfig(alpha=args.alpha, temperature=args.temperature, rank_weight=args.rank_weight, seq_level=args.seq_level,
                         negative_weight=args.negative_weight, hidden_weight=args.hidden_weight, rank_samples=args.rank_samples)
    cfg = CompressConfig(student=student, distill=dcfg, train=train, recover=recover, int4_group_size=args.int4_group_size,
                         groups=args.groups, prune_step=args.prune_step, protect_top=args.protect_top)
    base = GenerativeModel.load(args.base) if args.base else None
    variants, report = compress(teacher, data, names, cfg, out_dir=args.out, base=base)
    t = report["teacher"]
    print(f"teacher: {t['params']:,} params, {t['bytes'] / 1e6:.2f} MB")
    for name, r in report["variants"].items():
        bv = r["best_valid"]
        print(f"{name:>10}: {r['params']:>10,} params  {r['bytes'] / 1e6:7.2f} MB  ({r['bytes'] / t['bytes']:.3f} of the teacher)"
              + (f"  best valid {bv:.4f}" if isinstance(bv, float) else ""))
    print(f"wrote {args.out}/<variant> checkpoints and {args.out}/report.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-gr", description="On-device generative retrieval and recommendation (cloud-side tools).")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, tasks=("rec", "retrieval")):
        sp.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo", help="data size and model/training config (default: demo)")
        sp.add_argument("--device", default=None, help="torch device for training (default: cuda if available, else cpu)")
        sp.add_argument("--epochs", type=int, default=None, help="override the preset's maximum epochs (generative model and SASRec)")
        sp.add_argument("--levels", type=_levels, default=None, help="codes per ID level, e.g. 64,64,64 (a collision-free digit is appended)")
        sp.add_argument("--data", "--dataset", dest="dataset", default=None, help="with --task rec: ml-1m, ml-100k or a folder with items.jsonl[.gz] + "
                        "interactions.jsonl[.gz]; with --task retrieval: bible or a folder with docs.jsonl[.gz] "
                        "(+ optional train_queries / valid_queries / test_queries / doc_texts .jsonl[.gz])")

    sp = sub.add_parser("demo", help="run both comparisons on the small default data and print them")
    common(sp)
    sp.add_argument("--out", default=None, help="write the results JSON here")
    sp.add_argument("--checkpoints", default=None, help="save the trained generative models under this folder")
    sp.add_argument("--no-bundles", action="store_true", help="only the comparisons (skip `edge-gr build` of the device bundles)")
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("eval", help="train the generative model and its peers, compare them in one run")
    common(sp)
    sp.add_argument("--task", choices=["rec", "retrieval", "all"], default="all")
    sp.add_argument("--out", default=None, help="write the results JSON here")
    sp.add_argument("--checkpoints", default=None, help="save the trained generative models under this folder")
    sp.set_defaults(fn=cmd_eval)

    sp = sub.add_parser("ids", help="build semantic IDs and print their codebook utilisation / collision rate")
    common(sp)
    sp.add_argument("--task", choices=["rec", "retrieval"], required=True)
    sp.add_argument("--source", choices=["collab", "text", "fusion"], default="collab", help="rec: what the IDs are built from")
    sp.add_argument("--method", choices=["rq", "hkm", "bhkm"], default=None,
                    help="residual, hierarchical or balanced hierarchical k-means (default: the preset's)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_ids)

    sp = sub.add_parser("train", help="train a generative model and save a checkpoint folder")
    common(sp)
    sp.add_argument("--task", choices=["rec", "retrieval"], required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(fn=cmd_train)

    sp = sub.add_parser("search", help="query a trained checkpoint or an exported bundle")
    sp.add_argument("checkpoint", metavar="PATH", help="a checkpoint folder (edge-gr train) or a bundle (folder or .tar)")
    sp.add_argument("query", nargs="?", default=None, help="query text (retrieval model)")
    sp.add_argument("--history", nargs="*", default=None, help="item ids, oldest first (recommender)")
    sp.add_argument("--user", default=None, help="a user of the checkpoint's data set (recommender): recommend from their history")
    from edge_gr.search import DEFAULT_BEAM
    from edge_gr.validate import MAX_BEAM, MAX_K

    sp.add_argument("-k", type=int, default=10, help=f"number of results, 1 to {MAX_K} (default 10)")
    sp.add_argument("--beam", type=int, default=None, help=f"beams per level, 1 to {MAX_BEAM} (default {DEFAULT_BEAM})")
    sp.add_argument("--exclude-seen", action="store_true", help="drop items already in the history")
    sp.add_argument("--key", action="append", default=None, metavar="FILE",
                    help="data key file (or folder of *.key) of an encrypted bundle (`edge-gr keys data-key`); repeatable")
    sp.set_defaults(fn=cmd_search)

    from .compress.variants import VARIANTS

    sp = sub.add_parser("compress", help="distil, quantize, prune and group a teacher into named device variants + a report")
    sp.add_argument("--checkpoint", "--teacher", dest="teacher", required=True, help="the teacher's checkpoint folder (edge-gr train)")
    sp.add_argument("--data", default=None, help="the teacher's data: ml-1m / ml-100k / bible-demo / bible-full or a JSONL folder "
                                                 "(rec default: the checkpoint's data set)")
    sp.add_argument("--out", required=True, help="folder for the variant checkpoints and report.json")
    sp.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    sp.add_argument("--student", default="128x2", help="student WIDTHxLAYERS distilled first (default 128x2); none = compress the teacher")
    sp.add_argument("--base", default=None, help="an already distilled student checkpoint to derive the variants from")
    sp.add_argument("--init", default=None, help="continue distilling this saved student (instead of a fresh --student)")
    sp.add_argument("--student-max-len", type=int, default=None, help="rec: history length of the student (default: the teacher's)")
    sp.add_argument("--device", default=None)
    sp.add_argument("--epochs", type=int, default=30)
    sp.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the student's distillation")
    sp.add_argument("--recover-epochs", type=int, default=3, help="epochs of recovery distillation per pruning step / for grouped")
    sp.add_argument("--recover-minutes", type=float, default=None)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--patience", type=int, default=5)
    sp.add_argument("--eval-queries", type=int, default=1000)
    sp.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label CE (1-alpha on the teacher's soft labels)")
    sp.add_argument("--temperature", type=float, default=2.0)
    # KD only by default: on MovieLens-1M the beam-based terms lowered the student's validation
    # score at every weight tried (README, "Compression"); they stay available for experiments.
    sp.add_argument("--rank-weight", type=float, default=0.0, help="listwise rank loss over the teacher's top beams")
    sp.add_argument("--negative-weight", type=float, default=0.0, help="true ID vs the teacher's top beams that are not it")
    sp.add_argument("--hidden-weight", type=float, default=0.0)
    sp.add_argument("--rank-samples", type=int, default=4096, help="inputs whose teacher beams feed the sequence / rank / negative terms")
    sp.add_argument("--seq-level", action="store_true", help="add sequence-level KD on the teacher's top beam (hurt in the ablation)")
    sp.add_argument("--int4-group-size", type=int, default=64)
    sp.add_argument("--groups", type=int, default=4)
    sp.add_argument("--prune-step", type=float, default=0.1)
    sp.add_argument("--protect-top", type=int, default=0, help="leave the N most sensitive units unpruned")
    sp.set_defaults(fn=cmd_compress)
    from .serve import add_parser as add_serve_parser  # `edge-gr serve` lives in server/serve.py

    add_serve_parser(sub)
    from .export.cli import add_parser as add_export

    add_export(sub)
    from .build import add_parser as add_build  # `edge-gr build`: data -> bundle in one command

    add_build(sub)
    from .nas.search import add_parser as add_nas  # `edge-gr nas`: the device student's architecture

    add_nas(sub)
    from .registry_cli import add_parser as add_registry  # `edge-gr registry ...` (issue #6)

    add_registry(sub)
    from .shard.cli import add_parser as add_shard  # `edge-gr shard-plan` (issue #15)

    add_shard(sub)
    from .keys_cli import add_parser as add_keys  # `edge-gr keys ...`, `edge-gr device ...` (signed updates)

    add_keys(sub)
    _add_plugins(sub)
    return p


def _add_plugins(sub) -> None:
    # Packages layered on top of server/ (device_sim: `edge-gr fleet`, `edge-gr fl`) register
    # their subcommands through the "edge_gr.cli" entry-point group, so server never imports them.
    from importlib.metadata import entry_points

    for ep in entry_points(group="edge_gr.cli"):
        try:
            add = ep.load()
        except ImportError as e:  # a broken optional plugin must not take the whole CLI down
            print(f"edge-gr: warning: subcommands of {ep.value} unavailable ({e})", file=sys.stderr)
            continue
        add(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except EdgeGRError as e:  # bad input and bad files become EdgeGRErrors where they are read; anything else is a bug and keeps its trace
        msg = " ".join(str(e).splitlines())  # one line, even when it quotes a backend's multi-line message
        print(f"edge-gr: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-gr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
