"""Training recipe and data paths of the quality work: sampled examples, balanced IDs, time
budgets, a user's own retrieval folder through the CLI, and its errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_gr.errors import DataError
from server.cli import main as cli
from server.data.jsonl import load_retrieval_folder
from server.sampling import SamplerConfig, TextCorpus, WindowSampler
from server.semantic_ids import build_ids
from server.text import encode, train_tokenizer

TEXTS = [
    ["in the beginning god created the heaven and the earth", "at first god made the skies and the land"],
    ["and the earth was without form and void", "the land was empty and had no shape"],
    ["and god said let there be light and there was light"],
]


def _corpus(max_len=16, queries=()):
    tok = train_tokenizer([t for ts in TEXTS for t in ts], vocab_size=120)
    return tok, TextCorpus.build(tok, TEXTS, [0, 0, 0], list(queries), max_len=max_len)


def test_sampled_windows_are_contiguous_windows_of_the_right_document():
    tok, corpus = _corpus()
    s = WindowSampler(corpus, SamplerConfig(batch_size=64, whole_per_batch=8, window=(2, 4)), seed=1)
    src, rows = s.sample()
    assert src.shape[0] == 72
    for x, r in zip(src.tolist(), rows.tolist()):
        toks = [t for t in x if t]
        # the tokens of a window equal the tokenization of some contiguous word window of one of its doc's texts
        cands = set()
        for text in TEXTS[r]:
            w = text.split()
            for n in range(1, len(w) + 1):
                for i in range(len(w) - n + 1):
                    cands.add(tuple(tok.encode(" ".join(w[i:i + n])).ids))
        assert tuple(toks) in cands
    # the last 8 rows are whole own texts (the indexing task)
    for x, r in zip(src[-8:].tolist(), rows[-8:].tolist()):
        assert [t for t in x if t] == tok.encode(TEXTS[r][0]).ids


def test_sampler_is_seeded_and_word_dropout_keeps_a_word():
    _, corpus = _corpus()
    cfg = SamplerConfig(batch_size=32, whole_per_batch=0, window=(3, 6), word_dropout=0.9)
    a = WindowSampler(corpus, cfg, seed=3).sample()
    b = WindowSampler(corpus, cfg, seed=3).sample()
    c = WindowSampler(corpus, cfg, seed=4).sample()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) or not torch.equal(a[1], c[1])
    assert bool(((a[0] != 0).sum(1) >= 1).all())


def test_training_queries_are_sampled_whole():
    tok, corpus = _corpus(queries=[("god made light", 2)])
    s = WindowSampler(corpus, SamplerConfig(batch_size=20, whole_per_batch=0, query_share=0.5), seed=0)
    src, rows = s.sample()
    q = encode(tok, ["god made light"], 16)[0]
    q = [t for t in q.tolist() if t]
    assert rows[10:].tolist() == [2] * 10
    assert all([t for t in x if t] == q for x in src[10:].tolist())


def test_balanced_hkm_bounds_every_leaf():
    X = np.random.default_rng(0).normal(size=(500, 8)).astype("float32")
    X[:300] += 5  # a lopsided corpus: plain k-means would pile most items into few leaves
    ids = build_ids([str(i) for i in range(500)], X, levels=(4, 4), method="bhkm")
    st = ids.stats()
    assert st["max_bucket"] <= -(-(-(-500 // 4)) // 4)  # ceil(ceil(500/4)/4) = 32
    assert len({tuple(c) for c in ids.codes}) == 500
    assert len(ids.levels) == 3


def test_time_budget_is_checked_inside_the_epoch():
    from server.model import GenerativeRetriever, GRConfig
    from server.train import TrainConfig, fit

    m = GenerativeRetriever(GRConfig(task="retrieval", levels=(4, 4), vocab_size=30, d_model=16, n_heads=2,
                                     n_enc_layers=1, n_dec_layers=1, max_len=8))
    batch = (torch.randint(1, 30, (4, 6)), torch.randint(0, 4, (4, 2)))
    many = [batch] * 10_000
    _, log = fit(m, lambda e: many, None, TrainConfig(epochs=1, max_minutes=0.5 / 60, progress=False), "t")
    assert log[0]["step"] < 10_000 and log[0]["minutes"] < 0.5


def _write(p: Path, rows, gz=False):
    data = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    p.write_bytes(gzip.compress(data) if gz else data)


DOCS = [{"id": f"d{i}", "text": t} for i, t in enumerate([
    "the quick brown fox jumps over the lazy dog near the river bank",
    "a slow green turtle walks under the old bridge in the morning",
    "bright stars shine over the quiet desert town every night",
    "fresh bread is baked in the small shop on the corner street",
    "heavy rain falls on the mountain village during the long winter",
    "children play football in the park after school each day",
])]


def test_docs_only_folder_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "mydocs"
    folder.mkdir()
    _write(folder / "docs.jsonl.gz", DOCS, gz=True)
    data = load_retrieval_folder(folder)
    assert data.train == [] and "in-sample" in data.test_label and len(data.test) == len(DOCS)
    ck = tmp_path / "ck"
    assert cli(["train", "--task", "retrieval", "--preset", "tiny", "--data", str(folder), "--out", str(ck), "--device", "cpu"]) == 0
    assert cli(["search", str(ck), "bread baked in a shop", "-k", "3"]) == 0
    assert "d" in capsys.readouterr().out
    out = tmp_path / "res.json"
    assert cli(["eval", "--task", "retrieval", "--preset", "tiny", "--data", str(folder), "--out", str(out), "--device", "cpu"]) == 0
    res = json.loads(out.read_text())["retrieval"]
    assert "in-sample" in res["protocol"]
    assert {"edge-gr-teacher", "bm25", "dense-minilm", "dense-minilm-finetuned"} <= set(res["methods"])
    assert "bm25-expanded" not in res["methods"]  # nothing to expand with: docs only
    assert res["methods"]["edge-gr-teacher"]["seeds"][0]["seed"] == 0


def test_queries_and_doc_texts_are_used_when_given(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    _write(folder / "docs.jsonl", DOCS)
    _write(folder / "train_queries.jsonl", [{"qid": f"q{i}", "text": d["text"].split()[2] + " thing", "relevant": [d["id"]]}
                                            for i, d in enumerate(DOCS * 4)])
    _write(folder / "test_queries.jsonl", [{"qid": "t0", "text": "fox and dog", "relevant": ["d0"]}])
    _write(folder / "doc_texts.jsonl", [{"id": "d0", "texts": ["a fast fox leaps"]}])
    data = load_retrieval_folder(folder)
    assert data.test_label == "test_queries" and len(data.test) == 1
    assert len(data.valid) >= 1 and len(data.train) + len(data.valid) == 24
    assert data.doc_texts == {"d0": ["a fast fox leaps"]}


@pytest.mark.parametrize("case, needle", [
    ("malformed", "docs.jsonl:2"),
    ("empty", "holds no items"),
    ("duplicate", "duplicate id"),
    ("unknown", "relevant ids not in the catalogue"),
    ("missing", "no docs.jsonl"),
])
def test_folder_errors_are_clear(tmp_path, capsys, case, needle):
    folder = tmp_path / case
    folder.mkdir()
    if case == "malformed":
        _write(folder / "docs.jsonl", [DOCS[0], "{not json"])
    elif case == "empty":
        (folder / "docs.jsonl").write_text("")
    elif case == "duplicate":
        _write(folder / "docs.jsonl", [DOCS[0], DOCS[0]])
    elif case == "unknown":
        _write(folder / "docs.jsonl", DOCS)
        _write(folder / "test_queries.jsonl", [{"qid": "t", "text": "x", "relevant": ["nope"]}])
    with pytest.raises(DataError, match=needle):
        load_retrieval_folder(folder)
    assert cli(["train", "--task", "retrieval", "--preset", "tiny", "--data", str(folder), "--out", str(tmp_path / "ck")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and not (tmp_path / "ck").exists()


def test_dataset_for_the_wrong_task_is_an_error(tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    _write(folder / "docs.jsonl", DOCS)
    assert cli(["demo", "--preset", "tiny", "--data", str(folder)]) == 2
    assert "--task" in capsys.readouterr().err
    assert cli(["eval", "--task", "rec", "--preset", "tiny", "--data", str(folder)]) == 2
    assert "not a recommendation data set" in capsys.readouterr().err


def test_rec_folder_reads_gzipped_jsonl(tmp_path):
    from server.pipeline import RecPreset, load_rec_data

    folder = tmp_path / "rec"
    folder.mkdir()
    _write(folder / "items.jsonl.gz", [{"id": "a", "text": "A"}, {"id": "b", "text": "B"}], gz=True)
    _write(folder / "interactions.jsonl.gz", [{"user": "u", "item": i, "timestamp": t} for t, i in enumerate("abab")], gz=True)
    assert load_rec_data(RecPreset(dataset=str(folder))).sequences == {"u": list("abab")}


def test_sasrec_time_budget_stops_training():
    from server.data.base import RecSplit
    from server.peers.sasrec import SASRecConfig, train_sasrec

    seqs = {f"u{u}": [str((u + t) % 6) for t in range(8)] for u in range(12)}
    split = RecSplit(train={u: s[:-2] for u, s in seqs.items()}, valid_target={u: s[-2] for u, s in seqs.items()},
                     test_target={u: s[-1] for u, s in seqs.items()})
    peer = train_sasrec(split, [str(i) for i in range(6)], SASRecConfig(d_model=16, max_len=8, epochs=500, patience=500,
                                                                        batch_size=1, max_minutes=1e-4), progress=False)
    assert len(peer.history) < 500
