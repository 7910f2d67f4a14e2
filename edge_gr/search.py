"""One result type and one search protocol for the cloud model and the device runtime.

Both :class:`edge_gr.Retriever` (a bundle on the device) and ``server.generative.GenerativeModel``
(a checkpoint in the cloud) implement :class:`Searcher`: the same arguments, the same
:class:`Hit`, batched ``search_many`` for both tasks. A query is text for a retrieval model and
a history (item ids, oldest first) for a recommender.

>>> h = Hit("John.3.16", -0.41, "For God so loved the world")
>>> item, score = h            # a Hit unpacks as (item_id, score)
>>> item, h.title
('John.3.16', 'For God so loved the world')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

__all__ = ["Hit", "Searcher", "DEFAULT_BEAM"]

DEFAULT_BEAM = 20  # beams kept per level when a caller gives none (cloud and device alike)


@dataclass(frozen=True)
class Hit:
    """One result: catalogue id, summed log-probability (``nan`` for the popularity fallback), title."""

    item_id: str
    score: float
    title: str = ""

    def __iter__(self) -> Iterator:
        """``item_id, score = hit``."""
        return iter((self.item_id, self.score))


@runtime_checkable
class Searcher(Protocol):
    """What the cloud model and the device runtime both answer.

    ``exclude_seen`` (recommenders): drop the history's own items from the ranking (a user with
    many seen items among the top ``beam`` may get fewer than ``k`` back); ignored for text.
    ``beam`` defaults to :data:`DEFAULT_BEAM`. A rec history with no known item gets the
    popularity ranking (score ``nan``).
    """

    task: str

    def search(self, query: str | Sequence[str], k: int = 10, *, beam: int | None = None,
               exclude_seen: bool = False) -> list[Hit]: ...

    def search_many(self, queries: Sequence[str | Sequence[str]], k: int = 10, *, beam: int | None = None,
                    exclude_seen: bool = False) -> list[list[Hit]]: ...
