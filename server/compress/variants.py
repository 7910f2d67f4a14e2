"""Named device variants from one teacher: the ``edge-gr compress`` pipeline.

A *base* model is distilled from the teacher (``student`` config given: the default 2 x 128
student) or is the teacher itself; every named variant is derived from the base, and every
training step distils from the teacher:

==============  ==============================================================================
``fp32``        the base (the distilled student)
``fp16``        the base + recipe fp16
``int8``        the base + recipe int8 (exported: int8 per-channel weights, dynamic int8 activations)
``int4``        the base + recipe int4 (``int4_group_size``)
``mixed``       the base + the chapter's per-layer recipe (embeddings fp16, attention int8, output
                layer fp16, rest int8): reference quantizer only, no backend exports it
``pruned-30``   30% of FFN channels and heads removed, progressively, distilled after each step
``pruned-50``   the same at 50%
``grouped``     FFN Linear layers -> GroupedLinear (``groups``, channel shuffle), distilled
==============  ==============================================================================

Every variant saves as an fp32 checkpoint folder (pruned shapes in its config, grouped layers
as a recorded transform) and reloads with ``GenerativeModel.load``; a quantized one also holds
``recipe.json`` (:class:`~server.compress.recipe.QuantRecipe`), which ``edge-gr export`` /
``edge-gr build`` translate into each backend's own quantizer. The report holds params, the
bytes of weight storage under the recipe and, for quantized variants, the reference quantizer's
agreement with the fp32 base (:func:`reference_model`: a quality check, not what ships).

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
from .quantize import model_nbytes, quantize_, recipe_to_rules
from .recipe import QuantRecipe
from .recover import calibration_batches, grouped_variant, progressive_prune

if TYPE_CHECKING:
    from server.data.base import RecSplit, RetrievalData
    from server.generative import GenerativeModel
    from server.model import GRConfig
    from server.train import TrainConfig

__all__ = ["VARIANTS", "CompressConfig", "compress", "reference_model", "with_recipe", "weight_bytes"]

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
    """Bytes of weight storage under ``gm``'s recipe (int4 counted packed), as ``model_nbytes``."""
    return model_nbytes(reference_model(gm).model)


def with_recipe(gm: "GenerativeModel", recipe: QuantRecipe | None) -> "GenerativeModel":
    """``gm`` (same fp32 weights) carrying ``recipe``: what a quantized variant saves."""
    out = copy.copy(gm)
    out.meta = dict(gm.meta or {})
    out.recipe = recipe
    return out


def reference_model(gm: "GenerativeModel") -> "GenerativeModel":
    """``gm`` fake-quantized in memory by the reference quantizer per its recipe (``gm`` itself when fp32).

    A quality check of the recipe, not a checkpoint (``save`` refuses it) and not what ships:
    bundles are quantized by each backend's tool."""
    conf = gm.recipe.reference_config() if gm.recipe is not None else None
    if conf is None:
        return gm
    out = copy.copy(gm)
    out.model = copy.deepcopy(gm.model).cpu().eval()
    quantize_(out.model, conf)
    return out


def _recipe(name: str, cfg: CompressConfig) -> QuantRecipe:
    from .quantize import chapter_recipe

    if name == "mixed":
        return QuantRecipe("int8", rules=tuple(tuple(r) for r in recipe_to_rules(chapter_recipe())))
    return QuantRecipe(name, group_size=cfg.int4_group_size)


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
            v = with_recipe(base, _recipe(name, cfg))
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
                                    "recipe": None if v.recipe is None else v.recipe.to_dict(),
                                    "best_valid": max((e.get("valid", float("-inf")) for e in log), default=None)}
        if out_dir is not None:
            v.save(out_dir / name)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return variants, report
