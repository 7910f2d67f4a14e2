"""The generic JSONL format users bring their own catalogue in (see :mod:`server.data.base`).

Readers check every line and raise :class:`DataError` naming the file and the line
number; writers are atomic (temp file + rename).

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "items.jsonl"
>>> _ = write_items(p, [Item("a", "alpha")])
>>> read_items(p)[0].text
'alpha'
"""

from __future__ import annotations

import gzip
import json
import math
import os
import tempfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from edge_gr.errors import DataError

from .base import Item, Query, RecData, RetrievalData

__all__ = [
    "read_items", "read_queries", "read_interactions",
    "write_items", "write_queries", "write_interactions",
    "load_rec_jsonl", "load_retrieval_jsonl", "load_retrieval_folder", "read_doc_texts", "write_doc_texts", "find_jsonl",
]


def _records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist", hint="pass the path of a JSONL file (one JSON object per line)")
    opener = gzip.open if path.suffix == ".gz" else open  # .jsonl.gz is read the same way
    n = 0
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                rec = _parse_line(path, n, raw)
                if rec is not None:
                    yield n, rec
    except (OSError, EOFError, zlib.error) as e:  # unreadable, or a damaged / truncated .gz (BadGzipFile is an OSError)
        at = f"{path}:{n + 1}" if n else str(path)
        raise DataError(f"{at}: cannot be read ({type(e).__name__}: {e})",
                        hint="check the file (a .gz must be a complete gzip file) or write it again") from None


def _parse_line(path: Path, n: int, raw: bytes) -> dict | None:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}:{n}: line is not valid UTF-8", hint="re-encode the file as UTF-8") from None
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})", hint="fix or remove that line") from None
    except RecursionError:
        raise DataError(f"{path}:{n}: JSON nested too deeply", hint="write flat records, one object per line") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise DataError(f"{path}:{n}: malformed JSON ({str(e)[:120]})", hint="fix or remove that line") from None
    if not isinstance(rec, dict):
        raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}", hint="write one object per line")
    return rec


