"""Stage: a LiteRT ``.tflite`` with two signatures, ``encode`` and ``decode`` (via ``litert_torch``, no TensorFlow).

LiteRT conversion needs static shapes here (dynamic batch failed, shared/ENVIRONMENT.md):
the model is exported for ``batch`` queries and ``beam`` beams; the runtime pads a
smaller request up to that and refuses a larger beam with a clear error.

>>> export_litert(model, "out/variants/litert-fp32")     # doctest: +SKIP
{'program': 'model.tflite'}
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model import GenerativeRetriever
from ._common import wrap

__all__ = ["export_litert", "STATIC_BATCH", "STATIC_BEAM"]

STATIC_BATCH, STATIC_BEAM = 1, 20  # the runtime default beam


def export_litert(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32", *,
                  batch: int = STATIC_BATCH, beam: int = STATIC_BEAM) -> dict[str, str]:
    """Write ``model.tflite`` (signatures ``encode``, ``decode``) into ``out_dir``; returns role -> file name."""
    import litert_torch

    if precision != "fp32":
        raise ValueError("litert variants are fp32 only in this version (int8 via ai_edge_quantizer is not wired yet)")
    enc, dec, ea, da = wrap(model, n=batch, beam=beam)
    with torch.no_grad():
        lm = litert_torch.signature("encode", enc, ea).signature("decode", dec, da).convert()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm.export(str(out_dir / "model.tflite"))
    return {"program": "model.tflite"}
