"""ONNX Runtime backend: ``encoder.onnx`` + ``decoder.onnx``, dynamic batch and beams."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["open"]


class OrtSession:
    static: dict = {}

    def __init__(self, files: dict[str, Path], threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            from . import missing

            raise missing("onnxruntime", e) from None
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        prov = ["CPUExecutionProvider"]
        self.enc = ort.InferenceSession(str(files["encoder"]), so, providers=prov)
        self.dec = ort.InferenceSession(str(files["decoder"]), so, providers=prov)
        self.enc_in = self.enc.get_inputs()[0].name
        self.dec_in = [i.name for i in self.dec.get_inputs()]

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        return self.enc.run(None, {self.enc_in: src.astype(np.int64, copy=False)})

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        return self.dec.run(None, dict(zip(self.dec_in, [prefix.astype(np.int64, copy=False), *enc])))[0]


def open(files: dict[str, Path], *, threads: int | None = None) -> OrtSession:  # noqa: A001
    return OrtSession(files, threads)
