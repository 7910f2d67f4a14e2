"""Eager-torch backend: ``torch.export`` programs (``encoder.pt2`` + ``decoder.pt2``); the fp32 reference.

A file decrypted into memory (:class:`~edge_gr.backends.Blob`) is loaded from a ``BytesIO``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

__all__ = ["open"]


class TorchSession:
    static: dict = {}

    def __init__(self, files: dict[str, Path], threads: int | None):
        try:
            import torch
        except ImportError as e:
            from . import missing

            raise missing("torch", e) from None
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.torch = torch
        from . import Blob

        def src(f):
            return io.BytesIO(f.data) if isinstance(f, Blob) else str(f)

        self.enc = torch.export.load(src(files["encoder"])).module()
        self.dec = torch.export.load(src(files["decoder"])).module()

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            return [o.numpy() for o in self.enc(self.torch.from_numpy(src.astype(np.int64, copy=False)))]

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        t = self.torch.from_numpy
        with self.torch.no_grad():
            return self.dec(t(prefix.astype(np.int64, copy=False)), *(t(e) for e in enc)).numpy()


def open(files: dict[str, Path], *, threads: int | None = None) -> TorchSession:  # noqa: A001
    return TorchSession(files, threads)
