"""Multi-objective NAS with Optuna (NSGA-II): quality vs p99 latency measured on the exported bundle.

Every trial: sample an architecture (:class:`~server.nas.space.SearchSpace`), export the untrained
candidate as an ONNX Runtime **int8** variant and time it (the latency *probe*: the compute of a
fixed graph does not depend on its weights), distil it from the teacher (:func:`server.compress.distill.distill`,
the data stream of the teacher's recipe), export the trained candidate, load it with the device
runtime at **one thread** and measure quality and latency one query at a time (lean decoder step).
Objectives: validation quality (maximise) and p99 ms (minimise); constraints (``Trial.set_constraint``):
p99 <= ``max_p99_ms``, size <= ``max_mb``. The device student is the feasible Pareto trial with the lowest

    L = L_task + l1 * p99_ms + l2 * energy_mJ + l3 * size_MB,   L_task = 1 - quality / teacher quality,

energy = p50 on the host / the phone tier's relative CPU speed x its active CPU power (``phone``:
``device_sim/phones/*.toml`` values).

**Early stopping.** Optuna prunes only single-objective studies, so successive halving runs on the
scalarised ``L`` in a companion single-objective study (``<study>-halving``, same storage) with
Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner`: after each epoch a candidate reports
``L`` (its validation quality during training + the probe's latency terms) and stops when the pruner
says it is not in the top ``1/eta`` of its rung. A stopped candidate is still exported and measured
(``pruned_at_epoch`` in its record), so every trial is a measured point of the front.

**Several workers** share one study through ``JournalStorage`` (``study.log``): ``edge-gr nas --workers N``
starts N processes, each pinned to its own CPU cores so that their timings do not share a core.
Every trial's measurements are user attributes, so the study is the record.

>>> cfg = NASConfig(trials=2); cfg.max_p99_ms
3.0
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .space import ARCH_KEYS, SearchSpace

__all__ = ["NASConfig", "run_nas", "choose", "MID_PHONE", "plot"]

MID_PHONE = {"name": "mid", "speed": 1.06, "active_cpu_w": 2.0}  # device_sim/phones/mid.toml (Pixel 8 class)


@dataclass
class NASConfig:
    trials: int = 24
    seed: int = 0
    max_p99_ms: float | None = 3.0
    max_mb: float | None = None
    latency_queries: int = 100
    eval_queries: int = 300
    l1: float = 0.02       # per ms of p99
    l2: float = 0.002      # per mJ per query on the phone tier
    l3: float = 0.005      # per MB of the variant
    phone: dict = field(default_factory=lambda: dict(MID_PHONE))
    space: SearchSpace | None = None  # None: SearchSpace.for_task(task, teacher max_len)
    train: object = None   # server.train.TrainConfig of each candidate's distillation (default: the preset's student_train)
    halving: bool = True   # successive halving on the scalarised L (epochs are the resource)
    min_epochs: int = 1    # first rung
    eta: int = 3           # reduction factor: the top 1/eta of a rung go on
    budget_minutes: float | None = None  # no new trial starts after this (a running one finishes)
    progress: bool = True


def _quality(task: str, hits: list[list[str]], rel: list[set]) -> float:
    from ..metrics import rank_metrics

    return rank_metrics(hits, rel)["recall@10" if task == "retrieval" else "ndcg@10"]


def machine() -> dict:
    """The CPU the timings ran on (model, flags that matter for int8 kernels, the cores this process may use)."""
    info = {"cpu": platform.processor() or platform.machine(), "cores_visible": len(os.sched_getaffinity(0))}
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        info["cpu"] = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
        flags = next(x.split(":", 1)[1].split() for x in lines if x.startswith("flags"))
        info["flags"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    except (OSError, StopIteration):
        pass
    return info


def _time(r, lat: list, beam: int) -> tuple[float, float]:
    for x in lat[:3]:
        r.search(x, 10, beam=beam)
    ts = []
    for x in lat:
        t = time.perf_counter()
        r.search(x, 10, beam=beam)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def _measure(gm, task: str, inputs: list, rel: list, cfg: NASConfig, beam: int, tmp: Path, *, quality: bool = True) -> dict:
    """Export ``gm`` as an ONNX Runtime int8 variant, load it at one thread: quality (optional) and latency."""
    import edge_gr

    from ..export.bundle import export_bundle

    path = export_bundle(gm, tmp / "bundle", [("onnxruntime", "int8")], model_version="nas")
    r = edge_gr.load(path, threads=1)
    out = {}
    if quality:
        out["quality"] = _quality(task, [[h.item_id for h in hs] for hs in r.search_many(inputs, 10, beam=beam)], rel)
    p50, p99 = _time(r, inputs[: cfg.latency_queries], beam)
    mb = r.manifest.variants[0].size / 1e6
    energy = p50 / cfg.phone["speed"] * cfg.phone["active_cpu_w"]  # ms x W = mJ
    return {**out, "p50_ms": p50, "p99_ms": p99, "size_mb": mb, "energy_mj": energy, "threads": r.threads, "params": gm.model.n_params()}


def choose(trials: list[dict]) -> dict:
    """The device student: the feasible Pareto trial with the lowest scalarised loss (any Pareto trial if none is feasible)."""
    pool = [t for t in trials if t["pareto"] and t["feasible"]] or [t for t in trials if t["pareto"]]
    return min(pool, key=lambda t: t["loss"])


def _fixed_terms(cfg: NASConfig, m: dict) -> float:
    return cfg.l1 * m["p99_ms"] + cfg.l2 * m["energy_mj"] + cfg.l3 * m["size_mb"]


def _studies(out: Path, task: str, cfg: NASConfig):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=f"edge-gr-{task}", storage=storage, load_if_exists=True, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(50, cfg.trials // 2))))
    # a resumed study (or another worker) must not replay the same random stream: offset the seed by what exists
    study.sampler = optuna.samplers.NSGAIISampler(seed=cfg.seed + 7919 * len(study.get_trials(deepcopy=False)),
                                                  population_size=max(4, min(50, cfg.trials // 2)))
    halving = optuna.create_study(study_name=f"edge-gr-{task}-halving", storage=storage, load_if_exists=True, direction="minimize",
                                  pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_epochs, reduction_factor=cfg.eta))
    return study, halving


def run_nas(teacher, data, task: str, cfg: NASConfig, out_dir: str | Path, *, sampler=None, train=None,
            peers: dict | None = None, optimize: bool = True) -> dict:
    """Run (or resume) the study in ``out_dir`` (``study.log`` journal); writes ``nas.json``, ``pareto.png``
    and ``student.json`` (the chosen architecture); returns the ``nas.json`` document. ``optimize=False``
    only summarises what the study holds (the parent of several workers)."""
    import optuna

    from ..build import _eager, validation_inputs
    from ..compress.distill import DistillConfig, distill, student_model
    from ..generative import GenerativeModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmax = teacher.model.cfg.max_len
    space = cfg.space or SearchSpace.for_task(task, tmax)
    inputs, rel = validation_inputs(task, data, cfg.eval_queries)
    teacher_q = _quality(task, _eager(teacher, task, inputs), rel)
    train = train or cfg.train
    src = data.split() if task == "rec" else data
    study, halving = _studies(out, task, cfg)

    def objective(trial) -> tuple[float, float]:
        scfg, beam = space.sample(trial, max_len=tmax)
        fresh = GenerativeModel(student_model(teacher, scfg), teacher.ids, teacher.items, tokenizer=teacher.tokenizer,
                                popularity=list(teacher.popularity))
        fresh.model.eval()
        with tempfile.TemporaryDirectory() as td:  # latency probe: the untrained candidate's exported graph
            probe = _measure(fresh, task, inputs, rel, cfg, beam, Path(td), quality=False)
        fixed = _fixed_terms(cfg, probe)
        rung = halving.ask() if cfg.halving else None
        if rung is not None:
            rung.set_user_attr("nas_trial", trial.number)

        def on_epoch(entry: dict) -> bool:
            if rung is None or entry.get("valid") is None:
                return False
            rung.report((1 - entry["valid"] / teacher_q if teacher_q else 1.0) + fixed, entry["epoch"])
            return rung.should_prune()

        t0 = time.time()
        gm = distill(teacher, scfg, src, DistillConfig(alpha=0.5, temperature=2.0), replace(train, progress=False), sampler=sampler,
                     on_epoch=on_epoch)
        log = gm.meta.get("log", [])
        gm.model.cpu().eval()
        with tempfile.TemporaryDirectory() as td:
            m = _measure(gm, task, inputs, rel, cfg, beam, Path(td))
        m["train_s"], m["epochs"] = time.time() - t0, len(log)
        m["pruned_at_epoch"] = len(log) if any(e.get("stopped_by") == "on_epoch" for e in log) else None
        m["probe_p99_ms"] = probe["p99_ms"]
        m["loss"] = (1 - m["quality"] / teacher_q if teacher_q else 1.0) + _fixed_terms(cfg, m)
        if rung is not None:
            if m["pruned_at_epoch"]:
                halving.tell(rung, state=optuna.trial.TrialState.PRUNED)
            else:
                halving.tell(rung, m["loss"])
        m["config"] = {k: v for k, v in scfg.to_dict().items() if k in ARCH_KEYS}
        m["beam"] = beam
        m["machine"] = machine()
        m["constraints"] = [(m["p99_ms"] - cfg.max_p99_ms) if cfg.max_p99_ms else 0.0, (m["size_mb"] - cfg.max_mb) if cfg.max_mb else 0.0]
        for k, v in m.items():
            trial.set_user_attr(k, v)
        for key, value in zip(("p99_ms_over_budget", "mb_over_budget"), m["constraints"]):
            trial.set_constraint(key, value)  # <= 0 is feasible (Optuna 5: read by NSGA-II)
        return m["quality"], m["p99_ms"]

    def complete() -> int:
        return len([t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE])

    if optimize and cfg.trials > complete():
        from optuna.study import MaxTrialsCallback

        study.optimize(objective, n_trials=cfg.trials - complete(), show_progress_bar=cfg.progress, catch=(RuntimeError, ValueError),
                       timeout=cfg.budget_minutes * 60 if cfg.budget_minutes else None,
                       callbacks=[MaxTrialsCallback(cfg.trials, states=(optuna.trial.TrialState.COMPLETE,))])
    trials = [dict(number=t.number, **t.user_attrs) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not trials:
        from edge_gr.errors import EdgeGRError

        raise EdgeGRError(f"the study in {out} has no finished candidate", hint="give it more --trials or a larger --budget")
    front = {t.number for t in study.best_trials}
    for t in trials:
        t["pareto"] = t["number"] in front
        t["feasible"] = all(c <= 0 for c in t["constraints"])
    best = choose(trials)
    doc = {"task": task, "teacher_quality": teacher_q, "quality_metric": "recall@10" if task == "retrieval" else "ndcg@10",
           "config": {k: v for k, v in asdict(cfg).items() if k not in ("train", "space")}, "space": space.to_dict(),
           "train": asdict(train), "trials": trials, "chosen": best["number"], "peers": peers or {},
           "pruned": sum(1 for t in trials if t.get("pruned_at_epoch")),
           "machine": best.get("machine") or machine()}  # where the candidates were timed (the study may come from another host)
    from ..io import write_json

    write_json(out / "nas.json", doc)
    write_json(out / "student.json", {"config": best["config"], "beam": best["beam"], "measured": {k: best[k] for k in (
        "quality", "p50_ms", "p99_ms", "size_mb", "energy_mj")}, "trial": best["number"]})
    plot(out / "nas.json")
    return doc


def plot(path: Path) -> Path:
    """Quality vs p99 on the runtime for every measured candidate; the front, the choice and the peers marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(path).read_text())
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ts = doc["trials"]
    full = [t for t in ts if not t.get("pruned_at_epoch")]
    cut = [t for t in ts if t.get("pruned_at_epoch")]
    ax.scatter([t["p99_ms"] for t in full], [t["quality"] for t in full], c=["C1" if t["pareto"] else "0.6" for t in full], s=18,
               label="candidates (orange: Pareto front)")
    if cut:
        ax.scatter([t["p99_ms"] for t in cut], [t["quality"] for t in cut], c=["C1" if t["pareto"] else "0.6" for t in cut], s=18,
                   marker="x", label="stopped early by successive halving")
    best = next(t for t in ts if t["number"] == doc["chosen"])
    ax.scatter([best["p99_ms"]], [best["quality"]], marker="*", s=180, c="C3", label=f"chosen (trial {best['number']})")
    ax.axhline(doc["teacher_quality"], color="C2", ls=":", label="teacher (eager fp32)")
    if doc["config"].get("max_p99_ms"):
        ax.axvline(doc["config"]["max_p99_ms"], color="red", ls="--", lw=1, label="p99 budget")
    peers = doc.get("peers") or {}
    for name, pv in peers.items():
        ax.scatter([pv["p99_ms"]], [pv["quality"]], marker="s", s=40, label=f"{name} (peer)")
    if peers and max(pv["p99_ms"] for pv in peers.values()) > 4 * max(t["p99_ms"] for t in ts):
        ax.set_xscale("log")  # a peer far slower than every candidate (dense MiniLM)
    cpu = (doc.get("machine") or {}).get("cpu", "")
    ax.set(xlabel=f"p99 ms, exported ONNX Runtime int8, 1 thread\n{cpu}", ylabel=doc["quality_metric"] + " (validation)",
           title=f"NAS ({doc['task']}): {len(ts)} measured candidates")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path).with_name("pareto.png")
    fig.savefig(out, dpi=120)
    return out


