"""Runtime backends, registered by name and imported lazily (only when a variant is loaded).

Every backend module has ``open(files, *, threads=None) -> Session``, ``files`` mapping role to a
path or, for an encrypted file decrypted into memory (:mod:`edge_gr.sealed`), a :class:`Blob`
(each backend loads a model from bytes, so no plaintext is written to disk); a session runs the
two graphs of the bundle I/O ``enc-kv/dec-full-prefix/v1`` on numpy arrays:

* ``encode(src (N, S) int64) -> [cross_mask, k_0, v_0, ...]``
* ``decode(prefix (N, B, L) int64, enc_outputs) -> logits (N, B, L, V)``
* ``static``: ``{}`` for dynamic shapes, else ``{"batch": n, "beam": b}`` the graphs were fixed to

ONNX Runtime telemetry is off. The official onnxruntime wheels (1.32) start Microsoft's 1DS
telemetry when the library is *imported*: a device id and an event queue are written to
``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/Microsoft/DeveloperTools/.onnxruntime/`` and events are
uploaded. ``onnxruntime.disable_telemetry_events()`` only drops non-essential events and comes too
late for that; the switch that stops it all is the environment variable
``ORT_DISABLE_TELEMETRY=1``, read once when onnxruntime loads. Importing this package (and so
``import edge_gr``) sets it unless the process already set it: a process that imports onnxruntime
*before* edge-gr must set it itself, and ``ORT_DISABLE_TELEMETRY=0`` (set before the import) keeps
ONNX Runtime's default.
>>> sorted(BACKENDS)
['executorch', 'litert', 'onnxruntime', 'torch']
>>> AUTO_ORDER
('executorch', 'onnxruntime', 'litert', 'torch')
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["BACKENDS", "AUTO_ORDER", "Session", "BackendInfo", "Blob", "register", "available", "open_session", "ORT_TELEMETRY_ENV"]

ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"  # read by onnxruntime when it is imported (see the module docstring)
os.environ.setdefault(ORT_TELEMETRY_ENV, "1")


class Session(Protocol):
    static: dict

    def encode(self, src: np.ndarray) -> list[np.ndarray]: ...

    def decode(self, prefix: np.ndarray, enc: list[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Blob:
    """A variant file held in memory (decrypted from a sealed bundle file): its path in the bundle and its bytes."""

    path: Path   # where it lives in the bundle (its name is what other files reference, e.g. ONNX external data)
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str   # the edge_gr module with ``open(files, threads=...)``
    package: str  # the import name of the runtime it needs
    install: str  # what to run when it is missing


BACKENDS: dict[str, BackendInfo] = {}
AUTO_ORDER = ("executorch", "onnxruntime", "litert", "torch")


def register(info: BackendInfo) -> None:
    """Add (or replace) a backend under ``info.name``."""
    BACKENDS[info.name] = info


register(BackendInfo("executorch", "edge_gr.backends.executorch", "executorch", "pip install executorch==1.5.1"))
register(BackendInfo("onnxruntime", "edge_gr.backends.onnxruntime", "onnxruntime", "pip install onnxruntime==1.32.0"))
register(BackendInfo("litert", "edge_gr.backends.litert", "ai_edge_litert", "pip install ai-edge-litert==2.3.0"))
register(BackendInfo("torch", "edge_gr.backends.torch", "torch", "pip install torch==2.13.0"))


def _info(name: str) -> BackendInfo:
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(f"unknown backend {name!r}", hint=f"use one of {sorted(BACKENDS)} or 'auto'") from None


def available(name: str) -> bool:
    """Whether the backend's runtime package is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec(_info(name).package) is not None
    except (ImportError, ValueError):
        return False


def missing(name: str, err: Exception | None = None) -> BackendUnavailableError:
    info = _info(name)
    why = f" ({err})" if err else ""
    return BackendUnavailableError(f"the {name} backend needs the `{info.package}` package, which is not installed{why}",
                                   hint=f"`{info.install}`, or load the bundle with backend='auto' or another backend")


def open_session(name: str, files: dict[str, Path | Blob], *, threads: int | None = None) -> Session:
    """Import backend ``name`` and open its session on ``files`` (role -> path, or :class:`Blob` in memory)."""
    info = _info(name)
    if not available(name):
        raise missing(name)
    return importlib.import_module(info.module).open(files, threads=threads)
