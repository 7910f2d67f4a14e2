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

from edge_gr.errors import InputError  # noqa: F401  (re-exported for callers)
from edge_gr.text import MAX_QUERY_CHARS, PAD, UNK, check_query, encode  # shared with the device runtime

__all__ = ["train_tokenizer", "encode", "check_query", "MAX_QUERY_CHARS"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.no_padding()
    tok.no_truncation()
    return tok
