"""The edge-gr generative model, in one file: a small encoder-decoder transformer.

Encoder
  * recommendation: the user's recent items, left-padded to ``max_len``; each item's
    input vector is the sum of its semantic-ID code embeddings (shared across items
    with similar codes) plus, optionally, a learned per-item embedding. Causal, so
    training covers every position of a history at once (as SASRec does).
  * retrieval: query / document text tokens; bidirectional.
Decoder
  Generates the target's semantic ID one level at a time (``BOS, c1, .., c_{L-1}`` ->
  ``c1, .., c_L``), with self-attention over the ID prefix and cross-attention to
  the encoder. Its input is laid out ``(B, T, l)``: T independent targets per example
  (every history position in training; every beam in decoding), which share one
  encoder memory - so beams never copy the memory.

Shapes in comments: B batch, S encoder length, T targets per example, l ID prefix
length, d model width, nh heads, hs head size, V code vocabulary (sum of levels).

>>> cfg = GRConfig(task="rec", levels=(4, 4, 2), n_items=32, d_model=32, n_heads=2)
>>> m = GenerativeRetriever(cfg, codes=torch.randint(0, 2, (32, 3)))
>>> src = torch.randint(1, 33, (2, 5))
>>> mem, pad = m.encode(src)
>>> m.decode(mem, pad, torch.zeros(2, 3, 1, dtype=torch.long)).shape   # 3 beams, prefix length 1, V = 4+4+2
torch.Size([2, 3, 1, 10])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GRConfig", "GenerativeRetriever", "EncoderGraph", "DecoderStepGraph", "DecoderKVStepGraph", "attend", "NEG"]


@dataclass
class GRConfig:
    task: Literal["rec", "retrieval"] = "rec"  # rec: history -> next item; retrieval: text -> doc
    levels: tuple[int, ...] = (64, 64, 64, 16)  # codes per ID level (last = collision-free suffix)
    n_items: int = 0            # catalogue size (rec: history vocabulary and per-item embedding)
    vocab_size: int = 0         # text vocabulary (retrieval)
    item_embedding: bool = True  # rec: add a learned per-item vector to each history item's code sum
    d_model: int = 128          # width
    n_heads: int = 4
    n_enc_layers: int = 2
    n_dec_layers: int = 2
    ffn_mult: int = 4           # FFN hidden = ffn_mult * d_model
    dropout: float = 0.1
    max_len: int = 50           # rec: items of history kept; retrieval: text tokens kept
    # Per-layer sizes after structured pruning (None = uniform): "enc.0.attn" / "dec.0.self_attn" /
    # "dec.0.cross_attn" -> [n_heads, head_size], "enc.0.ffn" / "dec.0.ffn" -> hidden width.
    layer_shapes: dict | None = None

    def attn_shape(self, name: str) -> tuple[int, int]:
        """(heads, head size) of the attention module ``name`` (e.g. ``"dec.0.cross_attn"``)."""
        s = (self.layer_shapes or {}).get(name)
        return (int(s[0]), int(s[1])) if s is not None else (self.n_heads, self.d_model // self.n_heads)

    def ffn_hidden(self, name: str) -> int:
        """Hidden width of the FFN ``name`` (e.g. ``"enc.1.ffn"``)."""
        s = (self.layer_shapes or {}).get(name)
        return int(s) if s is not None else self.ffn_mult * self.d_model

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GRConfig":
        d = dict(d)
        d["levels"] = tuple(d["levels"])
        return cls(**d)


NEG = -1e9  # additive mask value of the export graphs (finite: no NaN rows, safe in every runtime)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *, plain: bool = False,
           dropout: float = 0.0) -> torch.Tensor:
    """Attention over (..., T, hs) heads. ``plain``: matmul + softmax with an additive float mask, the
    ops every exporter (ONNX, ExecuTorch/XNNPACK, LiteRT) takes; else SDPA with a boolean mask (True = may attend)."""
    if plain:
        att = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1])) + mask
        return torch.softmax(att, dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class Attention(nn.Module):
    def __init__(self, d: int, nh: int, dropout: float, hs: int | None = None):
        super().__init__()
        # nh * hs may be < d once heads are pruned
        self.nh, self.hs, self.dropout = nh, hs if hs is not None else d // nh, dropout
        inner = self.nh * self.hs
        self.q = nn.Linear(d, inner)
        self.kv = nn.Linear(d, 2 * inner)  # rows: [k heads | v heads]
        self.o = nn.Linear(inner, d)

    def kv_of(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``mem`` (B, Tk, d): (B, nh, Tk, hs) each."""
        k, v = self.kv(mem).view(mem.shape[0], -1, 2, self.nh, self.hs).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None, mask: torch.Tensor | None, *,
                kv: tuple[torch.Tensor, torch.Tensor] | None = None, plain: bool = False) -> torch.Tensor:
        # x (B, Tq, d), mem (B, Tk, d) or its precomputed kv, mask broadcastable to (B, nh, Tq, Tk)
        # (boolean True = may attend; additive float when plain)
        B, Tq, d = x.shape
        q = self.q(x).view(B, Tq, self.nh, self.hs).transpose(1, 2)  # (B, nh, Tq, hs)
        k, v = kv if kv is not None else self.kv_of(mem)
        y = attend(q, k, v, mask, plain=plain, dropout=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(B, Tq, self.nh * self.hs))


