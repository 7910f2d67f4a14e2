"""BM25 peer: the lexical baseline every retriever is measured against.

``bm25s`` with English stopwords and the PyStemmer English stemmer. A query that has
no indexed token left after stopwords and stemming returns an empty ranking (an
all-zero score vector ranks nothing), and only documents with a positive score are
returned.

>>> docs = [Item("a", "For God so loved the world"), Item("b", "Jesus wept")]
>>> p = BM25Peer().fit(docs)
>>> [i for i, _ in p.search(["jesus weeping"], k=2)[0]]
['b']
>>> p.search(["the and of"])
[[]]
"""

from __future__ import annotations

import numpy as np

from edge_gr.errors import DataError
from server.data.base import Item

__all__ = ["BM25Peer"]


def _libs():
    try:
        import bm25s
        import Stemmer
    except ImportError as e:
        raise DataError("the BM25 peer needs `bm25s` and `PyStemmer`", hint="run `make install`") from e
    return bm25s, Stemmer


class BM25Peer:
    """Okapi BM25 over ``Item.text`` (bm25s defaults: k1=1.5, b=0.75, Lucene idf)."""

    name = "bm25"

    def __init__(self) -> None:
        bm25s, Stemmer = _libs()
        self._bm25s = bm25s
        self._stemmer = Stemmer.Stemmer("english")
        self._retriever = None
        self._ids: list[str] = []

    def _tokenize(self, texts: list[str], return_ids: bool):
        return self._bm25s.tokenize(
            texts, stopwords="en", stemmer=self._stemmer, return_ids=return_ids, show_progress=False
        )

    def fit(self, docs: list[Item], expansions: dict[str, list[str]] | None = None) -> "BM25Peer":
        """Index ``docs``; returns ``self``. ``expansions[doc id]``: more text indexed as part of
        that doc (document expansion - the same texts the generative model trains on, so the
        comparison is fair; the method is then reported as ``bm25-expanded``)."""
        if not docs:
            raise DataError("BM25Peer.fit got no documents", hint="pass at least one Item")
        self._ids = [d.id for d in docs]
        if expansions:
            self.name = "bm25-expanded"
        texts = [" ".join([d.text, *(expansions or {}).get(d.id, [])]) for d in docs]
        retriever = self._bm25s.BM25()
        retriever.index(self._tokenize(texts, return_ids=True), show_progress=False)
        self._retriever = retriever
        return self

    def search(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(doc id, score)`` per query, best first; ``[]`` for a query with no usable token."""
        if self._retriever is None:
            raise DataError("BM25Peer.search called before fit", hint="call fit(docs) first")
        if isinstance(texts, str):
            texts = [texts]
        k = min(k, len(self._ids))
        out: list[list[tuple[str, float]]] = []
        for tokens in self._tokenize(list(texts), return_ids=False):
            token_ids = self._retriever.get_tokens_ids(tokens)
            if not token_ids or k <= 0:
                out.append([])
                continue
            scores = self._retriever.get_scores_from_ids(token_ids)
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.lexsort((top, -scores[top]))]  # score desc, then doc order
            out.append([(self._ids[i], float(scores[i])) for i in top if scores[i] > 0])
        return out

    def size_bytes(self) -> int:
        """Approximate index size: the sparse score matrix plus the vocabulary strings and ids."""
        if self._retriever is None:
            return 0
        matrix = sum(v.nbytes for v in self._retriever.scores.values() if isinstance(v, np.ndarray))
        vocab = sum(len(t.encode()) + 8 for t in self._retriever.vocab_dict)
        return int(matrix + vocab + sum(len(i.encode()) for i in self._ids))

    def n_params(self) -> int:
        """BM25 learns nothing: 0."""
        return 0