def add_parser(sub) -> None:
    """Register ``edge-gr nas``."""
    sp = sub.add_parser("nas", help="architecture search for the device student (latency measured on the exported bundle)")
    sp.add_argument("--task", choices=["rec", "retrieval"], required=True)
    sp.add_argument("--data", required=True, help="ml-1m | ml-100k | bible | a folder (as edge-gr build)")
    sp.add_argument("--checkpoint", required=True, help="the teacher checkpoint to distil candidates from")
    sp.add_argument("--out", required=True, help="folder for study.log (resumable), nas.json, pareto.png, student.json")
    sp.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo", help="the candidates' distillation budget")
    sp.add_argument("--trials", type=int, default=24, help="finished candidates to reach (over all workers)")
    sp.add_argument("--budget", type=float, default=None, metavar="MINUTES", help="start no new candidate after this many minutes")
    sp.add_argument("--workers", type=int, default=1, help="processes sharing the study (each pinned to its own CPU cores)")
    sp.add_argument("--max-p99-ms", type=float, default=3.0)
    sp.add_argument("--max-mb", type=float, default=None)
    sp.add_argument("--eval-queries", type=int, default=300)
    sp.add_argument("--epochs", type=int, default=None, help="override the preset's student epochs (each candidate's brief budget)")
    sp.add_argument("--steps-per-epoch", type=int, default=None, help="override the preset's steps per epoch (sampled streams)")
    sp.add_argument("--seed", type=int, default=0, help="sampler seed (worker i uses seed + i)")
    sp.add_argument("--eta", type=int, default=3, help="successive halving: the top 1/eta of each rung train on")
    sp.add_argument("--no-halving", action="store_true", help="train every candidate for the whole budget")
    sp.add_argument("--device", default=None, help="torch device of the candidates' training (default: cuda if available)")
    sp.set_defaults(fn=_cmd)


