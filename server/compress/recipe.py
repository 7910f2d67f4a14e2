"""The saved quantization recipe, and what each backend's own quantizer makes of it.

Compression never stores fake-quantized weights: a compressed checkpoint is fp32 weights
(distilled / pruned / grouped) plus, for a quantized variant, ``recipe.json`` (:class:`QuantRecipe`).
The exporter translates the recipe's precision into each backend's quantizer
(:data:`BACKEND_RECIPES`), and the bundle manifest records, per variant, the precision, the
backend recipe (tool and arguments) and the source checkpoint. The reference quantizer of
:mod:`.quantize` (weight-only fake quant) stays as a tested reference and a quality check:
:meth:`QuantRecipe.reference_config` gives its config for the same recipe.

One precision vocabulary, :data:`edge_gr.bundle.PRECISIONS` (``fp32 fp16 int8 int4``), is used
by compression, the exporters, the manifest and the device's battery policy.

>>> r = QuantRecipe("int8")
>>> backend_recipe("onnxruntime", r.precision)["tool"]
'onnxruntime.quantization.quantize_dynamic'
>>> QuantRecipe.from_dict(r.to_dict()) == r
True
>>> backend_recipe("litert", "int4")
Traceback (most recent call last):
...
edge_gr.errors.InputError: litert has no int4 variant (it exports fp32, int8). To fix: ...
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_gr.bundle import PRECISIONS
from edge_gr.errors import FormatError, InputError

from .quantize import Fp16Config, Int4Config, Int8Config, MixedPrecisionRecipe, QuantConfig, recipe_from_rules

__all__ = ["QuantRecipe", "RECIPE_FILE", "BACKEND_RECIPES", "backend_recipe", "backend_precisions"]

RECIPE_FILE = "recipe.json"

# backend -> precision -> what its exporter does (recorded in the manifest as the variant's ``recipe``)
BACKEND_RECIPES: dict[str, dict[str, dict]] = {
    "torch": {"fp32": {"tool": "torch.export"}},
    "onnxruntime": {
        "fp32": {"tool": "torch.onnx.export(dynamo=True)"},
        "int8": {"tool": "onnxruntime.quantization.quantize_dynamic", "args": {"weight_type": "QInt8", "per_channel": True, "reduce_range": True},
                 "weights": "int8 symmetric per output channel (7-bit range: no VNNI saturation)", "activations": "dynamic (per batch)"},
    },
    "executorch": {
        "fp32": {"tool": "to_edge_transform_and_lower(XnnpackPartitioner)"},
        "int8": {"tool": "torchao pt2e prepare/convert + XNNPACKQuantizer", "args": {"is_per_channel": True, "is_dynamic": True, "symmetric": True},
                 "weights": "int8 symmetric per output channel", "activations": "dynamic int8", "scope": "Linear layers"},
        "int4": {"tool": "torchao quantize_ Int8DynamicActivationIntxWeightConfig", "args": {"weight_dtype": "int4", "granularity": "PerGroup(32)"},
                 "weights": "int4 per group of 32 input channels", "activations": "dynamic int8", "scope": "Linear layers (embeddings stay fp32)"},
    },
    "litert": {
        "fp32": {"tool": "litert_torch.convert"},
        "int8": {"tool": "ai_edge_quantizer recipe.dynamic_wi8_afp32", "weights": "int8 symmetric per output channel",
                 "activations": "dynamic int8 (float32 I/O)"},
    },
}


def backend_precisions(backend: str) -> tuple[str, ...]:
    """The precisions ``backend`` exports, in :data:`PRECISIONS` order."""
    if backend not in BACKEND_RECIPES:
        raise InputError(f"unknown backend {backend!r}", hint=f"use one of {', '.join(BACKEND_RECIPES)}")
    return tuple(p for p in PRECISIONS if p in BACKEND_RECIPES[backend])


def backend_recipe(backend: str, precision: str) -> dict:
    """What ``backend``'s exporter does for ``precision`` (raises :class:`InputError` if it has no such variant)."""
    have = backend_precisions(backend)
    if precision not in have:
        raise InputError(f"{backend} has no {precision} variant (it exports {', '.join(have)})",
                         hint=f"pick one of {', '.join(f'{backend}:{p}' for p in have)}, or another backend")
    return {"precision": precision, **BACKEND_RECIPES[backend][precision]}


@dataclass(frozen=True)
class QuantRecipe:
    """``precision`` (one of :data:`PRECISIONS`); ``group_size`` for int4; ``rules``: optional per-layer
    rules of the reference quantizer (``[[glob, {"precision": ...}], ...]``, e.g. the chapter's mixed
    recipe) - a quality study only: no backend exporter takes per-layer rules, so exporting refuses them."""

    precision: str = "int8"
    group_size: int = 32
    rules: tuple | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision {self.precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rules"] = None if self.rules is None else [list(r) for r in self.rules]
        return {"format": "edge-gr-quant-recipe", "version": 1, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "QuantRecipe":
        if not isinstance(d, dict) or d.get("format") != "edge-gr-quant-recipe":
            raise FormatError(f"not a quantization recipe: {d!r:.80}", hint="write it with QuantRecipe(...).save(folder)")
        rules = d.get("rules")
        return cls(precision=d["precision"], group_size=int(d.get("group_size", 32)),
                   rules=None if rules is None else tuple(tuple(r) for r in rules))

    def save(self, folder: str | os.PathLike) -> Path:
        from edge_gr.delta import write_text_atomic

        p = Path(folder) / RECIPE_FILE
        write_text_atomic(p, json.dumps(self.to_dict(), indent=1))
        return p

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "QuantRecipe | None":
        """The recipe saved in a checkpoint folder, or ``None`` (a plain fp32 checkpoint)."""
        p = Path(folder) / RECIPE_FILE
        if not p.is_file():
            return None
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{p} is corrupted ({type(e).__name__}: {e})", hint="re-run edge-gr compress") from None

    def reference_config(self) -> "QuantConfig | MixedPrecisionRecipe | None":
        """The reference quantizer's config for this recipe (``None`` for fp32)."""
        if self.rules is not None:
            return recipe_from_rules([list(r) for r in self.rules])
        return {"fp32": None, "fp16": Fp16Config(), "int8": Int8Config(), "int4": Int4Config(group_size=self.group_size)}[self.precision]

    def for_backend(self, backend: str) -> dict:
        """The backend recipe this translates to (refuses per-layer rules: no backend exporter takes them)."""
        if self.rules is not None:
            raise InputError("per-layer (mixed) quantization rules run only in the reference quantizer",
                             hint="export the int8 or int4 recipe of this checkpoint, e.g. --variants onnxruntime:int8")
        return backend_recipe(backend, self.precision)
