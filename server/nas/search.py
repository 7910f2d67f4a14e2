"""Multi-objective NAS with Optuna (NSGA-II): quality vs p99 latency measured on the exported bundle.

Every trial: sample an architecture (:class:`~server.nas.space.SearchSpace`), distil it briefly from the
teacher (:func:`server.compress.distill.distill`, the data stream of the teacher's recipe), export it as
an ONNX Runtime **int8** variant (what ships), load it with the device runtime at **one thread** and
time one query at a time (lean decoder step). Objectives: validation quality (maximise) and p99 ms
(minimise); constraints (``Trial.set_constraint``): p99 <= ``max_p99_ms``, size <= ``max_mb``.
Every trial's measurements are user attributes, so the study (a ``JournalStorage`` file several
workers can share) is the record. The device student is the feasible Pareto trial with the lowest

    L = L_task + l1 * p99_ms + l2 * energy_mJ + l3 * size_MB,   L_task = 1 - quality / teacher quality,

energy = p50 on the host / the phone tier's relative CPU speed x its active CPU power (``phone``:
``device_sim/phones/*.toml`` values). Optuna prunes only single-objective studies, so there is no
early stopping of multi-objective trials here: each candidate gets the same short budget.

>>> cfg = NASConfig(trials=2); cfg.max_p99_ms
3.0
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .space import SearchSpace

__all__ = ["NASConfig", "run_nas", "MID_PHONE"]

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
    space: SearchSpace = field(default_factory=SearchSpace)
    train: object = None   # server.train.TrainConfig of each candidate's distillation (default: the preset's student_train)
    progress: bool = True


def _quality(task: str, hits: list[list[str]], rel: list[set]) -> float:
    from ..metrics import rank_metrics

    return rank_metrics(hits, rel)["recall@10" if task == "retrieval" else "ndcg@10"]


def _measure(gm, task: str, inputs: list, rel: list, cfg: NASConfig, beam: int, tmp: Path) -> dict:
    import edge_gr

    from ..export.bundle import export_bundle

    path = export_bundle(gm, tmp / "bundle", [("onnxruntime", "int8")], model_version="nas")
    r = edge_gr.load(path, threads=1)
    q = _quality(task, [[h.item_id for h in hs] for hs in r.search_many(inputs, 10, beam=beam)], rel)
    lat = inputs[: cfg.latency_queries]
    for x in lat[:3]:
        r.search(x, 10, beam=beam)
    ts = []
    for x in lat:
        t = time.perf_counter()
        r.search(x, 10, beam=beam)
        ts.append((time.perf_counter() - t) * 1e3)
    p50, p99 = float(np.percentile(ts, 50)), float(np.percentile(ts, 99))
    mb = r.manifest.variants[0].size / 1e6
    energy = p50 / cfg.phone["speed"] * cfg.phone["active_cpu_w"]  # ms x W = mJ
    return {"quality": q, "p50_ms": p50, "p99_ms": p99, "size_mb": mb, "energy_mj": energy, "threads": r.threads,
            "params": gm.model.n_params()}


def run_nas(teacher, data, task: str, cfg: NASConfig, out_dir: str | Path, *, sampler=None, train=None,
            peers: dict | None = None) -> dict:
    """Run (or resume) the study in ``out_dir`` (``study.log`` journal); writes ``nas.json``, ``pareto.png``
    and ``student.json`` (the chosen architecture); returns the ``nas.json`` document."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from ..build import _eager, validation_inputs
    from ..compress.distill import DistillConfig, distill

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs, rel = validation_inputs(task, data, cfg.eval_queries)
    teacher_q = _quality(task, _eager(teacher, task, inputs), rel)
    train = train or cfg.train
    src = data.split() if task == "rec" else data

    def objective(trial) -> tuple[float, float]:
        scfg, beam = cfg.space.sample(trial)
        scfg = replace(scfg, max_len=teacher.model.cfg.max_len)
        gm = distill(teacher, scfg, src, DistillConfig(alpha=0.5, temperature=2.0), replace(train, progress=False), sampler=sampler)
        gm.model.cpu().eval()
        with tempfile.TemporaryDirectory() as td:
            m = _measure(gm, task, inputs, rel, cfg, beam, Path(td))
        m["loss"] = (1 - m["quality"] / teacher_q if teacher_q else 1.0) + cfg.l1 * m["p99_ms"] + cfg.l2 * m["energy_mj"] + cfg.l3 * m["size_mb"]
        m["config"] = {k: v for k, v in scfg.to_dict().items() if k in ("d_model", "n_heads", "n_enc_layers", "n_dec_layers", "ffn_mult", "max_len")}
        m["beam"] = beam
        m["constraints"] = [(m["p99_ms"] - cfg.max_p99_ms) if cfg.max_p99_ms else 0.0, (m["size_mb"] - cfg.max_mb) if cfg.max_mb else 0.0]
        for k, v in m.items():
            trial.set_user_attr(k, v)
        for key, value in zip(("p99_ms_over_budget", "mb_over_budget"), m["constraints"]):
            trial.set_constraint(key, value)  # <= 0 is feasible (Optuna 5: read by NSGA-II)
        return m["quality"], m["p99_ms"]

    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=f"edge-gr-{task}", storage=storage, load_if_exists=True, directions=["maximize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(50, cfg.trials // 2))))
    done = len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    if cfg.trials > done:
        study.optimize(objective, n_trials=cfg.trials - done, show_progress_bar=cfg.progress)
    trials = [dict(number=t.number, **t.user_attrs) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = {t.number for t in study.best_trials}
    for t in trials:
        t["pareto"] = t["number"] in front
        t["feasible"] = all(c <= 0 for c in t["constraints"])
    pool = [t for t in trials if t["pareto"] and t["feasible"]] or [t for t in trials if t["pareto"]]
    best = min(pool, key=lambda t: t["loss"])
    doc = {"task": task, "teacher_quality": teacher_q, "quality_metric": "recall@10" if task == "retrieval" else "ndcg@10",
           "config": {k: v for k, v in asdict(cfg).items() if k not in ("train", "space")}, "space": cfg.space.to_dict(),
           "train": asdict(train), "trials": trials, "chosen": best["number"], "peers": peers or {}}
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
    ax.scatter([t["p99_ms"] for t in ts], [t["quality"] for t in ts], c=["C1" if t["pareto"] else "0.6" for t in ts], s=18,
               label="candidates (orange: Pareto front)")
    best = next(t for t in ts if t["number"] == doc["chosen"])
    ax.scatter([best["p99_ms"]], [best["quality"]], marker="*", s=180, c="C3", label=f"chosen (trial {best['number']})")
    ax.axhline(doc["teacher_quality"], color="C2", ls=":", label="teacher (eager fp32)")
    if doc["config"].get("max_p99_ms"):
        ax.axvline(doc["config"]["max_p99_ms"], color="red", ls="--", lw=1, label="p99 budget")
    for name, pv in (doc.get("peers") or {}).items():
        ax.scatter([pv["p99_ms"]], [pv["quality"]], marker="s", s=40, label=name)
    ax.set(xlabel="p99 ms, exported ONNX Runtime int8, 1 thread", ylabel=doc["quality_metric"] + " (validation)",
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
    sp.add_argument("--trials", type=int, default=24)
    sp.add_argument("--max-p99-ms", type=float, default=3.0)
    sp.add_argument("--max-mb", type=float, default=None)
    sp.add_argument("--eval-queries", type=int, default=300)
    sp.add_argument("--epochs", type=int, default=None, help="override the preset's student epochs (each candidate's brief budget)")
    sp.add_argument("--device", default=None, help="torch device of the candidates' training (default: cuda if available)")
    sp.set_defaults(fn=_cmd)


def _cmd(args) -> None:
    from ..build import BuildSpec, _load, _presets
    from ..generative import GenerativeModel

    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = BuildSpec(task=args.task, data=args.data, out="", preset=args.preset, device=args.device)
    p = _presets(spec)
    teacher = GenerativeModel.load(args.checkpoint, device=args.device)
    train = replace(p.student_train or p.train, device=args.device)
    if args.epochs:
        train = replace(train, epochs=args.epochs)
    cfg = NASConfig(trials=args.trials, max_p99_ms=args.max_p99_ms, max_mb=args.max_mb, eval_queries=args.eval_queries)
    doc = run_nas(teacher, _load(spec, p), args.task, cfg, args.out, sampler=getattr(p, "sampler", None), train=train)
    best = next(t for t in doc["trials"] if t["number"] == doc["chosen"])
    print(f"{len(doc['trials'])} candidates measured; chosen trial {best['number']}: {best['config']} beam {best['beam']}, "
          f"{doc['quality_metric']} {best['quality']:.3f} (teacher {doc['teacher_quality']:.3f}), p99 {best['p99_ms']:.2f} ms, "
          f"{best['size_mb']:.2f} MB")
    print(f"wrote {args.out}/nas.json, pareto.png, student.json  (edge-gr build ... --student-config {args.out}/student.json)")