def _run(args: dict, optimize: bool = True, cores: list[int] | None = None, worker: int = 0) -> dict:
    from types import SimpleNamespace

    from ..build import BuildSpec, _load, _presets
    from ..generative import GenerativeModel

    a = SimpleNamespace(**args)
    if cores:
        import torch

        os.sched_setaffinity(0, cores)  # the worker's timings run on its own cores only
        torch.set_num_threads(len(cores))
    spec = BuildSpec(task=a.task, data=a.data, out="", preset=a.preset, device=a.device, progress=False)
    p = _presets(spec)
    teacher = GenerativeModel.load(a.checkpoint, device=a.device)
    train = replace(p.student_train or p.train, device=a.device, threads=len(cores) if cores else (p.student_train or p.train).threads)
    train = replace(train, eval_queries=min(train.eval_queries or a.eval_queries, a.eval_queries))  # the per-epoch check of halving
    if a.epochs:
        train = replace(train, epochs=a.epochs)
    if a.steps_per_epoch:
        train = replace(train, steps_per_epoch=a.steps_per_epoch)
    cfg = NASConfig(trials=a.trials, max_p99_ms=a.max_p99_ms, max_mb=a.max_mb, eval_queries=a.eval_queries, budget_minutes=a.budget,
                    halving=not a.no_halving, eta=a.eta, progress=a.workers <= 1,
                    seed=a.seed + worker)  # each worker its own stream, or they would all sample the same architectures
    return run_nas(teacher, _load(spec, p), a.task, cfg, a.out, sampler=getattr(p, "sampler", None), train=train, optimize=optimize)