class FFN(nn.Module):
    def __init__(self, d: int, mult: int, dropout: float, hidden: int | None = None):
        super().__init__()
        h = hidden if hidden is not None else mult * d
        self.net = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class EncoderBlock(nn.Module):
    def __init__(self, c: GRConfig, name: str = "enc.0"):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        nh, hs = c.attn_shape(f"{name}.attn")
        self.attn = Attention(c.d_model, nh, c.dropout, hs)
        self.ffn = FFN(c.d_model, c.ffn_mult, c.dropout, c.ffn_hidden(f"{name}.ffn"))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mask, plain: bool = False):
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, mask, plain=plain))
        return x + self.ffn(self.ln2(x))


class DecoderBlock(nn.Module):
    def __init__(self, c: GRConfig, name: str = "dec.0"):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        (snh, shs), (cnh, chs) = c.attn_shape(f"{name}.self_attn"), c.attn_shape(f"{name}.cross_attn")
        self.self_attn = Attention(c.d_model, snh, c.dropout, shs)
        self.cross_attn = Attention(c.d_model, cnh, c.dropout, chs)
        self.ffn = FFN(c.d_model, c.ffn_mult, c.dropout, c.ffn_hidden(f"{name}.ffn"))
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, mem, self_mask, cross_mask, *, kv=None, plain: bool = False):
        # x (B, T, l, d); self-attention within each of the T targets, cross-attention to mem (B, S, d)
        # or to its precomputed keys/values ``kv``
        B, T, l, d = x.shape
        h = self.ln1(x).reshape(B * T, l, d)
        x = x + self.drop(self.self_attn(h, h, self_mask, plain=plain)).view(B, T, l, d)
        h = self.ln2(x).reshape(B, T * l, d)
        x = x + self.drop(self.cross_attn(h, mem, cross_mask, kv=kv, plain=plain)).view(B, T, l, d)
        return x + self.ffn(self.ln3(x))


