"""Stage: ``torch.export`` programs saved as ``.pt2`` (the eager-torch reference backend).

>>> export_torch(model, "out/variants/torch-fp32")     # doctest: +SKIP
{'encoder': 'encoder.pt2', 'decoder': 'decoder.pt2'}
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..model import GenerativeRetriever
from ._common import dynamic_shapes, wrap

__all__ = ["export_programs", "export_torch"]


def export_programs(model: GenerativeRetriever) -> tuple[torch.export.ExportedProgram, torch.export.ExportedProgram]:
    """The encoder and decoder-step as ``ExportedProgram`` with dynamic batch and beam."""
    enc, dec, ea, da = wrap(model)
    es, ds = dynamic_shapes(model)
    with torch.no_grad():
        return (torch.export.export(enc, ea, dynamic_shapes=es, strict=False),
                torch.export.export(dec, da, dynamic_shapes=ds, strict=False))


def export_torch(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32") -> dict[str, str]:
    """Write ``encoder.pt2`` + ``decoder.pt2`` into ``out_dir``; returns role -> file name."""
    if precision != "fp32":
        raise ValueError("the torch variant is the fp32 reference; quantized variants use executorch / onnxruntime")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    e, d = export_programs(model)
    torch.export.save(e, out_dir / "encoder.pt2")
    torch.export.save(d, out_dir / "decoder.pt2")
    return {"encoder": "encoder.pt2", "decoder": "decoder.pt2"}
