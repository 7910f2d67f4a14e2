"""Training examples for the retrieval model, cut afresh every step by tensor ops.

A generative retriever learns to map *many different* phrasings of a document to its
ID; a fixed list of a few windows per document is memorised in minutes and then stops
teaching anything (measured on the Bible: R@10 0.32 on fixed windows vs 0.71 on fresh
ones, same model, same split). So instead of an example list, every batch is sampled:

* **windows**: a random document, a random one of its texts (its own text, other
  texts that describe it - e.g. other translations of a verse - and user-given
  training queries), a random contiguous window of ``window`` words of that text,
  optionally with word dropout;
* **whole**: a document's own text, whole (the DSI "indexing" task);
* **queries**: user-given training queries, whole.

Every text is tokenized **once** (:class:`TextCorpus`); a window of words is a
mask over the text's tokens (the tokenizer's pre-tokenizer never joins two
whitespace-separated words into one token, so the tokens of a window equal the
tokens of the window's text). The corpus lives on the training device and a batch is
a few gathers, a cumsum and a scatter: no Python per example, ~100k examples/s on one
GPU. Seeds come from a ``torch.Generator`` on that device, so a run is reproducible
for a seed on the same device type.

Why our own code: no library we know samples word windows from pre-tokenized text
on the GPU (datasets / torchdata work per example on the CPU).

>>> from server.text import train_tokenizer
>>> tok = train_tokenizer(["in the beginning god created the heaven and the earth"] * 3, vocab_size=80)
>>> corpus = TextCorpus.build(tok, [["in the beginning god created", "the heaven and the earth"]], own=[0], max_tokens=16)
>>> s = WindowSampler(corpus, SamplerConfig(batch_size=4, whole_per_batch=1, window=(2, 3)), seed=0)
>>> src, rows = s.sample()
>>> src.shape[0], rows.tolist()
(5, [0, 0, 0, 0, 0])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from edge_gr.errors import DataError

__all__ = ["SamplerConfig", "TextCorpus", "WindowSampler"]


@dataclass
class SamplerConfig:
    batch_size: int = 4096           # windows per batch
    whole_per_batch: int = 256       # + whole own texts per batch (indexing task)
    query_share: float = 0.25        # share of the window slots given to whole training queries (when there are any)
    window: tuple[int, int] = (3, 12)  # words per window, uniform in [lo, hi]
    word_dropout: float = 0.0        # drop each word of a window with this probability (at least one word is kept)
    max_len: int = 32                # tokens kept per example

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window)
        return d


class TextCorpus:
    """Every training text tokenized once, padded into device tensors.

    ``texts[d]`` lists document ``d``'s texts (row ``d`` of the ID table); ``own[d]``
    is the index in that list of the document's own text (``-1``: none); ``queries``
    are ``(text, doc row)`` training queries, used whole.
    """

    def __init__(self, tokens, word_of, n_words, text_doc, doc_start, doc_count, own_text, q_tokens, q_doc):
        self.tokens, self.word_of, self.n_words, self.text_doc = tokens, word_of, n_words, text_doc
        self.doc_start, self.doc_count, self.own_text = doc_start, doc_count, own_text
        self.q_tokens, self.q_doc = q_tokens, q_doc

    @property
    def n_docs(self) -> int:
        return len(self.doc_start)

    @property
    def n_texts(self) -> int:
        return len(self.tokens)

    def to(self, device) -> "TextCorpus":
        return TextCorpus(*(t.to(device) for t in (self.tokens, self.word_of, self.n_words, self.text_doc, self.doc_start,
                                                    self.doc_count, self.own_text, self.q_tokens, self.q_doc)))

    @classmethod
    def build(cls, tok, texts: Sequence[Sequence[str]], own: Sequence[int], queries: Sequence[tuple[str, int]] = (),
              max_tokens: int = 128, max_len: int = 32) -> "TextCorpus":
        """Tokenize ``texts`` (per document) and ``queries`` once; see the class docstring."""
        if len(texts) != len(own):
            raise DataError(f"{len(texts)} documents but {len(own)} own-text indices", hint="give one own index per document")
        flat, doc_of, starts, counts, own_idx = [], [], [], [], []
        for d, ts in enumerate(texts):
            starts.append(len(flat))
            kept = [t for t in ts if t and t.split()]
            if not kept:
                raise DataError(f"document row {d} has no text to train on", hint="give every document a non-empty text")
            counts.append(len(kept))
            o = own[d]
            own_idx.append(len(flat) + kept.index(ts[o]) if o >= 0 and ts[o] in kept else -1)
            flat += kept
            doc_of += [d] * len(kept)
        words = [t.split() for t in flat]
        encs = tok.encode_batch(words, is_pretokenized=True)
        T = min(max_tokens, max(len(e.ids) for e in encs))
        tokens = np.zeros((len(encs), T), dtype=np.int64)
        word_of = np.full((len(encs), T), -1, dtype=np.int64)
        n_words = np.zeros(len(encs), dtype=np.int64)
        for i, e in enumerate(encs):
            ids = e.ids[:T]
            wid = [w if w is not None else 0 for w in e.word_ids[:T]]
            tokens[i, :len(ids)] = ids
            word_of[i, :len(ids)] = wid
            # words whose tokens were all cut off by max_tokens cannot be windowed
            n_words[i] = (max(wid) + 1) if wid else 1
        q_text = [q for q, _ in queries]
        q_tok = np.zeros((len(q_text), max_len), dtype=np.int64)
        if q_text:
            for i, e in enumerate(tok.encode_batch(q_text)):
                ids = e.ids[:max_len]
                q_tok[i, :len(ids)] = ids
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64))  # noqa: E731
        return cls(as_t(tokens), as_t(word_of), as_t(n_words), as_t(doc_of), as_t(starts), as_t(counts), as_t(own_idx),
                   as_t(q_tok), as_t([d for _, d in queries]))


class WindowSampler:
    """Draws ``(src (B, S) tokens, doc rows (B,))`` batches from a :class:`TextCorpus`."""

    def __init__(self, corpus: TextCorpus, cfg: SamplerConfig, seed: int = 0, device: str | torch.device = "cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.c = corpus.to(self.device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(int(seed))
        q, L = self.c.q_tokens, cfg.max_len  # queries were tokenized at the corpus' max_len: fit them to ours
        self.c.q_tokens = q[:, :L] if q.shape[1] >= L else torch.nn.functional.pad(q, (0, L - q.shape[1]))
        self._has_own = bool((self.c.own_text >= 0).any())
        self._own_docs = torch.nonzero(self.c.own_text >= 0).flatten()

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)

    def _cut(self, t: torch.Tensor, start: torch.Tensor, n: torch.Tensor, dropout: float) -> torch.Tensor:
        """Tokens of words ``[start, start+n)`` of texts ``t``, left-aligned, cut to ``max_len``."""
        W = self.c.word_of[t]  # (B, T) word index per token, -1 pad
        m = (W >= start[:, None]) & (W < (start + n)[:, None])
        if dropout > 0:
            nw = int(self.c.n_words.max())
            drop = self._rand(len(t), nw) < dropout  # (B, words)
            dm = m & ~drop.gather(1, W.clamp_min(0))
            m = torch.where(dm.any(1, keepdim=True), dm, m)  # never drop every word
        pos = m.cumsum(1) - 1
        keep = m & (pos < self.cfg.max_len)
        out = torch.zeros(len(t), self.cfg.max_len, dtype=torch.long, device=self.device)
        b = torch.arange(len(t), device=self.device)[:, None].expand_as(keep)
        out[b[keep], pos[keep]] = self.c.tokens[t][keep]
        return out

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, c = self.cfg, self.c
        n_q = int(round(cfg.batch_size * cfg.query_share)) if len(c.q_doc) else 0
        n_win = cfg.batch_size - n_q
        d = (self._rand(n_win) * c.n_docs).long()
        t = c.doc_start[d] + (self._rand(n_win) * c.doc_count[d]).long()
        lo, hi = cfg.window
        n = lo + (self._rand(n_win) * (hi - lo + 1)).long()
        nw = c.n_words[t]
        n = torch.minimum(n, nw)
        s = (self._rand(n_win) * (nw - n + 1)).long()
        parts, rows = [self._cut(t, s, n, cfg.word_dropout)], [c.text_doc[t]]
        if cfg.whole_per_batch and self._has_own:
            dw = self._own_docs[(self._rand(cfg.whole_per_batch) * len(self._own_docs)).long()]
            tw = c.own_text[dw]
            parts.append(self._cut(tw, torch.zeros_like(tw), c.n_words[tw], 0.0))
            rows.append(dw)
        if n_q:
            qi = (self._rand(n_q) * len(c.q_doc)).long()
            parts.append(c.q_tokens[qi])
            rows.append(c.q_doc[qi])
        src = torch.cat(parts)
        width = max(1, int((src != 0).sum(1).max()))
        return src[:, :width], torch.cat(rows)