class GenerativeRetriever(nn.Module):
    """Encoder-decoder that maps a history or a query to a semantic ID, level by level."""

    def __init__(self, cfg: GRConfig, codes: torch.Tensor | None = None):
        super().__init__()
        self.cfg = c = cfg
        L = len(c.levels)
        offsets = torch.tensor([0] + list(c.levels[:-1])).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # (L,) start of each level in the code vocabulary
        V = int(sum(c.levels))
        if c.task == "rec":
            if codes is None or tuple(codes.shape) != (c.n_items, L):
                raise ValueError(f"rec model needs codes of shape ({c.n_items}, {L})")
            # row 0 = padding item; item i (0-based) is row i+1
            table = torch.cat([torch.zeros(1, L, dtype=torch.long), codes.long() + offsets + 1], 0)
            self.register_buffer("item_codes", table)  # (n_items+1, L) code-vocab ids, 0 = pad
            self.code_in = nn.Embedding(V + 1, c.d_model, padding_idx=0)
            self.item_in = nn.Embedding(c.n_items + 1, c.d_model, padding_idx=0) if c.item_embedding else None
        else:
            self.tok_in = nn.Embedding(c.vocab_size, c.d_model, padding_idx=0)
        self.pos_in = nn.Embedding(c.max_len, c.d_model)
        self.enc = nn.ModuleList(EncoderBlock(c, f"enc.{i}") for i in range(c.n_enc_layers))
        self.enc_ln = nn.LayerNorm(c.d_model)
        self.dec_in = nn.Embedding(V + 1, c.d_model)  # 0 = BOS, 1 + offset[l] + code
        self.level_in = nn.Embedding(L, c.d_model)
        self.dec = nn.ModuleList(DecoderBlock(c, f"dec.{i}") for i in range(c.n_dec_layers))
        self.dec_ln = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, V)
        self.drop = nn.Dropout(c.dropout)
        self.apply(self._init)
        # constant masks as buffers: LiteRT has no kernel for iota (arange / eye / tril) in the export graphs
        self.register_buffer("causal", torch.ones(c.max_len, c.max_len, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("eye", torch.eye(c.max_len, dtype=torch.bool), persistent=False)
        self.register_buffer("id_causal", torch.ones(L, L, dtype=torch.bool).tril(), persistent=False)
        self.register_buffer("positions", torch.arange(c.max_len), persistent=False)
        self.register_buffer("level_ids", torch.arange(L), persistent=False)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- encoder -------------------------------------------------------------
    def encode(self, src: torch.Tensor, *, plain: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) ids, 0 = pad (rec: left-padded item rows; retrieval: right-padded tokens).

        Returns memory (B, S, d) and the key padding mask (B, S), True = real token.
        ``plain``: the exportable attention (see :func:`attend`), same result.
        """
        c = self.cfg
        B, S = src.shape
        pad = src != 0
        if c.task == "rec":
            x = self.code_in(self.item_codes[src]).sum(2)  # (B, S, d)
            if self.item_in is not None:
                x = x + self.item_in(src)
            # causal over the history; pads attend to themselves (no NaN rows)
            mask = ((self.causal[:S, :S][None] & pad[:, None, :]) | self.eye[:S, :S][None])[:, None]  # (B, 1, S, S)
        else:
            x = self.tok_in(src)
            mask = pad[:, None, None, :]
        if plain:
            mask = _additive(mask)
        x = self.drop(x * math.sqrt(c.d_model) + self.pos_in(self.positions[:S]))
        for blk in self.enc:
            x = blk(x, mask, plain)
        return self.enc_ln(x), pad

    def cross_kv(self, mem: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every decoder layer's cross-attention keys and values of ``mem``: computed once per query."""
        return [blk.cross_attn.kv_of(mem) for blk in self.dec]

    # -- decoder -------------------------------------------------------------
    def decode(self, mem: torch.Tensor, mem_pad: torch.Tensor, prefix: torch.Tensor, cross_visible: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for the next level after each prefix.

        mem (B, S, d), mem_pad (B, S); prefix (B, T, l) decoder input ids (column 0 = BOS = 0,
        then 1 + offset + code); cross_visible (T, S) optional extra mask (rec training:
        target t sees history positions <= t). Returns (B, T, l, V) logits over the code
        vocabulary; position j predicts level j.
        """
        return self.head(self.decode_hidden(mem, mem_pad, prefix, cross_visible))

    def decode_hidden(self, mem: torch.Tensor, mem_pad: torch.Tensor, prefix: torch.Tensor, cross_visible: torch.Tensor | None = None) -> torch.Tensor:
        """The final decoder states (B, T, l, d), after the last LayerNorm (``decode`` = ``head`` of these)."""
        B, T, l = prefix.shape
        cross = mem_pad[:, None, None, :]  # (B, 1, 1, S)
        if cross_visible is not None:
            cv = cross_visible[:, None, :].expand(T, l, -1).reshape(T * l, -1)  # (T*l, S)
            cross = cross & cv[None, None]
            cross = cross | ~cross.any(-1, keepdim=True)  # a query with nothing to see: see all (its loss is masked anyway)
        return self._decoder(prefix, self.id_causal[:l, :l], cross, mem=mem)

    def _decoder(self, prefix: torch.Tensor, self_mask: torch.Tensor, cross: torch.Tensor, *, mem: torch.Tensor | None = None,
                 kv: list | None = None, plain: bool = False) -> torch.Tensor:
        # the decoder stack, once for training, eager decoding and the export graph
        l = prefix.shape[-1]
        x = self.drop(self.dec_in(prefix) + self.level_in(self.level_ids[:l]))  # (B, T, l, d)
        for i, blk in enumerate(self.dec):
            x = blk(x, mem, self_mask, cross, kv=None if kv is None else kv[i], plain=plain)
        return self.dec_ln(x)

    def decode_step(self, tok: torch.Tensor, pos: torch.Tensor, cross_mask: torch.Tensor, cross_kv: list,
                    cache: list) -> tuple[torch.Tensor, list]:
        """One decoder position for every beam, with a fixed-slot self-attention KV cache (the lean device step).

        tok (N, B) decoder input ids at position ``pos`` (0 = BOS, then 1 + offset + code); pos (1,) int64;
        cross_mask (N, S) additive; cross_kv per layer (k, v) (N, nh, S, hs); cache per layer (k, v)
        (N, B, nh, L, hs) with slots < pos filled. Returns logits (N, B, V) at ``pos`` and the caches
        with slot ``pos`` written. Exactly the full-prefix decoder's position ``pos`` (the self-attention
        is causal): slots after ``pos`` are masked, so what they hold never matters.
        """
        N, B = tok.shape
        d, L = self.cfg.d_model, self.level_ids.shape[0]
        onehot = (self.level_ids == pos).to(torch.float32)                       # (L,) the slot written now
        slot_mask = _additive(self.level_ids <= pos)                             # (L,) slots visible at pos
        x = self.dec_in(tok) + self.level_in(pos)                                # (N, B, d)
        new_cache = []
        for blk, (ck, cv), (sk, sv) in zip(self.dec, cross_kv, cache):
            a = blk.self_attn
            h = blk.ln1(x)
            q = a.q(h).view(N, B, a.nh, 1, a.hs)
            k_new, v_new = a.kv(h).view(N, B, 2, a.nh, 1, a.hs).unbind(2)        # (N, B, nh, 1, hs) each
            w = onehot.view(1, 1, 1, L, 1)
            sk, sv = sk * (1 - w) + k_new * w, sv * (1 - w) + v_new * w           # write slot pos
            y = attend(q, sk, sv, slot_mask, plain=True)                          # (N, B, nh, 1, hs)
            x = x + a.o(y.reshape(N, B, a.nh * a.hs))
            c = blk.cross_attn
            q = c.q(blk.ln2(x)).view(N, B, c.nh, c.hs).transpose(1, 2)            # (N, nh, B, hs)
            y = attend(q, ck, cv, cross_mask[:, None, None, :], plain=True)       # (N, nh, B, hs)
            x = x + c.o(y.transpose(1, 2).reshape(N, B, c.nh * c.hs))
            x = x + blk.ffn(blk.ln3(x))
            new_cache.append((sk, sv))
        return self.head(self.dec_ln(x)), new_cache

    def empty_cache(self, n: int, beams: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Zeroed fixed-slot caches for :meth:`decode_step`: per layer (k, v) of (n, beams, nh, L, hs)."""
        L = len(self.cfg.levels)
        return [tuple(torch.zeros(n, beams, b.self_attn.nh, L, b.self_attn.hs) for _ in range(2)) for b in self.dec]

    # -- export graphs ----------------------------------------------------------
    def export_graphs(self) -> tuple["EncoderGraph", "DecoderStepGraph"]:
        """The two graphs of a bundle (I/O ``enc-kv/dec-full-prefix/v1``): see :class:`EncoderGraph`."""
        return EncoderGraph(self), DecoderStepGraph(self)

    def export_step_graph(self) -> "DecoderKVStepGraph":
        """The lean decoder step (optional role ``step`` of a variant): see :meth:`decode_step`."""
        return DecoderKVStepGraph(self)

    def level_logprobs(self, logits: torch.Tensor, level: int) -> torch.Tensor:
        """log-softmax over level ``level``'s codes only: (..., V) -> (..., levels[level])."""
        o = int(self.offsets[level])
        return F.log_softmax(logits[..., o:o + self.cfg.levels[level]].float(), dim=-1)

    def teacher_inputs(self, target_codes: torch.Tensor) -> torch.Tensor:
        """(…, L) codes -> (…, L) decoder inputs: BOS then the first L-1 codes shifted into vocab ids."""
        ids = target_codes + self.offsets + 1
        return torch.cat([torch.zeros_like(ids[..., :1]), ids[..., :-1]], -1)

    def loss(self, logits: torch.Tensor, target_codes: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean per-level cross-entropy. logits (..., L, V), target_codes (..., L), weight (...) 0/1."""
        L = len(self.cfg.levels)
        total = 0.0
        for j in range(L):
            lp = self.level_logprobs(logits[..., j, :], j)  # (..., K_j)
            nll = -lp.gather(-1, target_codes[..., j:j + 1]).squeeze(-1)
            total = total + nll
        total = total / L
        if weight is None:
            return total.mean()
        return (total * weight).sum() / weight.sum().clamp_min(1)

    # -- training forward ----------------------------------------------------
    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        """Training loss (so DDP's hooks see a forward): rec ``(seq,)``, retrieval ``(src, codes)``."""
        return self.rec_loss(*batch) if self.cfg.task == "rec" else self.retrieval_loss(*batch)

    def rec_loss(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, S+1) left-padded item rows: every position predicts the next item."""
        src, tgt = seq[:, :-1], seq[:, 1:]
        mem, pad = self.encode(src)
        S = src.shape[1]
        codes = self.item_codes[tgt] - self.offsets - 1  # (B, S, L) level codes (pad rows give garbage, masked)
        codes = codes.clamp_min(0)
        visible = torch.ones(S, S, dtype=torch.bool, device=seq.device).tril()
        logits = self.decode(mem, pad, self.teacher_inputs(codes), visible)  # (B, S, L, V)
        weight = ((tgt != 0) & (src != 0)).float()
        return self.loss(logits, codes, weight)

    def retrieval_loss(self, src: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        """src (B, S) text tokens, target_codes (B, L)."""
        mem, pad = self.encode(src)
        logits = self.decode(mem, pad, self.teacher_inputs(target_codes)[:, None])  # (B, 1, L, V)
        return self.loss(logits[:, 0], target_codes)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask (True = may attend) -> additive float mask (0 / NEG)."""
    return torch.where(mask, torch.zeros((), dtype=torch.float32), torch.full((), NEG, dtype=torch.float32))


class EncoderGraph(nn.Module):
    """Exported encoder: ``src (N, S) int64 -> (cross_mask (N, S) additive, k_0, v_0, k_1, v_1, ...)``.

    Runs the encoder once per query and precomputes every decoder layer's cross-attention
    keys / values ``(N, nh, S, hs)``; ``cross_mask`` is 0 where visible, ``NEG`` on padding.
    """

    def __init__(self, model: GenerativeRetriever):
        super().__init__()
        self.m = model.eval()

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mem, pad = self.m.encode(src, plain=True)
        outs = [_additive(pad)]
        for k, v in self.m.cross_kv(mem):
            outs += [k.contiguous(), v.contiguous()]
        return tuple(outs)


class DecoderStepGraph(nn.Module):
    """Exported decoder: ``(prefix (N, B, L) int64, cross_mask (N, S), k_0, v_0, ...) -> logits (N, B, L, V)``.

    ``prefix`` is padded to the full ID length L (decoder ids: 0 = BOS, then 1 + offset + code);
    the self-attention is causal, so the caller reads position ``l`` for level ``l``. Every shape
    is static but N (queries) and B (beams), and the encoder is never recomputed.
    """

    def __init__(self, model: GenerativeRetriever):
        super().__init__()
        self.m = model.eval()

    def forward(self, prefix: torch.Tensor, cross_mask: torch.Tensor, *kv: torch.Tensor) -> torch.Tensor:
        m = self.m
        L = prefix.shape[-1]
        pairs = [(kv[2 * i], kv[2 * i + 1]) for i in range(len(m.dec))]
        x = m._decoder(prefix, _additive(m.id_causal[:L, :L]), cross_mask[:, None, None, :], kv=pairs, plain=True)
        return m.head(x)  # (N, B, L, V)


class DecoderKVStepGraph(nn.Module):
    """Exported lean step: ``(tok (N, B), pos (1,), cross_mask, k_0, v_0, ..., sk_0, sv_0, ...) ->
    (logits (N, B, V), sk_0', sv_0', ...)``; cross k/v as the encoder graph returns them, self caches
    (N, B, nh, L, hs) per decoder layer (fixed slots; see :meth:`GenerativeRetriever.decode_step`)."""

    def __init__(self, model: GenerativeRetriever):
        super().__init__()
        self.m = model.eval()

    def forward(self, tok: torch.Tensor, pos: torch.Tensor, cross_mask: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.m.dec)
        cross = [(kv[2 * i], kv[2 * i + 1]) for i in range(n)]
        cache = [(kv[2 * n + 2 * i], kv[2 * n + 2 * i + 1]) for i in range(n)]
        logits, new = self.m.decode_step(tok, pos, cross_mask, cross, cache)
        return (logits, *[t for pair in new for t in pair])