def _field(path, n: int, rec: dict, key: str, types: type | tuple[type, ...]):
    if key not in rec:
        raise DataError(f"{path}:{n}: missing field {key!r}", hint=f"every line needs {key!r}")
    v = rec[key]
    if not isinstance(v, types) or isinstance(v, bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(f"{path}:{n}: field {key!r} has type {type(v).__name__}", hint=f"make {key!r} a {names}")
    return v


def _id(path, n: int, rec: dict, key: str) -> str:
    """An id field: a string, or an integer (read as its decimal string)."""
    return str(_field(path, n, rec, key, (str, int)))


def read_items(path: str | os.PathLike) -> list[Item]:
    """Items/docs: ``{"id": str, "text": str, "meta": {...}?}``; ids must be unique."""
    out, seen = [], set()
    for n, rec in _records(path):
        iid = _id(path, n, rec, "id")
        text = _field(path, n, rec, "text", str)
        if iid in seen:
            raise DataError(f"{path}:{n}: duplicate id {iid!r:.60}", hint="ids must be unique")
        seen.add(iid)
        meta = rec.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise DataError(f"{path}:{n}: field 'meta' has type {type(meta).__name__}", hint='make "meta" an object, e.g. {"year": 1995}')
        out.append(Item(iid, text, meta or {}))
    if not out:
        raise DataError(f"{path} holds no items", hint="add at least one item line")
    return out


def read_queries(path: str | os.PathLike) -> list[Query]:
    """Queries: ``{"qid": str, "text": str, "relevant": [id, ...]}``."""
    out = []
    for n, rec in _records(path):
        qid = _id(path, n, rec, "qid")
        text = _field(path, n, rec, "text", str)
        rel = _field(path, n, rec, "relevant", list)
        if not rel:
            raise DataError(f"{path}:{n}: 'relevant' is empty", hint="list at least one relevant id")
        if not all(isinstance(r, (str, int)) and not isinstance(r, bool) for r in rel):
            raise DataError(f"{path}:{n}: 'relevant' must be a list of ids (strings or integers)", hint='write e.g. "relevant": ["d1", "d7"]')
        out.append(Query(qid, text, frozenset(str(r) for r in rel)))
    return out


def read_interactions(path: str | os.PathLike) -> dict[str, list[str]]:
    """Interactions ``{"user", "item", "timestamp"}`` -> per-user item sequences in time order."""
    per_user: dict[str, list[tuple[float, int, str]]] = {}
    for n, rec in _records(path):
        u = _id(path, n, rec, "user")
        i = _id(path, n, rec, "item")
        t = _field(path, n, rec, "timestamp", (int, float))
        try:
            t = float(t)
        except OverflowError:
            t = math.inf
        if not math.isfinite(t):
            raise DataError(f"{path}:{n}: 'timestamp' is not a finite number", hint="write the time as seconds since 1970, e.g. 978300760")
        per_user.setdefault(u, []).append((t, n, i))
    return {u: [i for _, _, i in sorted(v)] for u, v in per_user.items()}


def _write(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.close(fd)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_items(path, items: Iterable[Item]) -> Path:
    return _write(path, ({"id": i.id, "text": i.text, **({"meta": i.meta} if i.meta else {})} for i in items))


def write_queries(path, queries: Iterable[Query]) -> Path:
    return _write(path, ({"qid": q.qid, "text": q.text, "relevant": sorted(q.relevant)} for q in queries))


def write_interactions(path, sequences: dict[str, list[str]]) -> Path:
    # Sequences carry order only; the written timestamp is the position.
    return _write(path, ({"user": u, "item": i, "timestamp": t} for u, seq in sequences.items() for t, i in enumerate(seq)))


def _check_known(path, ids: set[str], refs: Iterable[str], what: str) -> None:
    missing = sorted({r for r in refs if r not in ids})
    if missing:
        raise DataError(f"{path}: {len(missing)} {what} not in the catalogue, e.g. {missing[:3]}", hint="add them to the items file or drop them")


def load_rec_jsonl(items_path, interactions_path, name: str = "jsonl") -> RecData:
    """A recommendation data set from an items file and an interactions file."""
    items = read_items(items_path)
    seqs = read_interactions(interactions_path)
    _check_known(interactions_path, {i.id for i in items}, (i for s in seqs.values() for i in s), "interacted items")
    return RecData(name=name, items=items, sequences=seqs)


def load_retrieval_jsonl(docs_path, train_path, test_path, name: str = "jsonl", valid_path=None) -> RetrievalData:
    """A retrieval data set from a docs file and train / test (/ validation) query files."""
    docs = read_items(docs_path)
    ids = {d.id for d in docs}
    train, test = read_queries(train_path), read_queries(test_path)
    valid = read_queries(valid_path) if valid_path else []
    for p, qs in ((train_path, train), (test_path, test), (valid_path, valid)):
        _check_known(p, ids, (r for q in qs for r in q.relevant), "relevant ids")
    index = [Query(f"index:{d.id}", d.text, frozenset([d.id])) for d in docs]
    return RetrievalData(name=name, docs=docs, train=train, test=test, valid=valid, index_queries=index)


def read_doc_texts(path: str | os.PathLike, ids: set[str]) -> dict[str, list[str]]:
    """Extra texts per document: ``{"id": str, "texts": [str, ...]}`` per line (e.g. other
    translations, titles, descriptions); every id must be a document's."""
    out: dict[str, list[str]] = {}
    for n, rec in _records(path):
        did = _id(path, n, rec, "id")
        texts = _field(path, n, rec, "texts", list)
        if did not in ids:
            raise DataError(f"{path}:{n}: id {did!r:.60} is not in the docs file", hint="add that document or drop the line")
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}:{n}: 'texts' must be a list of strings", hint='write e.g. {"id": "d1", "texts": ["..."]}')
        out.setdefault(did, []).extend(t for t in texts if t.strip())
    return out


def find_jsonl(folder: str | os.PathLike, stem: str) -> Path | None:
    """``folder/stem.jsonl`` or ``folder/stem.jsonl.gz``, whichever exists (``None`` if neither)."""
    folder = Path(folder)
    for ext in (".jsonl", ".jsonl.gz"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _seeded_order(keys: list[str], seed: int, salt: str) -> list[int]:
    import hashlib

    h = [hashlib.blake2b(f"{seed}:{salt}:{k}".encode(), digest_size=8).digest() for k in keys]
    return sorted(range(len(keys)), key=lambda i: h[i])


def _window_queries(docs: list[Item], rows: list[int], seed: int, salt: str, window: int) -> list[Query]:
    import random

    out = []
    for i in rows:
        words = docs[i].text.split()
        r = random.Random(f"{seed}:{salt}:{docs[i].id}")
        s = r.randrange(max(1, len(words) - window + 1))
        out.append(Query(f"{salt}:{docs[i].id}", " ".join(words[s:s + window]), frozenset([docs[i].id])))
    return out


def load_retrieval_folder(folder: str | os.PathLike, *, seed: int = 0, max_eval: int = 2000, window: int = 6) -> RetrievalData:
    """A user's retrieval data: ``FOLDER/docs.jsonl[.gz]`` and, optionally,
    ``train_queries``, ``valid_queries``, ``test_queries`` (``{"qid", "text", "relevant"}``)
    and ``doc_texts`` (``{"id", "texts"}``) files, each ``.jsonl`` or ``.jsonl.gz``.

    * No training queries: the model trains on windows of the documents (and
      ``doc_texts``) alone.
    * No validation queries: a seeded 10% of the training queries (at most ``max_eval``)
      is held out for validation; with no training queries either, validation is a
      ``window``-word window of up to ``max_eval`` seeded documents.
    * No test queries: the test set is one ``window``-word window of up to ``max_eval``
      seeded documents, **in-sample** (the model trains on windows of the same documents),
      so it measures how well the catalogue was memorised, not generalisation; the result
      says so in ``test_label``.

    Malformed lines, an empty docs file, duplicate ids and unknown ``relevant`` ids raise
    :class:`DataError` naming the file (and line).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder", hint="pass a folder holding docs.jsonl (and optionally train_queries.jsonl / test_queries.jsonl)")
    docs_path = find_jsonl(folder, "docs")
    if docs_path is None:
        raise DataError(f"{folder} has no docs.jsonl or docs.jsonl.gz",
                        hint='write one document per line: {"id": "d1", "text": "..."}')
    docs = read_items(docs_path)
    ids = {d.id for d in docs}
    if not any(d.text.split() for d in docs):
        raise DataError(f"{docs_path}: every document text is empty", hint="give the documents some text")
    files = {k: find_jsonl(folder, f"{k}_queries") for k in ("train", "valid", "test")}
    qs = {k: (read_queries(p) if p else []) for k, p in files.items()}
    for k, p in files.items():
        if p:
            _check_known(p, ids, (r for q in qs[k] for r in q.relevant), "relevant ids")
    texts_path = find_jsonl(folder, "doc_texts")
    doc_texts = read_doc_texts(texts_path, ids) if texts_path else {}
    notes, label = [f"{len(docs)} docs from {docs_path.name}"], "test_queries"
    if not files["valid"] and qs["train"]:
        order = _seeded_order([q.qid for q in qs["train"]], seed, "valid")
        held = set(order[:min(max_eval, max(1, len(order) // 10))]) if len(order) > 1 else set()
        qs["valid"] = [q for i, q in enumerate(qs["train"]) if i in held]
        qs["train"] = [q for i, q in enumerate(qs["train"]) if i not in held]
        notes.append(f"valid = a seeded {len(qs['valid'])} of the training queries (held out of training)")
    order = _seeded_order([d.id for d in docs], seed, "eval")
    if not qs["valid"]:
        qs["valid"] = _window_queries(docs, order[:max_eval], seed, "valid-window", window)
        notes.append("valid = document windows (in-sample)")
    if not files["test"]:
        qs["test"] = _window_queries(docs, order[:max_eval], seed, "test-window", window)
        label = f"document windows, {window} words, in-sample (no test_queries file: measures memorisation, not generalisation)"
        notes.append("test = " + label)
    notes.append(f"{len(qs['train'])} training queries" if qs["train"] else "no training queries: trained on document windows only")
    index = [Query(f"index:{d.id}", d.text, frozenset([d.id])) for d in docs]
    return RetrievalData(name=folder.name, docs=docs, train=qs["train"], test=qs["test"], valid=qs["valid"],
                         index_queries=index, notes="; ".join(notes), doc_texts=doc_texts, test_label=label)


def write_doc_texts(path, doc_texts: dict[str, list[str]]) -> Path:
    return _write(path, ({"id": k, "texts": v} for k, v in doc_texts.items()))
