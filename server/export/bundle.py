"""Stage: write a device bundle (the one cloud -> device contract) from trained checkpoints.

A variant is ``BACKEND:PRECISION[@SOURCE]``: the backend's own quantizer applies the precision
(:data:`server.compress.recipe.BACKEND_RECIPES`) to the fp32 weights of the source checkpoint
(default: the main model; e.g. ``@student`` for a distilled student passed in ``sources``).
The manifest records, per variant, its precision, the backend recipe and the source checkpoint
(name, weights sha256, params, config, structural transforms).

>>> from server.generative import GenerativeModel
>>> gm = GenerativeModel.load("ckpt/")                                          # doctest: +SKIP
>>> export_bundle(gm, "bundle/", parse_variants("onnxruntime:fp32,onnxruntime:int8@student"),
...               sources={"student": GenerativeModel.load("student/")})         # doctest: +SKIP
PosixPath('bundle')

The folder is written beside ``out_dir`` and swapped in (:func:`edge_gr.fsutil.output_folder`); an existing
``out_dir`` is replaced only if it is a previous export (marker ``.edge-gr-output``, or a bundle holding
nothing but its manifest's files) or with ``force=True``; anything else raises ``InputError`` first.

With ``encrypt=`` (an :class:`edge_gr.sealed.DataKey`, a key file path, or ``(KeyProvider, key_id)``) every
variant's files (graphs, weights, programs) are encrypted with AES-256-GCM (:mod:`edge_gr.sealed`); the IDs,
index, catalogue, tokenizer and popularity stay clear. The device then needs ``edge_gr.load(..., key_provider=)``.

>>> export_bundle(gm, "bundle/", encrypt="data.key")                           # doctest: +SKIP
PosixPath('bundle')

>>> parse_variants("onnxruntime:int8, torch:fp32@teacher")
[VariantSpec(backend='onnxruntime', precision='int8', source=None), VariantSpec(backend='torch', precision='fp32', source='teacher')]
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Sequence

from edge_gr.bundle import MANIFEST, BundleWriter, RuntimeSpec, load_manifest, write_archive
from edge_gr.catalogue import catalogue_lines, index_bytes
from edge_gr.errors import InputError
from edge_gr.fsutil import check_output, output_folder

from ..compress.recipe import backend_recipe
from ..compress.transforms import describe
from ..generative import GenerativeModel
from ..model import GenerativeRetriever

__all__ = ["export_bundle", "EXPORTERS", "DEFAULT_VARIANTS", "parse_variants", "VariantSpec", "source_record", "bundle_files",
           "check_bundle_out"]


class VariantSpec(NamedTuple):
    """One variant to export: ``backend``, ``precision`` and the ``source`` checkpoint's name (None = the main model)."""

    backend: str
    precision: str
    source: str | None = None


def _exporter(module: str, fn: str) -> Callable[[GenerativeRetriever, Path, str], dict[str, str]]:
    def run(model, out_dir, precision):
        import importlib

        return getattr(importlib.import_module(f"server.export.{module}"), fn)(model, out_dir, precision)

    return run


