"""Named device variants from one teacher: the ``edge-gr compress`` pipeline.

A *base* model is distilled from the teacher (``student`` config given: the default 2 x 128
student) or is the teacher itself; every named variant is derived from the base, and every
training step distils from the teacher:

==============  ==============================================================================
``fp32``        the base (the distilled student)
``fp16``        fp16 weights and embeddings
``int8``        int8 per-channel symmetric weights, int8 per-row embeddings
``int4``        int4 group-wise weights and embeddings (``int4_group_size``)
``mixed``       the chapter's recipe: embeddings fp16, attention int8, output layer fp16, rest int8
``pruned-30``   30% of FFN channels and heads removed, progressively, distilled after each step
``pruned-50``   the same at 50%
``grouped``     FFN Linear layers -> GroupedLinear (``groups``, channel shuffle), distilled
==============  ==============================================================================

Quantized variants record their rules in ``GRConfig.quant`` and pruned / grouped ones their
shapes, so every variant saves as a normal checkpoint folder and reloads with
``GenerativeModel.load``; the report holds params and bytes of weight storage of each.

>>> sorted(VARIANTS)[:3]
['fp16', 'fp32', 'grouped']
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge_gr.errors import InputError

from .distill import DistillConfig, distill
from .quantize import Fp16Config, Int4Config, Int8Config, chapter_recipe, model_nbytes, quantize_, recipe_to_rules
from .recover import calibration_batches, grouped_variant, progressive_prune

if TYPE_CHECKING:
    from server.data.base import RecSplit, RetrievalData
    from server.generative import GenerativeModel
    from server.model import GRConfig
    from server.train import TrainConfig

__all__ = ["VARIANTS", "CompressConfig", "compress", "quantized_variant", "weight_bytes"]

VARIANTS = ("fp32", "fp16", "int8", "int4", "mixed", "pruned-30", "pruned-50", "grouped")


@dataclass
class CompressConfig:
    """Settings of :func:`compress`.

    ``student``: the student's architecture (``None``: compress the teacher itself);
    ``distill`` / ``train``: the student's distillation; ``recover``: the training budget of each
    recovery step (after each pruning round, and for the grouped variant); ``prune_step``: the
    progressive pruning step; ``protect_top``: most sensitive units left unpruned.
    """

    student: "GRConfig | None" = None
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(alpha=0.5, temperature=2.0))  # KD only: see README
    train: "TrainConfig | None" = None
    recover: "TrainConfig | None" = None
    int4_group_size: int = 64
    groups: int = 4
    prune_step: float = 0.1
    protect_top: int = 0


def weight_bytes(gm: "GenerativeModel") -> int:
    """Bytes of weight storage (int4 counted packed), as ``model_nbytes``."""
    return model_nbytes(gm.model)


def quantized_variant(gm: "GenerativeModel", config) -> "GenerativeModel":
    """A quantized copy of ``gm`` (``config``: a quant config or recipe) that saves and reloads as a checkpoint."""
    out = copy.copy(gm)
    out.model = copy.deepcopy(gm.model).cpu().eval()
    out.meta = dict(gm.meta or {})
    quantize_(out.model, config)
    out.model.cfg.quant = recipe_to_rules(config)
    return out


def _quant_config(name: str, cfg: CompressConfig):
    return {"fp16": Fp16Config(), "int8": Int8Config(), "int4": Int4Config(group_size=cfg.int4_group_size),
            "mixed": chapter_recipe()}[name]


def compress(teacher: "GenerativeModel", data: "RecSplit | RetrievalData", names: list[str], cfg: CompressConfig, *,
             out_dir: str | Path | None = None, base: "GenerativeModel | None" = None) -> tuple[dict[str, "GenerativeModel"], dict]:
    """Build the named variants (see the module docstring); save each under ``out_dir/<name>`` if given.

    ``base``: an already distilled student to derive the variants from (skips the distillation).

    Returns ``(variants, report)``; the report has, per variant, params, bytes of weight storage
    and the training log summary, and is written to ``out_dir/report.json``.
    """
    from server.train import TrainConfig

    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise InputError(f"unknown variants {bad}", hint=f"choose from {', '.join(VARIANTS)}")
    train = cfg.train or TrainConfig()
    recover = cfg.recover or TrainConfig(epochs=3, patience=3, lr=5e-4, warmup_steps=20, device=train.device)
    if base is None:
        base = distill(teacher, cfg.student, data, cfg.distill, train) if cfg.student is not None else teacher
    base.model.cpu().eval()
    out_dir = Path(out_dir) if out_dir is not None else None
    variants: dict[str, GenerativeModel] = {}
    report: dict = {"teacher": {"params": teacher.model.n_params(), "bytes": weight_bytes(teacher)},
                    "config": {"student": None if cfg.student is None else getattr(cfg.student, "cfg", cfg.student).to_dict(), "distill": asdict(cfg.distill),
                               "train": asdict(train), "recover": asdict(recover), "int4_group_size": cfg.int4_group_size,
                               "groups": cfg.groups, "prune_step": cfg.prune_step, "protect_top": cfg.protect_top},
                    "variants": {}}
    calib = None
    for name in names:
        if name == "fp32":
            v = base
        elif name in ("fp16", "int8", "int4", "mixed"):
            v = quantized_variant(base, _quant_config(name, cfg))
        elif name.startswith("pruned-"):
            calib = calib or calibration_batches(base, data)
            v, _ = progressive_prune(teacher, int(name.split("-")[1]) / 100, data, calib, cfg.distill, recover,
                                     step=cfg.prune_step, protect_top=cfg.protect_top, start=base)
        else:  # grouped
            v = grouped_variant(teacher, cfg.groups, data, cfg.distill, recover, start=base)
        v.model.cpu().eval()
        variants[name] = v
        log = (v.meta or {}).get("log") or []
        report["variants"][name] = {"params": v.model.n_params() + sum(b.numel() for n_, b in v.model.named_buffers() if "weight" in n_),
                                    "bytes": weight_bytes(v), "compress": (v.meta or {}).get("compress"),
                                    "best_valid": max((e.get("valid", float("-inf")) for e in log), default=None)}
        if out_dir is not None:
            v.save(out_dir / name)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return variants, report
