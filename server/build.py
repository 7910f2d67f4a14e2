"""The one path from a catalogue to a phone: data -> IDs -> teacher -> student -> export -> verify -> bundle.

Each stage is a function that returns its artifact and records, in the work folder, the
hash of everything it was made from; a stage whose record matches is skipped (``WORK/stage-<name>.json``), so a second
``edge-gr build`` with the same inputs only re-checks, and changing one input (the data,
the preset, the variants) re-runs that stage and the ones after it.

    edge-gr build --task retrieval --data FOLDER --out bundle/ [--preset tiny|demo|full] [--device cuda]
                  [--variants onnxruntime:fp32@teacher,onnxruntime:int8@student] [--work bundle.build/]
                  [--teacher CKPT] [--no-student] [--force] [--encrypt-key data.key]

``--out`` is checked before any stage runs: an existing folder is replaced only if it is a previous
``edge-gr build`` output with nothing added (else refused unless ``--force``). The bundle is exported
and verified beside it, then swapped in, so a failed verification leaves the previous bundle.

Stages: ``ids`` (semantic IDs), ``teacher`` (or ``--teacher CKPT``: an already trained one),
``student`` (the preset's smaller model distilled from the teacher on the same data stream,
:func:`server.compress.distill.distill`), ``export+verify``. By default the bundle holds the
teacher at fp32 and the student at int8 (the backend quantizes the student's fp32 weights,
:mod:`server.compress.recipe`); ``--variants`` picks others (``@teacher`` / ``@student``).

Verification loads every exported variant with the device runtime (``edge_gr.load``) and
compares it on the validation queries with the eager model it was exported from: top-10
overlap, Recall@10 and its ratio to the eager teacher, and for quantized variants the top-10
overlap with the reference quantizer applied to the same weights (a quality check of the
backend's quantizer). These go into the manifest (``variants[i].metrics``) and
``WORK/verify.json``. A variant whose overlap falls below ``min_overlap`` fails the build.

>>> build(BuildSpec(task="retrieval", data="my_docs/", out="bundle/"))   # doctest: +SKIP
PosixPath('bundle')
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from edge_gr.errors import EdgeGRError

__all__ = ["BuildSpec", "BuildError", "build", "DEFAULT_BUILD_VARIANTS"]

# bumped when the exporters write different files (re-exports bundles built by an older edge-gr):
# 2026-12-01 "step" = variants gain the lean decoder step graph
EXPORT_REVISION = "2026-12-01-step"
DEFAULT_BUILD_VARIANTS: tuple[tuple[str, str, str], ...] = (("onnxruntime", "fp32", "teacher"), ("onnxruntime", "int8", "student"))


class BuildError(EdgeGRError):
    """A build stage produced something that fails its check."""


@dataclass
class BuildSpec:
    task: str                                    # rec | retrieval
    data: str                                    # ml-1m | ml-100k | bible | a folder (see docs/data.md)
    out: str                                     # the bundle folder to write
    preset: str = "demo"                         # model / training size (server.pipeline presets)
    variants: tuple[tuple, ...] | None = None    # (backend, precision, source); None: DEFAULT_BUILD_VARIANTS (teacher only without a student)
    device: str = "cpu"                          # torch device of the training stages
    teacher: str | None = None                   # an already trained teacher checkpoint (skips the teacher stage)
    student: bool = True                         # distil the preset's student
    stop_after: str | None = None                # ids | teacher | student: train here (e.g. on a GPU host), export elsewhere
    student_config: str | None = None            # a student.json (edge-gr nas) replacing the preset's student
    student_minutes: float | None = None         # cap of the student's training time (default: the preset's)
    work: str | None = None                      # stage artifacts (default: OUT.build next to OUT)
    min_overlap: float = 0.5                     # verify: a variant's top-10 overlap with eager below this fails
    verify_queries: int = 200
    progress: bool = True
    force: bool = False                          # replace ``out`` even if it is not a previous build output
    encrypt_key: str | None = None               # a data key file: encrypt the variants' model files (edge_gr.sealed)
    log: list = field(default_factory=list, compare=False, repr=False)


def _hash(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _data_fingerprint(data: str) -> str:
    """Hash of a data folder's files (names, sizes, content), or of a built-in data set's name."""
    folder = Path(data)
    if not folder.is_dir():
        return _hash("builtin", data)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


class _Stages:
    """Runs stages, skipping those whose recorded input hash matches (``WORK/stage-<name>.json``)."""

    def __init__(self, work: Path, spec: BuildSpec):
        self.work, self.spec = work, spec
        work.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, key: str, make: Callable[[], object], exists: Callable[[], bool]) -> bool:
        rec = self.work / f"stage-{name}.json"
        if rec.is_file() and exists():
            try:
                if json.loads(rec.read_text()).get("key") == key:
                    self._say(f"{name}: up to date (inputs {key}), skipped")
                    return False
            except json.JSONDecodeError:
                pass
        t = time.time()
        self._say(f"{name}: running")
        make()
        from edge_gr.delta import write_text_atomic

        write_text_atomic(rec, json.dumps({"key": key, "seconds": time.time() - t}))
        self._say(f"{name}: done in {time.time() - t:.1f} s")
        return True

    def _say(self, msg: str) -> None:
        self.spec.log.append(msg)
        if self.spec.progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold cyan]edge-gr build[/] {msg}")


def _presets(spec: BuildSpec):
    from .pipeline import REC_PRESETS, RETRIEVAL_PRESETS

    if spec.task not in ("rec", "retrieval"):
        raise BuildError(f"unknown task {spec.task!r}", hint="use --task rec or --task retrieval")
    table = REC_PRESETS if spec.task == "rec" else RETRIEVAL_PRESETS
    if spec.preset not in table:
        raise BuildError(f"unknown preset {spec.preset!r}", hint=f"use one of {', '.join(table)}")
    p = replace(table[spec.preset], dataset=spec.data)
    p.train = replace(p.train, device=spec.device, progress=spec.progress)
    if spec.student_config:  # e.g. the architecture `edge-gr nas` chose (student.json)
        from .model import GRConfig

        try:
            doc = json.loads(Path(spec.student_config).read_text())
            p.student = GRConfig(**{k: v for k, v in doc["config"].items() if k in GRConfig.__dataclass_fields__ and k != "levels"})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise BuildError(f"{spec.student_config} is not a student config ({type(e).__name__}: {e})",
                             hint="pass the student.json that `edge-gr nas` writes") from None
    return p


def _load(spec: BuildSpec, p):
    from .pipeline import load_rec_data, load_retrieval_data

    return load_rec_data(p) if spec.task == "rec" else load_retrieval_data(p)


def validation_inputs(task: str, data, n: int):
    """``n`` validation inputs and their relevant ids (never the test split): texts or training histories."""
    if task == "retrieval":
        qs = (data.valid or data.test)[:n]
        return [q.text for q in qs], [q.relevant for q in qs]
    split = data.split()
    users = list(split.valid_target)[:n]
    return [split.train[u] for u in users], [{split.valid_target[u]} for u in users]


def _eager(gm, task: str, inputs) -> list[list[str]]:
    out = gm.rank_texts(inputs, 10, beam=20) if task == "retrieval" else gm.rank(inputs, 10, beam=20)
    return [[i for i, _ in r] for r in out]


def _overlap(got: list[list[str]], ref: list[list[str]]) -> float:
    return sum(len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(got, ref)) / max(1, len(ref))


def _verify(spec: BuildSpec, sources: dict, bundle: Path, data) -> dict:
    """Every variant through the device runtime vs the eager model it came from, on validation inputs."""
    import edge_gr
    from edge_gr.bundle import load_manifest

    from .compress.recipe import QuantRecipe
    from .compress.variants import reference_model, with_recipe
    from .metrics import rank_metrics

    inputs, rel = validation_inputs(spec.task, data, spec.verify_queries)
    eager = {name: _eager(gm, spec.task, inputs) for name, gm in sources.items()}
    eager_m = {name: rank_metrics(ids, rel) for name, ids in eager.items()}
    teacher_r = eager_m["teacher"]["recall@10"] if "teacher" in eager_m else None
    out = {"n": len(inputs), "eager": eager_m, "variants": {}}
    for v in load_manifest(bundle).variants:
        src = v.source.get("name", "teacher")
        r = edge_gr.load(bundle, variant=v.name, key_provider=_keys(spec))
        got = [[h.item_id for h in hs] for hs in r.search_many(inputs, k=10, beam=20)]
        m = rank_metrics(got, rel)
        row = {"source": src, "overlap@10": _overlap(got, eager[src]), "recall@10": m["recall@10"], "mrr@10": m["mrr@10"],
               "recall@10_ratio_to_teacher": m["recall@10"] / teacher_r if teacher_r else None, "bytes": v.size}
        if v.precision != "fp32":
            ref = reference_model(with_recipe(sources[src], QuantRecipe(v.precision)))
            row["overlap@10_reference_quantizer"] = _overlap(got, _eager(ref, spec.task, inputs))
        out["variants"][v.name] = row
    bad = {n: v["overlap@10"] for n, v in out["variants"].items() if v["overlap@10"] < spec.min_overlap}
    if bad:
        raise BuildError(f"exported variants disagree with their eager models: top-10 overlap {bad}",
                         hint=f"re-export, drop those variants, or lower --min-overlap (now {spec.min_overlap})")
    return out


def _keys(spec: BuildSpec):
    """The key provider verification loads a sealed bundle with (None: the bundle is clear)."""
    if not spec.encrypt_key:
        return None
    from edge_gr.sealed import FileKeyProvider

    return FileKeyProvider(spec.encrypt_key)


def _write_metrics(bundle: Path, metrics: dict[str, dict]) -> None:
    """Record verification metrics per variant in the manifest (the manifest lists no hash of itself)."""
    from edge_gr.bundle import MANIFEST, BundleManifest, load_manifest
    from edge_gr.delta import write_text_atomic

    m = load_manifest(bundle)
    variants = [replace(v, metrics={**v.metrics, **metrics.get(v.name, {})}) for v in m.variants]
    doc = replace(m, variants=variants).to_dict()
    write_text_atomic(bundle / MANIFEST, json.dumps(doc, indent=1))
    BundleManifest.from_dict(json.loads((bundle / MANIFEST).read_text()))  # still a valid manifest


def _variants(spec: BuildSpec, p) -> tuple[tuple[str, str, str], ...]:
    has_student = spec.student and getattr(p, "student", None) is not None
    vs = tuple(tuple(v) for v in (spec.variants or DEFAULT_BUILD_VARIANTS))
    if spec.variants is None and not has_student:
        vs = tuple((b, pr, "teacher") for b, pr, _ in vs)  # no student: the teacher at every precision
    out = []
    for v in vs:
        b, pr, src = (tuple(v) + (None,))[:3]
        src = src or ("student" if has_student and pr != "fp32" else "teacher")
        if src not in ("teacher", "student") or (src == "student" and not has_student):
            raise BuildError(f"variant {b}:{pr}@{src}: the sources are teacher" + (" and student" if has_student else ""),
                             hint="use @teacher or @student" if has_student else "drop --no-student or use @teacher")
        out.append((b, pr, src))
    return tuple(out)


def build(spec: BuildSpec) -> Path:
    """Run every stage of ``spec`` (skipping the up-to-date ones); returns the bundle folder, or the work
    folder when ``spec.stop_after`` ends the run early (copy it next to the data elsewhere and run again:
    the finished stages are skipped there)."""
    from edge_gr.delta import write_text_atomic
    from edge_gr.fsutil import output_folder
    from edge_gr.ids import SemanticIds

    from .compress.distill import DistillConfig, distill
    from .export.bundle import bundle_files, check_bundle_out, export_bundle
    from .generative import GenerativeModel
    from .pipeline import rec_ids, retrieval_ids
    from .train import train_rec, train_retrieval

    p = _presets(spec)
    variants = _variants(spec, p)
    out = Path(spec.out)
    work = Path(spec.work) if spec.work else out.with_name(out.name + ".build")
    if work.resolve() == out.resolve():
        raise BuildError("the work folder cannot be the bundle folder", hint="pass another --work")
    if spec.stop_after is None:
        check_bundle_out(out, "build", force=spec.force)  # refuse now, not after an hour of training
    st = _Stages(work, spec)
    data = _load(spec, p)
    data_key = _data_fingerprint(spec.data)

    if spec.teacher:
        teacher = GenerativeModel.load(spec.teacher)
        teacher_key = _hash("given", _data_fingerprint(spec.teacher), data_key)  # the student trains on the data too
        st._say(f"teacher: given ({spec.teacher}), ids and teacher stages skipped")
    else:
        ids_path = work / "ids.json"
        ids_key = _hash(data_key, spec.task, {k: getattr(p, k) for k in ("levels", "id_method") if hasattr(p, k)},
                        getattr(p, "id_source", None), getattr(p, "collab_dim", None))

        def make_ids():
            ids = rec_ids(data, data.split(), p) if spec.task == "rec" else retrieval_ids(data, p)
            ids.save(ids_path)

        st.run("ids", ids_key, make_ids, ids_path.is_file)
        ids = SemanticIds.load(ids_path)
        if spec.stop_after == "ids":
            return work

        teacher_dir = work / "teacher"
        teacher_key = _hash(ids_key, asdict(p.model), {k: v for k, v in asdict(p.train).items() if k not in ("progress", "device")},
                            asdict(p.sampler) if getattr(p, "sampler", None) else None, getattr(p, "vocab_size", None))

        def make_teacher():
            if spec.task == "rec":
                gm, _ = train_rec(data.split(), data.items, ids, replace(p.model), p.train)
            else:
                gm, _ = train_retrieval(data, ids, replace(p.model), p.train, vocab_size=p.vocab_size, sampler=p.sampler,
                                        index_windows=p.index_windows)
            gm.meta["dataset"] = spec.data
            gm.model.to("cpu")
            gm.save(teacher_dir)

        st.run("teacher", teacher_key, make_teacher, lambda: (teacher_dir / "edge_gr_model.json").is_file())
        teacher = GenerativeModel.load(teacher_dir)
    if spec.stop_after == "teacher":
        return work
    sources = {"teacher": teacher}

    stage_key = teacher_key
    if any(src == "student" for *_, src in variants):
        student_dir = work / "student"
        strain = replace(p.student_train or p.train, device=spec.device, progress=spec.progress)
        if spec.student_minutes:
            strain = replace(strain, max_minutes=spec.student_minutes)
        dcfg = DistillConfig(alpha=0.5, temperature=2.0)  # KD + hard labels: the compress default (docs/compression.md)
        stage_key = _hash(teacher_key, asdict(p.student), {k: v for k, v in asdict(strain).items() if k not in ("progress", "device")},
                          asdict(dcfg), asdict(p.sampler) if getattr(p, "sampler", None) else None)

        def make_student():
            teacher.model.to(spec.device)
            # retrieval: one text length per bundle; rec: a student may read a shorter history (edge-gr nas searches it)
            tmax = teacher.model.cfg.max_len
            st_cfg = replace(p.student, max_len=min(p.student.max_len, tmax) if spec.task == "rec" else tmax)
            gm = distill(teacher, st_cfg, data.split() if spec.task == "rec" else data, dcfg, strain, sampler=getattr(p, "sampler", None))
            teacher.model.to("cpu")
            gm.meta["dataset"] = spec.data
            gm.model.to("cpu")
            gm.save(student_dir)

        st.run("student", stage_key, make_student, lambda: (student_dir / "edge_gr_model.json").is_file())
        sources["student"] = GenerativeModel.load(student_dir)
    if spec.stop_after == "student":
        return work

    export_key = _hash(stage_key, [list(v) for v in variants], EXPORT_REVISION)
    if spec.encrypt_key:  # a sealed bundle is another export (the key id, never the key, enters the stage key)
        from edge_gr.sealed import load_key

        export_key = _hash(export_key, "sealed", load_key(spec.encrypt_key).key_id)
    verify_path = work / "verify.json"

    def make_bundle():
        with output_folder(out, "build", force=spec.force, legacy=bundle_files) as stage:  # verified before it replaces out
            export_bundle(teacher, stage, variants, sources=sources, main_name="teacher", model_version=f"build-{export_key}",
                          command="build", encrypt=spec.encrypt_key)
            rep = _verify(spec, sources, stage, data)
            _write_metrics(stage, rep["variants"])
        write_text_atomic(verify_path, json.dumps(rep, indent=1))

    st.run("export+verify", _hash(export_key, spec.min_overlap, spec.verify_queries), make_bundle,
           lambda: (out / "manifest.json").is_file() and verify_path.is_file())
    return out


def add_parser(sub) -> None:
    """Register ``edge-gr build``."""
    sp = sub.add_parser("build", help="data -> IDs -> teacher -> exported, verified bundle (stages skipped when up to date)")
    sp.add_argument("--task", choices=["rec", "retrieval"], required=True)
    sp.add_argument("--data", required=True, help="ml-1m | ml-100k | bible | a folder (docs.jsonl[.gz] ... or items + interactions)")
    sp.add_argument("--out", required=True, help="bundle folder to write (replaced atomically; an existing folder only if it is "
                                                 "a previous build, unless --force)")
    sp.add_argument("--force", action="store_true", help="replace --out even if it holds files edge-gr did not write")
    sp.add_argument("--preset", choices=["tiny", "demo", "full"], default="demo")
    sp.add_argument("--variants", default=None, help="BACKEND:PRECISION[@teacher|@student],... "
                    "(default onnxruntime:fp32@teacher,onnxruntime:int8@student)")
    sp.add_argument("--checkpoint", "--teacher", dest="teacher", default=None, help="an already trained teacher checkpoint (skips the ids and teacher stages)")
    sp.add_argument("--no-student", action="store_true", help="export the teacher only (no distillation stage)")
    sp.add_argument("--stop-after", choices=["ids", "teacher", "student"], default=None,
                    help="stop after this stage (train on a GPU host, then run again with the same --work where the exporters are)")
    sp.add_argument("--device", default=None, help="torch device for training (default: cuda if available, else cpu)")
    sp.add_argument("--work", default=None, help="folder for stage artifacts (default OUT.build)")
    sp.add_argument("--min-overlap", type=float, default=0.5, help="fail if a variant's top-10 overlap with the eager model is lower")
    sp.add_argument("--verify-queries", type=int, default=200, help="validation queries (users) each variant is checked on")
    sp.add_argument("--student-config", default=None, help="student.json from `edge-gr nas` (replaces the preset's student)")
    sp.add_argument("--student-minutes", type=float, default=None, help="cap the student's training time (minutes; part of the stage key)")
    sp.add_argument("--encrypt-key", default=None, metavar="FILE",
                    help="encrypt every variant's model files (AES-256-GCM) with this data key file (edge_gr.sealed.new_key)")
    sp.set_defaults(fn=_cmd_build)


def _cmd_build(args) -> None:
    from .export.bundle import parse_variants

    try:
        variants = tuple(tuple(v) for v in parse_variants(args.variants)) if args.variants else None
    except ValueError as e:
        raise BuildError(str(e), hint="e.g. --variants onnxruntime:fp32@teacher,onnxruntime:int8@student") from None
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = BuildSpec(task=args.task, data=args.data, out=args.out, preset=args.preset, variants=variants, device=args.device,
                     work=args.work, min_overlap=args.min_overlap, teacher=args.teacher, student=not args.no_student,
                     stop_after=args.stop_after, verify_queries=args.verify_queries, student_config=args.student_config,
                     student_minutes=args.student_minutes, force=args.force, encrypt_key=args.encrypt_key)
    out = build(spec)
    if args.stop_after:
        print(f"stopped after {args.stop_after}; stage artifacts in {out}")
        return
    rep = json.loads((Path(spec.work or out.with_name(out.name + ".build")) / "verify.json").read_text())
    for name, v in rep["variants"].items():
        ratio = v["recall@10_ratio_to_teacher"]
        print(f"{name:<24} from {v['source']:<8} overlap@10 {v['overlap@10']:.3f}  recall@10 {v['recall@10']:.3f}"
              + (f" ({ratio:.3f} of the teacher)" if ratio is not None else ""))
    print(f"wrote {out}")