def _cmd(args) -> None:
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.workers < 1:
        from edge_gr.errors import InputError

        raise InputError(f"--workers must be >= 1, got {args.workers}", hint="e.g. --workers 4")
    kw = {k: v for k, v in vars(args).items() if k != "fn"}
    if args.workers == 1:
        doc = _run(kw)
    else:  # N processes on one JournalStorage study, then one summary
        import multiprocessing as mp

        cpus = sorted(os.sched_getaffinity(0))
        per = max(1, len(cpus) // args.workers)
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_run, args=(kw, True, cpus[i * per:(i + 1) * per] if len(cpus) >= args.workers else None, i))
                 for i in range(args.workers)]
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        doc = _run(kw, optimize=False)
    best = next(t for t in doc["trials"] if t["number"] == doc["chosen"])
    print(f"{len(doc['trials'])} candidates measured ({doc['pruned']} stopped early); chosen trial {best['number']}: {best['config']} "
          f"beam {best['beam']}, {doc['quality_metric']} {best['quality']:.3f} (teacher {doc['teacher_quality']:.3f}), "
          f"p99 {best['p99_ms']:.2f} ms, {best['size_mb']:.2f} MB on {doc['machine'].get('cpu', '?')}")
    print(f"wrote {args.out}/nas.json, pareto.png, student.json  (edge-gr build ... --student-config {args.out}/student.json)")
