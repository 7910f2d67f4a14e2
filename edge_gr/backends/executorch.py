"""ExecuTorch backend: one ``.pte`` with methods ``encode`` and ``decode`` (XNNPACK), dynamic batch and beams.

A file decrypted into memory (:class:`~edge_gr.backends.Blob`) is loaded from its bytes
(``Runtime.load_program(bytes)``, which keeps them for the program's life).

Note: ExecuTorch's *Python* runtime (``executorch.runtime``) imports torch and exchanges
torch tensors; on a phone the C++/Java/Swift runtime runs the same ``.pte`` without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["open"]


class EtSession:
    static: dict = {}

    def __init__(self, files: dict[str, Path], threads: int | None):
        try:
            import torch
            from executorch.runtime import Runtime
            import executorch.kernels.quantized  # noqa: F401  (registers the int8 dequantize out-variants)
        except ImportError as e:
            from . import missing

            raise missing("executorch", e) from None
        self._torch = torch
        from executorch.extension.pybindings import portable_lib

        if threads:  # XNNPACK's pool is per process: `threads` resizes it (it was ignored before 2026-12-01)
            portable_lib._unsafe_reset_threadpool(int(threads))
        self._pool = portable_lib._threadpool_get_thread_count
        from . import Blob

        src = files["program"]
        prog = Runtime.get().load_program(src.data if isinstance(src, Blob) else Path(src))
        self.enc, self.dec = prog.load_method("encode"), prog.load_method("decode")
        self._step = prog.load_method("step") if "step" in files else None
        if self._step is not None:  # the self caches' (nh, L, hs), read from the method's inputs
            meta = self._step.metadata
            n_in = meta.num_inputs()
            n_layers = (n_in - 3) // 4
            self.cache_shapes = [tuple(meta.input_tensor_meta(i).sizes()[2:]) for i in range(3 + 2 * n_layers, n_in)]

    @property
    def threads(self) -> int:
        """Threads of the XNNPACK pool the methods run on (what the runtime reports)."""
        return int(self._pool())

    def _t(self, a: np.ndarray):
        return self._torch.from_numpy(np.ascontiguousarray(a))

    def encode(self, src: np.ndarray) -> list[np.ndarray]:
        return [o.numpy() for o in self.enc.execute([self._t(src.astype(np.int64, copy=False))])]

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray:
        return self.dec.execute([self._t(prefix.astype(np.int64, copy=False)), *(self._t(e) for e in enc)])[0].numpy()

    def step(self, tok: np.ndarray, pos: int, enc: list[np.ndarray], cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self._step.execute([self._t(tok.astype(np.int64, copy=False)), self._t(np.array([pos], dtype=np.int64)),
                                  *(self._t(e) for e in enc), *(self._t(c) for c in cache)])
        return out[0].numpy(), [o.numpy() for o in out[1:]]


def open(files: dict[str, Path], *, threads: int | None = None) -> EtSession:  # noqa: A001
    return EtSession(files, threads)
