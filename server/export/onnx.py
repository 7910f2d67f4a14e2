"""Stage: ONNX files for onnxruntime (fp32, and int8 by dynamic quantization).

int8 uses ``onnxruntime.quantization.quantize_dynamic`` with per-channel weights and
``reduce_range=True``: on CPUs without VNNI (this one) the default signed-int8 weights
saturate and the outputs are badly wrong (see shared/ENVIRONMENT.md); 7-bit weights avoid
that. Per-channel scales raised the Bible model's overlap@10 with fp32 from 0.89 to 0.94
(150 queries; QUInt8 weights: 0.94 too).

>>> export_onnx(model, "out/variants/onnxruntime-int8", "int8")     # doctest: +SKIP
{'encoder': 'encoder.onnx', 'decoder': 'decoder.onnx'}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..model import GenerativeRetriever
from ._common import dynamic_shapes, io_names, wrap

__all__ = ["export_onnx"]


def _export(module, args, path: Path, input_names, output_names, dyn) -> None:
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=dyn, dynamo=True, external_data=False, optimize=True, verbose=False)


def export_onnx(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32") -> dict[str, str]:
    """Write ``encoder.onnx`` + ``decoder.onnx`` (fp32 or int8) into ``out_dir``."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"onnxruntime variants are fp32 or int8, not {precision}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc, dec, ea, da = wrap(model)
    es, ds = dynamic_shapes(model)
    enc_out, dec_in = io_names(model)
    with tempfile.TemporaryDirectory() as td:
        stage = Path(td) if precision == "int8" else out_dir
        _export(enc, ea, stage / "encoder.onnx", ["src"], enc_out, es)
        _export(dec, da, stage / "decoder.onnx", dec_in, ["logits"], ds)
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            for name in ("encoder.onnx", "decoder.onnx"):
                quantize_dynamic(stage / name, out_dir / name, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
