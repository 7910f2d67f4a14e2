"""Dense peer: all-MiniLM-L6-v2 embeddings + exact inner-product search (faiss).

Embeddings are L2-normalised, so inner product = cosine similarity. Both document and
query embeddings go through :func:`server.embed.embed_texts` and its disk cache.

>>> docs = [Item("a", "For God so loved the world"), Item("b", "Jesus wept")]
>>> p = DensePeer().fit(docs)
>>> p.search(["Jesus cried"], k=1)[0][0][0]
'b'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_gr.errors import DataError
from server.data.base import Item
from server.embed import DIM, embed_texts, load_encoder, model_dir

__all__ = ["DensePeer"]


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise DataError("the dense peer needs `faiss-cpu`", hint="run `make install`") from e
    return faiss


class DensePeer:
    """Exact cosine search over MiniLM embeddings of ``Item.text``."""

    name = "dense-minilm"

    def __init__(self, *, batch_size: int = 64, show_progress: bool = False) -> None:
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.cache_dir: Path | None = None
        self._index = None
        self._ids: list[str] = []

    # Bulk calls (corpus, an evaluation set) are cached on disk; small ones, i.e. real
    # queries, are always encoded, so per-query latency includes the encoder.
    CACHE_MIN = 256

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed_texts(texts, cache_dir=self.cache_dir, batch_size=self.batch_size,
                           show_progress=self.show_progress, cache=len(texts) >= self.CACHE_MIN)

    def fit(self, docs: list[Item], cache_dir: Path | None = None) -> "DensePeer":
        """Embed ``docs`` (cached under ``cache_dir``) and build the index; returns ``self``."""
        if not docs:
            raise DataError("DensePeer.fit got no documents", hint="pass at least one Item")
        self.cache_dir = cache_dir
        self._ids = [d.id for d in docs]
        index = _faiss().IndexFlatIP(DIM)
        index.add(self._embed([d.text for d in docs]))
        self._index = index
        return self

    def search(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc id, cosine)`` per query, best first."""
        if self._index is None:
            raise DataError("DensePeer.search called before fit", hint="call fit(docs) first")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        k = min(k, len(self._ids))
        if not texts or k <= 0:
            return [[] for _ in texts]
        scores, idx = self._index.search(self._embed(texts), k)
        return [[(self._ids[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, idx)]

    def n_params(self) -> int:
        """Parameters of the MiniLM encoder (~22.7M)."""
        return sum(p.numel() for p in load_encoder().parameters())

    def size_bytes(self) -> int:
        """Index bytes (n x 384 float32) plus the model folder's files on disk."""
        index = 0 if self._index is None else self._index.ntotal * DIM * 4
        model = sum(f.stat().st_size for f in model_dir().rglob("*") if f.is_file())
        return int(index + model)
