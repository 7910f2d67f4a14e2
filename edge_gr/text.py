"""Query checks and text encoding shared by the cloud model and the device runtime.

Only the ``tokenizers`` library (no torch): the device tokenises exactly as training did.

>>> check_query("  in the beginning ")
'  in the beginning '
>>> try:
...     check_query("")
... except InputError as e:
...     print(e.message)
the query is empty (no letters or digits)
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["check_query", "encode", "MAX_QUERY_CHARS", "PAD", "UNK"]

PAD, UNK = "[PAD]", "[UNK]"
MAX_QUERY_CHARS = 10_000  # longer queries are refused with a clear error


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
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the tokenizer (Rust) cannot take them
        raise InputError("the query contains characters that are not valid Unicode (lone surrogates)",
                         hint="send the text as proper UTF-8") from None
    if not text.strip() or not any(ch.isalnum() for ch in text):
        raise InputError("the query is empty (no letters or digits)", hint="type a few words of what you are looking for")
    return text


def encode(tok, texts: list[str], max_len: int, *, width: int | None = None) -> np.ndarray:
    """Right-padded token ids ``(len(texts), width)``, 0 = pad.

    ``width`` defaults to the longest text (at most ``max_len``); pass ``width=max_len``
    for the fixed-shape inputs of exported models.
    """
    encs = tok.encode_batch(texts)
    if width is None:
        width = max(1, min(max_len, max((len(e.ids) for e in encs), default=1)))
    out = np.zeros((len(texts), width), dtype=np.int64)
    for i, e in enumerate(encs):
        ids = e.ids[:width] or [tok.token_to_id(UNK)]
        out[i, : len(ids)] = ids
    return out
