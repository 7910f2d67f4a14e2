"""Text tokenizer for the retrieval model (HuggingFace ``tokenizers``).

We train a small lower-cased BPE vocabulary on the corpus instead of reusing
MiniLM's 30,522-token WordPiece: at d_model=128 MiniLM's vocabulary alone would be
3.9M embedding parameters, most of them for tokens the catalogue never uses; an
8k vocabulary costs 1M and covers the corpus with few splits.

>>> tok = train_tokenizer(["in the beginning god created the heaven"] * 5, vocab_size=60)
>>> ids = encode(tok, ["In the beginning"], max_len=8)
>>> ids.shape[0], int(ids[0, 0]) != 0
(1, True)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from edge_gr.errors import InputError

__all__ = ["train_tokenizer", "encode", "MAX_QUERY_CHARS"]

PAD, UNK = "[PAD]", "[UNK]"
MAX_QUERY_CHARS = 10_000  # longer queries are refused with a clear error (see encode)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.no_padding()
    tok.no_truncation()
    return tok


def check_query(text: object) -> str:
    """Validate a query string; raise :class:`InputError` saying what to do."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the query is not valid UTF-8", hint="decode it to text (UTF-8) before searching") from None
    if not isinstance(text, str):
        raise InputError(f"a query must be text, got {type(text).__name__}", hint="pass a str")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"the query has {len(text):,} characters (limit {MAX_QUERY_CHARS:,})", hint="send a shorter query, e.g. its first sentence")
    if not text.strip() or not any(ch.isalnum() for ch in text):
        raise InputError("the query is empty (no letters or digits)", hint="type a few words of what you are looking for")
    return text


def encode(tok: Tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """Right-padded token ids ``(len(texts), width)``, width <= max_len; 0 = pad."""
    encs = tok.encode_batch(texts)
    width = max(1, min(max_len, max((len(e.ids) for e in encs), default=1)))
    out = np.zeros((len(texts), width), dtype=np.int64)
    for i, e in enumerate(encs):
        ids = e.ids[:width] or [tok.token_to_id(UNK)]
        out[i, : len(ids)] = ids
    return out
