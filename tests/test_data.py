import importlib.util

import pytest

from edge_gr.errors import DataError
from server.data import movielens
from server.data.base import Item, Query
from server.data.jsonl import load_rec_jsonl, load_retrieval_jsonl, read_items, read_queries, write_interactions, write_items, write_queries


def test_ml100k_loads_and_splits_leave_one_out():
    d = movielens.load_movielens("ml-100k")
    assert (len(d.items), len(d.sequences)) == (1682, 943)
    assert sum(map(len, d.sequences.values())) == 100_000
    s = d.split()
    u = next(iter(s.train))
    seq = d.sequences[u]
    assert s.train[u] == seq[:-2] and s.valid_target[u] == seq[-2] and s.test_target[u] == seq[-1]
    assert s.test_history(u) == seq[:-1]
    assert d.split().test_target == s.test_target  # deterministic


def test_missing_data_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="make install"):
        movielens.load_movielens("ml-1m")
    with pytest.raises(DataError, match="unknown MovieLens"):
        movielens.movielens_dir("ml-20m")


def test_jsonl_roundtrip(tmp_path):
    items = [Item("a", "alpha", {"g": 1}), Item("b", "beta")]
    write_items(tmp_path / "items.jsonl", items)
    write_interactions(tmp_path / "interactions.jsonl", {"u1": ["a", "b", "a"], "u2": ["b", "a", "b"]})
    d = load_rec_jsonl(tmp_path / "items.jsonl", tmp_path / "interactions.jsonl")
    assert d.sequences["u1"] == ["a", "b", "a"] and d.items[0].meta == {"g": 1}
    write_queries(tmp_path / "q.jsonl", [Query("q1", "alp", frozenset({"a"}))])
    r = load_retrieval_jsonl(tmp_path / "items.jsonl", tmp_path / "q.jsonl", tmp_path / "q.jsonl")
    assert r.test[0].relevant == {"a"} and len(r.index_queries) == 2


@pytest.mark.parametrize("line,msg", [
    (b'{"id": "x", "text": "ok"}\n{"id": "y", "text": \n', ":2: malformed JSON"),
    (b'{"id": "x", "text": "ok"}\n\xff\xfe\n', ":2: line is not valid UTF-8"),
    (b'{"id": "x"}\n', ":1: missing field 'text'"),
    (b'[1, 2]\n', ":1: expected a JSON object"),
    (b'{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', ":2: duplicate id"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line, msg):
    p = tmp_path / "items.jsonl"
    p.write_bytes(line)
    with pytest.raises(DataError, match=msg):
        read_items(p)


def test_unknown_references_and_missing_files(tmp_path):
    write_items(tmp_path / "items.jsonl", [Item("a", "alpha")])
    write_interactions(tmp_path / "i.jsonl", {"u": ["a", "zzz"]})
    with pytest.raises(DataError, match="not in the catalogue"):
        load_rec_jsonl(tmp_path / "items.jsonl", tmp_path / "i.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        read_queries(tmp_path / "nope.jsonl")
    (tmp_path / "q.jsonl").write_text('{"qid": "q", "text": "t", "relevant": []}\n')
    with pytest.raises(DataError, match="'relevant' is empty"):
        read_queries(tmp_path / "q.jsonl")
