"""In-memory data sets shared by every loader, and the generic JSONL format.

Two tasks, one shape each:

* :class:`RetrievalData` - a catalogue of documents, training queries (query text ->
  relevant doc ids) and held-out test queries.
* :class:`RecData` - a catalogue of items and, per user, the items they interacted
  with in time order. :meth:`RecData.split` is leave-one-out by timestamp: the last
  item of each user is the test target, the second to last the validation target,
  everything before is training history.

The JSONL format (one JSON object per line, UTF-8) that users bring their own
catalogue in:

* items / docs:  ``{"id": "John.3.16", "text": "For God so loved ...", "meta": {...}}``
* queries:       ``{"qid": "q1", "text": "god so loved the world", "relevant": ["John.3.16"]}``
* interactions:  ``{"user": "u1", "item": "Toy Story (1995)", "timestamp": 978300760}``

>>> d = RecData(name="toy", items=[Item("a", "A"), Item("b", "B"), Item("c", "C")],
...             sequences={"u": ["a", "b", "c", "a"]})
>>> s = d.split()
>>> s.train["u"], s.valid_target["u"], s.test_target["u"]
(['a', 'b'], 'c', 'a')
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Item", "Query", "RetrievalData", "RecData", "RecSplit"]


@dataclass(frozen=True)
class Item:
    """A catalogue entry (an item to recommend or a document to retrieve)."""

    id: str
    text: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Query:
    """A query and the ids of every catalogue entry that counts as a hit."""

    qid: str
    text: str
    relevant: frozenset[str]


@dataclass
class RetrievalData:
    """Documents plus train / test queries. ``index_queries`` are doc-text -> id
    pseudo-queries for the indexing task (DSI's "memorise the corpus" half).
    ``doc_texts[doc id]`` are other texts that describe a document (e.g. other
    translations of a verse): training windows are cut from them as from the doc text,
    and the expanded BM25 peer indexes them. ``test_label`` says what the test set is."""

    name: str
    docs: list[Item]
    train: list[Query]
    test: list[Query]
    valid: list[Query] = field(default_factory=list)
    index_queries: list[Query] = field(default_factory=list)
    notes: str = ""
    doc_texts: dict[str, list[str]] = field(default_factory=dict)
    test_label: str = "held-out queries"


@dataclass
class RecSplit:
    """Leave-one-out split: ``train[u]`` history, then validation and test targets.

    For validation the model sees ``train[u]``; for test it sees
    ``train[u] + [valid_target[u]]``.
    """

    train: dict[str, list[str]]
    valid_target: dict[str, str]
    test_target: dict[str, str]

    def test_history(self, user: str) -> list[str]:
        return self.train[user] + [self.valid_target[user]]


@dataclass
class RecData:
    """Items plus each user's time-ordered interaction sequence."""

    name: str
    items: list[Item]
    sequences: dict[str, list[str]]
    notes: str = ""

    def split(self, min_len: int = 3) -> RecSplit:
        """Leave-one-out by time; users with fewer than ``min_len`` interactions are dropped."""
        train, valid, test = {}, {}, {}
        for u, seq in self.sequences.items():
            if len(seq) < min_len:
                continue
            train[u], valid[u], test[u] = list(seq[:-2]), seq[-2], seq[-1]
        return RecSplit(train=train, valid_target=valid, test_target=test)
