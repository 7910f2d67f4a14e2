"""Shared helpers of the export stages: names, dynamic shapes, example inputs."""

from __future__ import annotations

import torch

from ..model import GenerativeRetriever
from .modules import example_inputs

__all__ = ["io_names", "dynamic_shapes", "wrap", "step_io", "step_inputs", "step_dynamic_shapes"]


def io_names(model: GenerativeRetriever) -> tuple[list[str], list[str]]:
    """Names of the encoder outputs (= decoder inputs after ``prefix``)."""
    kv = [f"{t}_{i}" for i in range(model.cfg.n_dec_layers) for t in ("k", "v")]
    return ["cross_mask", *kv], ["prefix", "cross_mask", *kv]


def _src_dim(model: GenerativeRetriever, dynamic_src: bool):
    # text queries are right-padded from position 0, so a shorter input is exactly the same computation:
    # the encoder then runs on the query's real length (>= 2: exporters specialise on 1), not max_len
    return torch.export.Dim("src", min=2, max=model.cfg.max_len) if dynamic_src and model.cfg.task == "retrieval" else None


def dynamic_shapes(model: GenerativeRetriever, max_batch: int = 1024, max_beam: int = 512, *, dynamic_src: bool = False):
    """torch.export dynamic shapes: batch N (encoder + decoder) and beams B (decoder), with upper bounds;
    with ``dynamic_src`` also the text length S (retrieval models).

    ExecuTorch plans (preallocates) memory for the upper bounds, so keep them small there.
    """
    N = torch.export.Dim("batch", min=1, max=max_batch)
    B = torch.export.Dim("beam", min=1, max=max_beam)
    S = _src_dim(model, dynamic_src)
    n_kv = 2 * model.cfg.n_dec_layers
    enc = ({0: N, 1: S} if S else {0: N},)
    dec = ({0: N, 1: B}, {0: N, 1: S} if S else {0: N}, tuple(({0: N, 2: S} if S else {0: N}) for _ in range(n_kv)))  # *kv: one varargs tuple
    return enc, dec


def wrap(model: GenerativeRetriever, n: int = 2, beam: int = 3):
    """``(encoder, decoder, enc_args, dec_args)`` ready to export (float32, eval, CPU)."""
    model = model.float().cpu().eval()
    enc_args, dec_args = example_inputs(model, n, beam)
    enc, dec = model.export_graphs()
    return enc.eval(), dec.eval(), enc_args, dec_args


def step_io(model: GenerativeRetriever) -> tuple[list[str], list[str]]:
    """Input and output names of the lean step graph (role ``step``)."""
    n = model.cfg.n_dec_layers
    kv = [f"{t}_{i}" for i in range(n) for t in ("k", "v")]
    cache = [f"s{t}_{i}" for i in range(n) for t in ("k", "v")]
    return ["tok", "pos", "cross_mask", *kv, *cache], ["logits", *[c + "_out" for c in cache]]


def step_inputs(model: GenerativeRetriever, n: int = 2, beam: int = 3) -> tuple:
    """Example inputs of the step graph: BOS at position 1 with zeroed caches (avoid n, beam = 1)."""
    (src,), _ = example_inputs(model, n, beam)
    with torch.no_grad():
        enc_out = model.export_graphs()[0](src)
    cache = [t for pair in model.empty_cache(n, beam) for t in pair]
    return (torch.zeros(n, beam, dtype=torch.long), torch.ones(1, dtype=torch.long), *enc_out, *cache)


def step_dynamic_shapes(model: GenerativeRetriever, max_batch: int = 1024, max_beam: int = 512, *, dynamic_src: bool = False):
    """Dynamic batch N and beams B of the step graph (the position and the cache slots are fixed); with
    ``dynamic_src`` also the text length S of the cross-attention inputs."""
    N = torch.export.Dim("batch", min=1, max=max_batch)
    B = torch.export.Dim("beam", min=1, max=max_beam)
    S = _src_dim(model, dynamic_src)
    n_kv = 2 * model.cfg.n_dec_layers
    cross = [({0: N, 2: S} if S else {0: N}) for _ in range(n_kv)]
    return ({0: N, 1: B}, None, {0: N, 1: S} if S else {0: N}, tuple(cross + [{0: N, 1: B} for _ in range(n_kv)]))
