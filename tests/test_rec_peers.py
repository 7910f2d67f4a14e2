"""Recommendation peers: popularity and SASRec on a tiny synthetic data set.

The synthetic users walk a ring of 30 items (item i is always followed by item
i + 1 mod 30), so the next item is a deterministic function of the last one:
SASRec must learn it, popularity cannot.
"""

from __future__ import annotations

import pytest
import torch

from edge_gr.errors import FormatError, InputError
from server.data.base import Item, RecData, RecSplit
from server.metrics import rank_metrics
from server.peers.popularity import PopularityPeer
from server.peers.sasrec import SASRecConfig, SASRecPeer, train_sasrec

N_ITEMS = 30
ITEMS = [f"i{i}" for i in range(N_ITEMS)]


def ring_data(n_users: int = 200) -> RecData:
    """User u starts at item (7u mod 30) and walks 8 + (u mod 10) steps around the ring."""
    seqs = {f"u{u}": [ITEMS[(7 * u + t) % N_ITEMS] for t in range(8 + u % 10)] for u in range(n_users)}
    return RecData(name="ring", items=[Item(i, i) for i in ITEMS], sequences=seqs)


def tiny_cfg(**kw) -> SASRecConfig:
    base = dict(d_model=32, n_layers=2, n_heads=2, max_len=20, dropout=0.1, lr=5e-3,
                batch_size=32, epochs=12, patience=12, seed=0)
    return SASRecConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def split() -> RecSplit:
    return ring_data().split()


@pytest.fixture(scope="module")
def sasrec(split: RecSplit) -> SASRecPeer:
    return train_sasrec(split, ITEMS, tiny_cfg(), progress=False)


@pytest.fixture(scope="module")
def popularity(split: RecSplit) -> PopularityPeer:
    return PopularityPeer().fit(split, ITEMS)


# ---------------------------------------------------------------- popularity


def test_popularity_orders_by_training_count():
    split = RecSplit(train={"u": ["b", "c", "c"], "v": ["c", "b"], "w": ["a"]},
                     valid_target={"u": "a", "v": "a", "w": "a"}, test_target={"u": "b", "v": "b", "w": "b"})
    peer = PopularityPeer().fit(split, ["a", "b", "c", "d"])
    assert peer.rank([["x"]], k=4) == [[("c", 3.0), ("b", 2.0), ("a", 1.0), ("d", 0.0)]]
    with_valid = PopularityPeer().fit(split, ["a", "b", "c", "d"], include_valid=True)
    assert with_valid.rank([[]], k=2) == [[("a", 4.0), ("c", 3.0)]]
    assert peer.n_params() == 4 and peer.size_bytes() == 4 * 8


# ---------------------------------------------------------------- both peers


@pytest.mark.parametrize("peer_name", ["popularity", "sasrec"])
def test_exclude_seen_removes_history_items(peer_name, request):
    peer = request.getfixturevalue(peer_name)
    hist = ["i3", "i4", "i5", "i6"]
    for ranked in peer.rank([hist, ["i0"]], k=N_ITEMS, exclude_seen=True)[:1]:
        ids = [it for it, _ in ranked]
        assert not set(ids) & set(hist)
        assert sorted(ids) == sorted(set(ITEMS) - set(hist))
    full = [it for it, _ in peer.rank([hist], k=N_ITEMS)[0]]
    assert sorted(full) == sorted(ITEMS)  # every real item, no padding slot


@pytest.mark.parametrize("peer_name", ["popularity", "sasrec"])
def test_rank_is_sorted_and_sized(peer_name, request):
    peer = request.getfixturevalue(peer_name)
    out = peer.rank([["i1"], ["i2", "i3"], ["i9"] * 30], k=5)
    assert [len(r) for r in out] == [5, 5, 5]
    for r in out:
        scores = [s for _, s in r]
        assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------- SASRec


def test_sasrec_learns_the_ring(sasrec: SASRecPeer, split: RecSplit):
    users = list(split.train)
    ranked = sasrec.rank([split.train[u] for u in users], k=10)
    m = rank_metrics([[it for it, _ in r] for r in ranked], [{split.valid_target[u]} for u in users])
    assert m["recall@10"] > 0.9  # random: 10 / 30
    assert m["recall@1"] > 0.5  # random: 1 / 30
    assert sasrec.history and sasrec.history[-1]["val_recall@10"] > 0.9
    pop = PopularityPeer().fit(split, ITEMS).rank([split.train[u] for u in users], k=1)
    m_pop = rank_metrics([[it for it, _ in r] for r in pop], [{split.valid_target[u]} for u in users])
    assert m["recall@1"] > m_pop["recall@1"] + 0.3


def test_sasrec_is_deterministic_for_a_seed(split: RecSplit):
    small = dict(epochs=2, d_model=16)
    a = train_sasrec(split, ITEMS, tiny_cfg(**small), progress=False)
    b = train_sasrec(split, ITEMS, tiny_cfg(**small), progress=False)
    c = train_sasrec(split, ITEMS, tiny_cfg(seed=1, **small), progress=False)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.history == [{**h, "seconds": a.history[i]["seconds"]} for i, h in enumerate(b.history)]


def test_sasrec_empty_or_unknown_history_raises(sasrec: SASRecPeer):
    with pytest.raises(InputError):
        sasrec.rank([["i1"], []])
    with pytest.raises(InputError):
        sasrec.rank([["not-an-item"]])


def test_sasrec_skips_unknown_items(sasrec: SASRecPeer):
    assert sasrec.rank([["i4", "zzz", "i5"]], k=5) == sasrec.rank([["i4", "i5"]], k=5)


def test_sasrec_batching_does_not_change_scores(sasrec: SASRecPeer):
    hists = [["i1", "i2", "i3"], ["i7"], [f"i{t % 30}" for t in range(40)]]  # last one exceeds max_len
    together = sasrec.rank(hists, k=3)
    alone = [sasrec.rank([h], k=3)[0] for h in hists]
    for r1, r2 in zip(together, alone):
        assert [i for i, _ in r1] == [i for i, _ in r2]
        assert [s for _, s in r1] == pytest.approx([s for _, s in r2], abs=1e-4)


def test_sasrec_save_load_roundtrip(sasrec: SASRecPeer, tmp_path):
    sasrec.save(tmp_path / "m")
    back = SASRecPeer.load(tmp_path / "m")
    hist = [["i1", "i2"], ["i20"]]
    assert back.rank(hist, k=5) == sasrec.rank(hist, k=5)
    assert back.n_params() == sasrec.n_params()
    assert sasrec.size_bytes() == 4 * sum(t.numel() for t in sasrec.model.state_dict().values())
    (tmp_path / "m" / "config.json").write_text('{"format": "other", "version": 9}')
    with pytest.raises(FormatError):
        SASRecPeer.load(tmp_path / "m")


def test_sasrec_config_rejects_bad_heads():
    with pytest.raises(InputError):
        SASRecConfig(d_model=64, n_heads=3)
