"""ONNX Runtime backend: ``encoder.onnx`` + ``decoder.onnx``, dynamic batch and beams.

Files decrypted into memory (:class:`~edge_gr.backends.Blob`) are loaded from bytes
(``InferenceSession(bytes)``); an fp32 variant's external ``weights.bin`` is then handed over
in memory too (``SessionOptions.add_external_initializers_from_files_in_memory``, under the
name the graphs reference it by), so nothing is read from, or written to, disk for them.

Telemetry is off: ``ORT_DISABLE_TELEMETRY=1`` is set before onnxruntime is imported (by
:mod:`edge_gr.backends`, see there), and every session also calls
``onnxruntime.disable_telemetry_events()`` in case onnxruntime was imported before edge-gr.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["open"]


class OrtSession:
    static: dict = {}

    def __init__(self, files: dict[str, Path], threads: int | None):
        from . import ORT_TELEMETRY_ENV, missing

        os.environ.setdefault(ORT_TELEMETRY_ENV, "1")  # before the first import of onnxruntime (it reads it at load)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise missing("onnxruntime", e) from None
        ort.disable_telemetry_events()  # no effect once the variable is set; the non-essential events otherwise
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        self.threads = so.intra_op_num_threads if threads else 0  # 0 = ORT's default (one per core)
        prov = ["CPUExecutionProvider"]
        files = _in_memory(files, so)
        self.enc = ort.InferenceSession(files["encoder"], so, providers=prov)
        self.dec = ort.InferenceSession(files["decoder"], so, providers=prov)
        self.enc_in = self.enc.get_inputs()[0].name
        self.dynamic_src = isinstance(self.enc.get_inputs()[0].shape[1], str)  # text length symbolic: feed the real length
        self.dec_in = [i.name for i in self.dec.get_inputs()]
        self.step_sess = ort.InferenceSession(files["step"], so, providers=prov) if "step" in files else None
        if self.step_sess is not None:
            ins = self.step_sess.get_inputs()
            self.step_in = [i.name for i in ins]
            # the fixed-slot self caches: (N, B, nh, L, hs) per decoder layer, N and B symbolic
            self.cache_shapes = [tuple(i.shape[2:]) for i in ins if i.name.startswith("s") and i.name[1:2] in "kv" and "_" in i.name]

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {self.enc_in: src.astype(np.int64, copy=False)})

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        return self.dec.run(None, dict(zip(self.dec_in, [prefix.astype(np.int64, copy=False), *enc])))[0]

    def step(self, tok: np.ndarray, pos: int, enc: list[np.ndarray], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The lean decoder step: logits (N, B, V) at ``pos`` and the caches with slot ``pos`` written."""
        feed = [tok.astype(np.int64, copy=False), np.array([pos], dtype=np.int64), *enc, *cache]
        out = self.step_sess.run(None, dict(zip(self.step_in, feed)))
        return out[0], out[1:]


def _in_memory(files: dict, so) -> dict:
    """Role -> what ``InferenceSession`` takes: path strings, or (any file in memory) bytes for every graph, with
    the external weights given to ``so`` from memory (a graph loaded from bytes must not read them from disk)."""
    from . import Blob

    if not any(isinstance(f, Blob) for f in files.values()):
        return {r: str(f) for r, f in files.items()}
    data = {r: f.data if isinstance(f, Blob) else Path(f).read_bytes() for r, f in files.items()}
    if "weights" in files:
        name = (files["weights"].path if isinstance(files["weights"], Blob) else Path(files["weights"])).name
        w = data["weights"]
        so.add_external_initializers_from_files_in_memory([name], [w], [len(w)])  # ORT copies what it needs
    return data


def open(files: dict[str, Path], *, threads: int | None = None) -> OrtSession:  # noqa: A001
    return OrtSession(files, threads)
