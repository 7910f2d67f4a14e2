"""Stage: ONNX files for onnxruntime (fp32, and int8 by dynamic quantization).

fp32 graphs are *weight-bound* (:mod:`edge_gr.weightmap`): every initializer that is one
state-dict tensor of the model (as is, transposed, or its first rows) is stored as ONNX
external data in one ``weights.bin`` shared by both graphs, laid out by
:func:`edge_gr.weightmap.layout`, and ``weights.json`` maps each stored tensor to its
state tensor. A device that has a new state (its old one plus a registry delta) rebuilds
``weights.bin`` byte for byte, so a weights-only update ships no graph. Everything else
(shape constants, masks, folded constants) stays inside the ``.onnx`` files. The graphs
compute exactly what embedded ones do: only where the initializer bytes live changes.

int8 uses ``onnxruntime.quantization.quantize_dynamic`` with per-channel weights and
``reduce_range=True``: on CPUs without VNNI (this one) the default signed-int8 weights
saturate and the outputs are badly wrong (see shared/ENVIRONMENT.md); 7-bit weights avoid
that. Per-channel scales raised the Bible model's overlap@10 with fp32 from 0.89 to 0.94
(150 queries; QUInt8 weights: 0.94 too). int8 files are self-contained (an update that
changes weights ships them whole).

>>> export_onnx(model, "out/variants/onnxruntime-int8", "int8")     # doctest: +SKIP
{'encoder': 'encoder.onnx', 'decoder': 'decoder.onnx'}
>>> export_onnx(model, "out/variants/onnxruntime-fp32", "fp32")     # doctest: +SKIP
{'encoder': 'encoder.onnx', 'decoder': 'decoder.onnx', 'weights': 'weights.bin', 'weight_map': 'weights.json'}
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from edge_gr.weightmap import build_weights, layout

from ..model import GenerativeRetriever
from ._common import dynamic_shapes, io_names, step_dynamic_shapes, step_inputs, step_io, wrap

__all__ = ["export_onnx", "bind_weights", "WEIGHTS_FILE", "MAP_FILE", "MIN_ELEMENTS"]

WEIGHTS_FILE = "weights.bin"
MAP_FILE = "weights.json"
MIN_ELEMENTS = 16  # smaller non-float initializers (scalars, shape constants) stay in the graph; float ones from 2 elements


def _export(module, args, path: Path, input_names, output_names, dyn) -> None:
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_shapes=dyn, dynamo=True, external_data=False, optimize=True, verbose=False)


def _key(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).digest()


def _bindable(a: np.ndarray) -> bool:
    return a.size >= (2 if np.issubdtype(a.dtype, np.floating) else MIN_ELEMENTS)


def bind_weights(out_dir: str | Path, graphs: list[str], state: dict[str, np.ndarray]) -> dict[str, str]:
    """Move the initializers of ``graphs`` (files in ``out_dir``) that are a state tensor into ``weights.bin``.

    Matching is by value: an initializer equal to a state tensor (or to its transpose, or
    to its first rows) is bound to it. Writes ``weights.bin`` and ``weights.json`` and
    rewrites the graphs to point at it; returns the extra ``{role: file}``. If nothing
    matches, the graphs are left as they are and ``{}`` is returned.
    """
    import onnx
    from onnx import numpy_helper

    out_dir = Path(out_dir)
    state = {k: np.ascontiguousarray(v) for k, v in state.items() if _bindable(np.asarray(v))}
    by_value: dict[tuple, list[str]] = {}
    by_t: dict[tuple, list[str]] = {}
    for name in sorted(state):
        by_value.setdefault(_key(state[name]), []).append(name)
        if state[name].ndim == 2:
            by_t.setdefault(_key(state[name].T), []).append(name)
    specs: list[tuple] = []
    where: dict[tuple, int] = {}  # (transform, tensor, rows) -> spec index
    bound: list[tuple] = []       # (graph index, initializer, spec index)
    models = [onnx.load(str(out_dir / g), load_external_data=False) for g in graphs]
    for gi, mo in enumerate(models):
        for init in mo.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                continue
            a = numpy_helper.to_array(init)
            if not _bindable(a):
                continue
            k = _key(a)
            spec = None
            if k in by_value:
                names = by_value[k]
                spec = (names[0], names[1:], "identity")
            elif k in by_t:
                names = by_t[k]
                spec = (names[0], names[1:], "transpose")
            else:
                for name in sorted(state):
                    t = state[name]
                    if (t.dtype == a.dtype and t.ndim == a.ndim >= 1 and t.shape[1:] == a.shape[1:] and t.shape[0] > a.shape[0]
                            and np.array_equal(t[: a.shape[0]], a)):
                        spec = (name, [], "rows", a.shape[0])
                        break
            if spec is None:
                continue
            wkey = (spec[2], spec[0], spec[3] if len(spec) > 3 else None)
            if wkey not in where:
                where[wkey] = len(specs)
                specs.append(spec)
            bound.append((gi, init, where[wkey]))
    if not specs:
        return {}
    # tables (2-D and more, stored as is: embeddings, item codes) go last, so that appending item rows moves no
    # other tensor: the graphs that do not hold a grown table keep their bytes (their offsets do not change)
    order = sorted(range(len(specs)), key=lambda i: (specs[i][2] == "identity" and np.ndim(state[specs[i][0]]) >= 2, i))
    pos = {old: new for new, old in enumerate(order)}
    wm = layout([specs[i] for i in order], state, WEIGHTS_FILE)
    for gi, init, si in bound:
        e = wm["entries"][pos[si]]
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            init.ClearField(f)
        del init.external_data[:]
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(e["offset"])), ("length", str(e["length"]))):
            entry = init.external_data.add()
            entry.key, entry.value = k, v
        init.data_location = onnx.TensorProto.EXTERNAL
    build_weights(wm, state, out_dir / WEIGHTS_FILE, fsync=False)
    (out_dir / MAP_FILE).write_text(json.dumps(wm, indent=1))
    for g, mo in zip(graphs, models):
        onnx.save_model(mo, str(out_dir / g))
    return {"weights": WEIGHTS_FILE, "weight_map": MAP_FILE}


def export_onnx(model: GenerativeRetriever, out_dir: str | Path, precision: str = "fp32") -> dict[str, str]:
    """Write ``encoder.onnx`` + ``decoder.onnx`` + the lean ``step.onnx`` (fp32 weight-bound, or int8 self-contained) into ``out_dir``."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"onnxruntime variants are fp32 or int8, not {precision}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc, dec, ea, da = wrap(model)
    es, ds = dynamic_shapes(model, dynamic_src=True)
    enc_out, dec_in = io_names(model)
    files = {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "step": "step.onnx"}
    step_in, step_out = step_io(model)
    with tempfile.TemporaryDirectory() as td:
        stage = Path(td) if precision == "int8" else out_dir
        _export(enc, ea, stage / "encoder.onnx", ["src"], enc_out, es)
        _export(dec, da, stage / "decoder.onnx", dec_in, ["logits"], ds)
        _export(model.export_step_graph().eval(), step_inputs(model), stage / "step.onnx", step_in, step_out,
                step_dynamic_shapes(model, dynamic_src=True))
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            for name in ("encoder.onnx", "decoder.onnx", "step.onnx"):
                quantize_dynamic(stage / name, out_dir / name, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        else:
            state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
            # the decoder first: its tensors do not grow with the catalogue (its graph survives new items unchanged)
            files.update(bind_weights(out_dir, ["decoder.onnx", "step.onnx", "encoder.onnx"], state))
    return files
