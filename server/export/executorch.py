"""Stage: one ExecuTorch ``.pte`` with two methods, ``encode`` and ``decode``, lowered to XNNPACK.

* fp32: ``torch.export`` -> ``to_edge_transform_and_lower(XnnpackPartitioner)`` -> ``.pte``
* int8: pt2e with ``XNNPACKQuantizer`` (per-channel symmetric weights, dynamic int8 activations)
* int4: torchao ``Int8DynamicActivationIntxWeightConfig(int4, PerGroup(32))`` ("8da4w") on the Linear layers
  (embeddings stay fp32: a quantized ``nn.Embedding`` does not run in ExecuTorch 1.5)

Batch N and beams B are dynamic in both methods, up to ``MAX_BATCH`` / ``MAX_BEAM``: ExecuTorch
preallocates memory for the upper bounds (bounds of 1024 x 512 made the ML-1M model's
planned buffers many GB and the process was killed), so the runtime runs bigger batches in chunks.

>>> export_executorch(model, "out/variants/executorch-int8", "int8")     # doctest: +SKIP
{'program': 'model.pte'}
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..model import GenerativeRetriever
from ._common import dynamic_shapes, step_dynamic_shapes, step_inputs, wrap

__all__ = ["export_executorch", "MAX_BATCH", "MAX_BEAM"]

MAX_BATCH, MAX_BEAM = 32, 64


def _pt2e_int8(module: torch.nn.Module, args: tuple, dyn) -> torch.nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    gm = torch.export.export(module, args, dynamic_shapes=dyn, strict=False).module()
    gm = prepare_pt2e(gm, q)
    gm(*args)  # dynamic activations: one pass to initialise the observers
    return convert_pt2e(gm)


def _int4(module: torch.nn.Module) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup, quantize_

    module = copy.deepcopy(module)
    quantize_(module, Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(32)))
    return module


def export_executorch(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32") -> dict[str, str]:
    """Write ``model.pte`` (methods ``encode``, ``decode``) into ``out_dir``; returns role -> file name."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if precision not in ("fp32", "int8", "int4"):
        raise ValueError(f"executorch variants are fp32, int8 or int4, not {precision}")
    model = copy.deepcopy(model)
    enc, dec, ea, da = wrap(model)
    es, ds = dynamic_shapes(model, MAX_BATCH, MAX_BEAM)
    step, sa, ss = model.export_step_graph().eval(), step_inputs(model), step_dynamic_shapes(model, MAX_BATCH, MAX_BEAM)
    if precision == "int8":
        enc, dec, step = _pt2e_int8(enc, ea, es), _pt2e_int8(dec, da, ds), _pt2e_int8(step, sa, ss)
        ds = (ds[0], ds[1], *ds[2])  # the pt2e graph module takes flat arguments
        ss = (ss[0], ss[1], ss[2], *ss[3])
    elif precision == "int4":
        enc, dec, step = _int4(enc), _int4(dec), _int4(step)
    with torch.no_grad():
        progs = {"encode": torch.export.export(enc, ea, dynamic_shapes=es, strict=False),
                 "decode": torch.export.export(dec, da, dynamic_shapes=ds, strict=False),
                 "step": torch.export.export(step, sa, dynamic_shapes=ss, strict=False)}
    et = to_edge_transform_and_lower(progs, partitioner=[XnnpackPartitioner()]).to_executorch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.pte").write_bytes(et.buffer)
    return {"program": "model.pte", "step": "model.pte"}  # the lean step is the program's third method
