"""Example inputs for the two exported graphs of a bundle (I/O ``enc-kv/dec-full-prefix/v1``).

The graphs themselves belong to the model (:meth:`server.model.GenerativeRetriever.export_graphs`,
:class:`~server.model.EncoderGraph`, :class:`~server.model.DecoderStepGraph`), so the forward
pass is written once; this module only makes inputs of the right shapes for the exporters.

>>> import torch
>>> from server.model import GRConfig, GenerativeRetriever
>>> m = GenerativeRetriever(GRConfig(task="retrieval", levels=(4, 3), vocab_size=50, d_model=16, n_heads=2, max_len=6)).eval()
>>> (src,), (prefix, *enc_out) = example_inputs(m, n=2, beam=3)
>>> len(enc_out), m.export_graphs()[1](prefix, *enc_out).shape
(5, torch.Size([2, 3, 2, 7]))
"""

from __future__ import annotations

import torch

from ..model import GenerativeRetriever

__all__ = ["example_inputs"]


def example_inputs(model: GenerativeRetriever, n: int = 2, beam: int = 3) -> tuple[tuple, tuple]:
    """Example ``(encoder_args, decoder_args)`` with batch ``n`` and ``beam`` beams (avoid 1: exporters specialise on it)."""
    c = model.cfg
    hi = c.n_items + 1 if c.task == "rec" else c.vocab_size
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, hi, (n, c.max_len), generator=g)
    with torch.no_grad():
        enc_out = model.export_graphs()[0](src)
    prefix = torch.zeros(n, beam, len(c.levels), dtype=torch.long)
    return (src,), (prefix, *enc_out)