# backend -> exporter(model, out_dir, precision) -> {role: file name in out_dir}
EXPORTERS: dict[str, Callable] = {
    "torch": _exporter("torch_pt2", "export_torch"),
    "onnxruntime": _exporter("onnx", "export_onnx"),
    "executorch": _exporter("executorch", "export_executorch"),
    "litert": _exporter("litert", "export_litert"),
}
DEFAULT_VARIANTS: list[VariantSpec] = [VariantSpec(b, p) for b, p in (
    ("executorch", "fp32"), ("executorch", "int8"), ("executorch", "int4"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
    ("litert", "fp32"), ("litert", "int8"), ("torch", "fp32"))]


def parse_variants(spec: str) -> list[VariantSpec]:
    """``"onnxruntime:fp32,executorch:int8@student"`` -> variant specs (checked against what each backend exports)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        head, _, source = part.partition("@")
        b, _, p = head.partition(":")
        if b not in EXPORTERS:
            raise ValueError(f"bad variant {part!r}: use BACKEND:PRECISION[@SOURCE] with BACKEND in {sorted(EXPORTERS)}")
        try:
            backend_recipe(b, p)
        except InputError as e:
            raise ValueError(f"bad variant {part!r}: {e.message}") from None
        out.append(VariantSpec(b, p, source or None))
    if not out:
        raise ValueError("no variant given: use BACKEND:PRECISION[@SOURCE],...")
    return out


def bundle_files(folder: Path) -> set[str] | None:
    """The files of a bundle written before output markers existed: its manifest and what it lists (None: no bundle)."""
    if not (folder / MANIFEST).is_file():
        return None
    return {MANIFEST} | {f.path for f in load_manifest(folder, verify=False).all_files()}


def check_bundle_out(out_dir: str | os.PathLike, command: str = "export", *, force: bool = False, archive: bool = False) -> None:
    """Raise :class:`InputError` if writing a bundle to ``out_dir`` (and, with ``archive``, ``<out_dir>.tar``) would
    replace something that is not a previous output of ``command`` (``force``: replace anyway)."""
    out = Path(out_dir)
    check_output(out, command, force=force, legacy=bundle_files)
    tar = out.with_name(out.name + ".tar")
    if archive and not force and (tar.is_symlink() or tar.exists()) and not _is_bundle_archive(tar):
        raise InputError(f"{tar} exists and is not a bundle archive edge-gr wrote",
                         hint="move it away, drop --archive, or pass --force (force=True) to replace it")


def _is_bundle_archive(path: Path) -> bool:
    import tarfile

    try:
        with tarfile.open(path) as tar:
            return path.is_file() and not path.is_symlink() and MANIFEST in tar.getnames()
    except (OSError, tarfile.TarError):
        return False


def _catalogue_jsonl(gm: GenerativeModel) -> bytes:
    return catalogue_lines((i.id, i.text, i.meta) for i in gm.items)


def source_record(name: str, gm: GenerativeModel) -> dict:
    """What the manifest says about a variant's source checkpoint (its fp32 weights' sha256 included)."""
    h = hashlib.sha256()
    for k, v in sorted(gm.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    rec = {"name": name, "sha256": h.hexdigest(), "params": gm.model.n_params(), "config": gm.model.cfg.to_dict(),
           "transforms": describe(gm.model)}
    comp = (gm.meta or {}).get("compress")
    if isinstance(comp, dict) and comp.get("kind"):
        rec["compress"] = comp["kind"]
    return rec


def _check_compatible(main: GenerativeModel, name: str, other: GenerativeModel) -> None:
    """A bundle has one set of IDs, one catalogue and one tokenizer for all its variants; a rec variant may read a
    shorter history than the main model (its ``static["max_len"]``), a retrieval variant reads the same text length."""
    a, b = main.model.cfg, other.model.cfg
    length_ok = b.max_len <= a.max_len if a.task == "rec" else a.max_len == b.max_len
    same = (a.task == b.task and tuple(a.levels) == tuple(b.levels) and length_ok and len(main.ids) == len(other.ids)
            and (main.ids.codes == other.ids.codes).all() and [i.id for i in main.items] == [i.id for i in other.items]
            and (main.tokenizer is None) == (other.tokenizer is None)
            and (main.tokenizer is None or main.tokenizer.to_str() == other.tokenizer.to_str()))
    if not same:
        raise InputError(f"source {name!r} does not share the main model's task, IDs, catalogue, tokenizer and max_len "
                         "(rec: at most the main model's)",
                         hint="export a student distilled from this teacher (edge-gr compress / edge-gr build), or a separate bundle")


def export_bundle(gm: GenerativeModel, out_dir: str | os.PathLike, variants: Sequence[VariantSpec | tuple] = tuple(DEFAULT_VARIANTS), *,
                  sources: Mapping[str, GenerativeModel] | None = None, main_name: str = "model",
                  metrics: dict[str, dict] | None = None, model_version: str | None = None, archive: bool = False,
                  force: bool = False, command: str = "export", encrypt=None) -> Path:
    """Export each variant of ``gm`` (or of a named checkpoint in ``sources``) and write the bundle folder atomically.

    ``variants``: :class:`VariantSpec` or ``(backend, precision[, source])`` tuples. A variant is
    named ``BACKEND-PRECISION`` (``-SOURCE`` appended when two share backend and precision).
    A source carrying a recipe (``recipe.json`` from ``edge-gr compress``) is exported at that precision
    only. ``metrics`` maps variant name to a metrics dict stored in the manifest. With ``archive=True``
    a single-file ``<out_dir>.tar`` is written too. ``encrypt``: seal every variant's files with this data key
    (:func:`edge_gr.sealed.data_key` forms; the shared files stay clear; sealed ONNX fp32 variants are not weight-bound).

    An existing ``out_dir`` is replaced only if it is a previous output of ``command`` (``edge-gr export``; ``build``
    passes its own) with nothing added, or with ``force=True``; else :class:`InputError`, before anything is exported.
    """
    check_bundle_out(out_dir, command, force=force, archive=archive)
    key = None
    if encrypt is not None:
        from edge_gr.sealed import data_key

        key = data_key(encrypt)  # a missing / bad key file fails here, before anything is exported
    specs = [VariantSpec(*v) for v in variants]
    srcs = {main_name: gm, **dict(sources or {})}
    for s in specs:
        if (s.source or main_name) not in srcs:
            raise InputError(f"variant {s.backend}:{s.precision}@{s.source}: no checkpoint named {s.source!r}",
                             hint=f"known sources: {', '.join(srcs)}")
        src = srcs[s.source or main_name]
        if src.recipe is not None and src.recipe.precision != s.precision:
            raise InputError(f"source {s.source or main_name!r} carries a {src.recipe.precision} recipe, not {s.precision}",
                             hint=f"export it as {s.backend}:{src.recipe.precision}")
        (src.recipe.for_backend(s.backend) if src.recipe is not None else backend_recipe(s.backend, s.precision))
    for name, other in srcs.items():
        if other is not gm:
            _check_compatible(gm, name, other)
    pairs = [(s.backend, s.precision) for s in specs]
    names = [f"{s.backend}-{s.precision}" + (f"-{s.source or main_name}" if pairs.count((s.backend, s.precision)) > 1 else "") for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"variants {names} repeat", hint="list each BACKEND:PRECISION@SOURCE once")
    cfg = gm.model.cfg
    spec = RuntimeSpec(task=cfg.task, levels=tuple(cfg.levels), max_len=cfg.max_len, d_model=cfg.d_model)
    version = model_version or gm.meta.get("version") or datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    id_scheme = {"levels": list(gm.ids.levels), "meta": gm.ids.meta, "stats": gm.ids.stats()}
    meta = {"config": cfg.to_dict(), "params": gm.model.n_params(), "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    records = {n: source_record(n, g) for n, g in srcs.items() if any((s.source or main_name) == n for s in specs)}
    out = Path(out_dir)
    with output_folder(out, command, force=force, legacy=bundle_files) as stage, \
            BundleWriter(stage, task=cfg.task, model_version=str(version), runtime=spec, id_scheme=id_scheme, meta=meta) as w:
        ids_path = w.root / "ids.json"
        gm.ids.save(ids_path)
        w.add_file("ids", "ids.json", ids_path)
        cat = _catalogue_jsonl(gm)
        w.add_file("catalogue", "catalogue.jsonl", cat)
        w.add_file("index", "index.safetensors", index_bytes(gm.ids, cat))  # the same IDs + catalogue offsets as arrays
        if gm.tokenizer is not None:
            w.add_file("tokenizer", "tokenizer.json", gm.tokenizer.to_str().encode())
        if gm.popularity:
            w.add_file("popularity", "popularity.json", json.dumps(gm.popularity).encode())
        for s, name in zip(specs, names):
            src_name = s.source or main_name
            model = srcs[src_name].model.float().cpu().eval()
            rel = Path("variants") / name
            files = EXPORTERS[s.backend](model, w.root / rel, s.precision)
            static = {}  # shape limits the runtime must respect (fixed, or upper bounds)
            if s.backend == "litert":
                from .litert import STATIC_BATCH, STATIC_BEAM

                static = {"batch": STATIC_BATCH, "beam": STATIC_BEAM}
            elif s.backend == "executorch":
                from .executorch import MAX_BATCH, MAX_BEAM

                static = {"max_batch": MAX_BATCH, "max_beam": MAX_BEAM}
            if model.cfg.max_len != cfg.max_len:  # a student reading a shorter history (the runtime feeds it that many)
                static["max_len"] = model.cfg.max_len
            w.add_variant(name, s.backend, s.precision, {role: (rel / f).as_posix() for role, f in files.items()},
                          static=static, metrics=(metrics or {}).get(name, {}), recipe=backend_recipe(s.backend, s.precision),
                          source=records[src_name], seal=key)
    if archive:
        write_archive(out, out.with_name(out.name + ".tar"))
    return out
