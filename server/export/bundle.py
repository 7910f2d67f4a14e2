"""Stage: write a device bundle (the one cloud -> device contract) from a trained model.

>>> from server.generative import GenerativeModel
>>> gm = GenerativeModel.load("ckpt/")                                          # doctest: +SKIP
>>> export_bundle(gm, "bundle/", [("onnxruntime", "fp32"), ("onnxruntime", "int8")], archive=True)   # doctest: +SKIP
PosixPath('bundle')
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Callable, Sequence

from edge_gr.bundle import BundleWriter, RuntimeSpec, write_archive

from ..generative import GenerativeModel
from ..model import GenerativeRetriever

__all__ = ["export_bundle", "EXPORTERS", "DEFAULT_VARIANTS", "parse_variants"]


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
DEFAULT_VARIANTS: list[tuple[str, str]] = [("executorch", "fp32"), ("executorch", "int8"), ("executorch", "int4"),
                                           ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("litert", "fp32"), ("litert", "int8"),
                                           ("torch", "fp32")]


def parse_variants(spec: str) -> list[tuple[str, str]]:
    """``"onnxruntime:fp32,executorch:int8"`` -> ``[("onnxruntime", "fp32"), ("executorch", "int8")]``.

    >>> parse_variants("onnxruntime:int8, torch:fp32")
    [('onnxruntime', 'int8'), ('torch', 'fp32')]
    """
    out = []
    for part in spec.split(","):
        b, _, p = part.strip().partition(":")
        if b not in EXPORTERS or p not in ("fp32", "int8", "int4"):
            raise ValueError(f"bad variant {part.strip()!r}: use BACKEND:PRECISION with BACKEND in {sorted(EXPORTERS)}, PRECISION fp32|int8|int4")
        out.append((b, p))
    return out


def _catalogue_jsonl(gm: GenerativeModel) -> bytes:
    return "".join(json.dumps({"id": i.id, "title": i.text, "meta": i.meta}, ensure_ascii=False) + "\n" for i in gm.items).encode()


def export_bundle(gm: GenerativeModel, out_dir: str | os.PathLike, variants: Sequence[tuple[str, str]] = tuple(DEFAULT_VARIANTS), *,
                  metrics: dict[str, dict] | None = None, model_version: str | None = None, archive: bool = False) -> Path:
    """Export ``gm`` as each ``(backend, precision)`` variant and write the bundle folder atomically.

    ``metrics`` maps variant name (``"onnxruntime-int8"``) to a metrics dict stored in the
    manifest. With ``archive=True`` a single-file ``<out_dir>.tar`` is written too.
    """
    cfg = gm.model.cfg
    model = gm.model.float().cpu().eval()
    spec = RuntimeSpec(task=cfg.task, levels=tuple(cfg.levels), max_len=cfg.max_len, d_model=cfg.d_model)
    version = model_version or gm.meta.get("version") or datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    id_scheme = {"levels": list(gm.ids.levels), "meta": gm.ids.meta, "stats": gm.ids.stats()}
    meta = {"config": cfg.to_dict(), "params": model.n_params(), "exported": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    out = Path(out_dir)
    with BundleWriter(out, task=cfg.task, model_version=str(version), runtime=spec, id_scheme=id_scheme, meta=meta) as w:
        ids_path = w.root / "ids.json"
        gm.ids.save(ids_path)
        w.add_file("ids", "ids.json", ids_path)
        w.add_file("catalogue", "catalogue.jsonl", _catalogue_jsonl(gm))
        if gm.tokenizer is not None:
            w.add_file("tokenizer", "tokenizer.json", gm.tokenizer.to_str().encode())
        if gm.popularity:
            w.add_file("popularity", "popularity.json", json.dumps(gm.popularity).encode())
        for backend, precision in variants:
            name = f"{backend}-{precision}"
            rel = Path("variants") / name
            files = EXPORTERS[backend](model, w.root / rel, precision)
            static = {}  # shape limits the runtime must respect (fixed, or upper bounds)
            if backend == "litert":
                from .litert import STATIC_BATCH, STATIC_BEAM

                static = {"batch": STATIC_BATCH, "beam": STATIC_BEAM}
            elif backend == "executorch":
                from .executorch import MAX_BATCH, MAX_BEAM

                static = {"max_batch": MAX_BATCH, "max_beam": MAX_BEAM}
            w.add_variant(name, backend, precision, {role: (rel / f).as_posix() for role, f in files.items()},
                          static=static, metrics=(metrics or {}).get(name, {}))
    if archive:
        write_archive(out, out.with_name(out.name + ".tar"))
    return out
