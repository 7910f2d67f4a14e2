"""LiteRT backend: one ``.tflite`` with signatures ``encode`` and ``decode`` (static batch x beam shapes).

A file decrypted into memory (:class:`~edge_gr.backends.Blob`) is loaded with ``Interpreter(model_content=...)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["open"]


def _ordered(out: dict) -> list[np.ndarray]:
    return [out[k] for k in sorted(out, key=lambda s: int(s.rsplit("_", 1)[1]))]  # output_0, output_1, ...


class LiteRtSession:
    def __init__(self, files: dict[str, Path], threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            from . import missing

            raise missing("litert", e) from None
        from . import Blob

        prog = files["program"]
        src = {"model_content": prog.data} if isinstance(prog, Blob) else {"model_path": str(prog)}
        self.it = Interpreter(**src, num_threads=threads or None)
        self.threads = int(threads or 0)  # 0 = the interpreter's default
        self.enc, self.dec = self.it.get_signature_runner("encode"), self.it.get_signature_runner("decode")
        self.enc_in = self.enc.get_input_details()
        self.dec_in = self.dec.get_input_details()
        names = sorted(self.dec_in, key=lambda s: int(s.rsplit("_", 1)[1]))
        self.dec_names = names
        shape = self.dec_in[names[0]]["shape"]  # prefix (N, B, L)
        self.static = {"batch": int(shape[0]), "beam": int(shape[1])}
        self._step = self.it.get_signature_runner("step") if "step" in files else None
        if self._step is not None:
            ins = self._step.get_input_details()
            self.step_names = sorted(ins, key=lambda s: int(s.rsplit("_", 1)[1]))
            self.step_in = ins
            n_layers = (len(self.step_names) - 3) // 4
            self.cache_shapes = [tuple(int(x) for x in ins[n]["shape"][2:]) for n in self.step_names[3 + 2 * n_layers:]]

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        (name, d), = self.enc_in.items()
        return _ordered(self.enc(**{name: src.astype(d["dtype"], copy=False)}))

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        args = [prefix, *enc]
        feed = {n: a.astype(self.dec_in[n]["dtype"], copy=False) for n, a in zip(self.dec_names, args)}
        return _ordered(self.dec(**feed))[0]


    def step(self, tok: np.ndarray, pos: int, enc: list[np.ndarray], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        args = [tok, np.array([pos], dtype=np.int64), *enc, *cache]
        feed = {n: a.astype(self.step_in[n]["dtype"], copy=False) for n, a in zip(self.step_names, args)}
        out = _ordered(self._step(**feed))
        return out[0], out[1:]


def open(files: dict[str, Path], *, threads: int | None = None) -> LiteRtSession:  # noqa: A001
    return LiteRtSession(files, threads)
