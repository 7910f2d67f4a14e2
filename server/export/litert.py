"""Stage: a LiteRT ``.tflite`` with two signatures, ``encode`` and ``decode`` (via ``litert_torch``, no TensorFlow).

fp32, or int8 (ai_edge_quantizer ``dynamic_wi8_afp32``: int8 weights, dynamic int8 activations).
LiteRT conversion needs static shapes here (dynamic batch failed, shared/ENVIRONMENT.md):
the model is exported for ``batch`` queries and ``beam`` beams; the runtime pads a
smaller request up to that and refuses a larger beam with a clear error.

>>> export_litert(model, "out/variants/litert-fp32")     # doctest: +SKIP
{'program': 'model.tflite'}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..model import GenerativeRetriever
from ._common import step_inputs, wrap

__all__ = ["export_litert", "STATIC_BATCH", "STATIC_BEAM"]

STATIC_BATCH, STATIC_BEAM = 1, 20  # the runtime default beam


def export_litert(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32", *,
                  batch: int = STATIC_BATCH, beam: int = STATIC_BEAM) -> dict[str, str]:
    """Write ``model.tflite`` (signatures ``encode``, ``decode``) into ``out_dir``; returns role -> file name."""
    import litert_torch

    if precision not in ("fp32", "int8"):
        raise ValueError(f"litert variants are fp32 or int8, not {precision}")
    enc, dec, ea, da = wrap(model, n=batch, beam=beam)
    step, sa = model.export_step_graph().eval(), step_inputs(model, n=batch, beam=beam)
    with torch.no_grad():
        lm = litert_torch.signature("encode", enc, ea).signature("decode", dec, da).signature("step", step, sa).convert()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if precision == "fp32":
        lm.export(str(out_dir / "model.tflite"))
    else:  # int8 weights, fp32 activations (dynamic range), with ai_edge_quantizer's recipe
        from ai_edge_quantizer import quantizer, recipe

        with tempfile.TemporaryDirectory() as td:
            lm.export(str(Path(td) / "fp32.tflite"))
            q = quantizer.Quantizer(str(Path(td) / "fp32.tflite"))
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            q.quantize().export_model(str(out_dir / "model.tflite"), overwrite=True)
    return {"program": "model.tflite", "step": "model.tflite"}  # the lean step is the third signature
