"""The model split into the two exported graphs of a bundle (I/O ``enc-kv/dec-full-prefix/v1``).

* ``Encoder(src (N, S)) -> (cross_mask (N, S), k_0, v_0, k_1, v_1, ...)``: runs the encoder
  once per query and precomputes every decoder layer's cross-attention keys/values
  ``(N, nh, S, hs)``; ``cross_mask`` is additive (0 = visible, -1e9 = padding).
* ``DecoderStep(prefix (N, B, L), cross_mask, k_0, v_0, ...) -> logits (N, B, L, V)``: the
  decoder over B beams per query. ``prefix`` is always padded to the full ID length L
  (decoder ids: 0 = BOS, then 1 + offset + code; positions after the real prefix are
  anything - the self-attention is causal, so position l only sees positions <= l).
  The caller reads position ``l`` for the next level. With L = 4 levels this costs at most
  4x a KV-cached step, keeps every shape static but N and B, and never recomputes the encoder.

Attention is written out (matmul + softmax) with additive masks so that every exporter
(torch.export, ONNX, ExecuTorch/XNNPACK, LiteRT) sees the same plain ops.

>>> import torch
>>> from server.model import GRConfig, GenerativeRetriever
>>> m = GenerativeRetriever(GRConfig(task="retrieval", levels=(4, 3), vocab_size=50, d_model=16, n_heads=2, max_len=6)).eval()
>>> enc, dec = Encoder(m), DecoderStep(m)
>>> outs = enc(torch.randint(1, 50, (2, 6)))
>>> len(outs), dec(torch.zeros(2, 3, 2, dtype=torch.long), *outs).shape
(5, torch.Size([2, 3, 2, 7]))
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..model import GenerativeRetriever

__all__ = ["Encoder", "DecoderStep", "example_inputs", "NEG"]

NEG = -1e9  # additive mask value (finite: no NaN rows, safe in every runtime)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # q (..., Tq, hs), k/v (..., Tk, hs), mask additive, broadcastable to (..., Tq, Tk)
    att = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1])) + mask
    return torch.softmax(att, dim=-1) @ v


def _self_attn(a, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # x (M, T, d) -> (M, T, d); a = model.Attention
    M, T, _ = x.shape
    q = a.q(x).view(M, T, a.nh, a.hs).transpose(1, 2)                        # (M, nh, T, hs)
    k, v = a.kv(x).view(M, T, 2, a.nh, a.hs).permute(2, 0, 3, 1, 4)          # (M, nh, T, hs) each
    return a.o(_attend(q, k, v, mask).transpose(1, 2).reshape(M, T, a.nh * a.hs))


class Encoder(nn.Module):
    """``src (N, S) int64 -> (cross_mask (N, S) float, k_0, v_0, ...)`` (see module docstring)."""

    def __init__(self, model: GenerativeRetriever):
        super().__init__()
        self.m = model.eval()
        S = model.cfg.max_len  # constant masks as buffers: LiteRT has no kernel for iota (arange/eye/tril)
        self.register_buffer("causal", torch.ones(S, S, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("eye", torch.eye(S, dtype=torch.bool), persistent=False)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, c = self.m, self.m.cfg
        N, S = src.shape
        pad = src != 0                                                        # (N, S) True = real
        zero = torch.zeros((), dtype=torch.float32)
        neg = torch.full((), NEG, dtype=torch.float32)
        if c.task == "rec":
            x = m.code_in(m.item_codes[src]).sum(2)                           # (N, S, d)
            if m.item_in is not None:
                x = x + m.item_in(src)
            vis = (self.causal[:S, :S][None] & pad[:, None, :]) | self.eye[:S, :S][None]  # (N, S, S)
            mask = torch.where(vis, zero, neg)[:, None]                       # (N, 1, S, S)
        else:
            x = m.tok_in(src)
            mask = torch.where(pad, zero, neg)[:, None, None, :]              # (N, 1, 1, S)
        x = x * math.sqrt(c.d_model) + m.pos_in.weight[:S]
        for blk in m.enc:
            x = x + _self_attn(blk.attn, blk.ln1(x), mask)
            x = x + blk.ffn(blk.ln2(x))
        mem = m.enc_ln(x)                                                     # (N, S, d)
        outs = [torch.where(pad, zero, neg)]
        for blk in m.dec:
            a = blk.cross_attn
            k, v = a.kv(mem).view(N, S, 2, a.nh, a.hs).permute(2, 0, 3, 1, 4)  # (N, nh, S, hs) each
            outs += [k.contiguous(), v.contiguous()]
        return tuple(outs)


class DecoderStep(nn.Module):
    """``(prefix (N, B, L) int64, cross_mask (N, S), k_0, v_0, ...) -> logits (N, B, L, V)``."""

    def __init__(self, model: GenerativeRetriever):
        super().__init__()
        self.m = model.eval()
        L = len(model.cfg.levels)
        self.register_buffer("self_mask", torch.full((L, L), NEG).triu(1), persistent=False)  # (L, L) causal

    def forward(self, prefix: torch.Tensor, cross_mask: torch.Tensor, *kv: torch.Tensor) -> torch.Tensor:
        m = self.m
        N, B, L = prefix.shape
        d = m.cfg.d_model
        x = m.dec_in(prefix) + m.level_in.weight[:L]                          # (N, B, L, d)
        cmask = cross_mask[:, None, None, :]                                  # (N, 1, 1, S)
        for i, blk in enumerate(m.dec):
            x = x + _self_attn(blk.self_attn, blk.ln1(x).reshape(N * B, L, d), self.self_mask).view(N, B, L, d)
            a = blk.cross_attn
            h = blk.ln2(x).reshape(N, B * L, d)
            q = a.q(h).view(N, B * L, a.nh, a.hs).transpose(1, 2)             # (N, nh, B*L, hs)
            y = _attend(q, kv[2 * i], kv[2 * i + 1], cmask)                   # (N, nh, B*L, hs)
            x = x + a.o(y.transpose(1, 2).reshape(N, B * L, a.nh * a.hs)).view(N, B, L, d)
            x = x + blk.ffn(blk.ln3(x))
        return m.head(m.dec_ln(x))                                            # (N, B, L, V)


def example_inputs(model: GenerativeRetriever, n: int = 2, beam: int = 3) -> tuple[tuple, tuple]:
    """Example ``(encoder_args, decoder_args)`` with batch ``n`` and ``beam`` beams (avoid 1: exporters specialise on it)."""
    c = model.cfg
    hi = c.n_items + 1 if c.task == "rec" else c.vocab_size
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, hi, (n, c.max_len), generator=g)
    with torch.no_grad():
        enc_out = Encoder(model)(src)
    prefix = torch.zeros(n, beam, len(c.levels), dtype=torch.long)
    return (src,), (prefix, *enc_out)
