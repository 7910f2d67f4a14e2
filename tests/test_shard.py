"""Semantic shard plans and query routing on a tiny trained recommender (issue "Scale out", items 1-2)."""

import numpy as np
import pytest

from edge_gr.errors import InputError
from edge_gr.ids import SemanticIds
from server.data.base import Item, RecData
from server.model import GRConfig
from server.semantic_ids import build_ids
from server.shard.plan import ShardPlan, hash_plan, semantic_plan
from server.shard.route import ShardedSearcher, compare
from server.train import TrainConfig, train_rec

N = 32


@pytest.fixture(scope="module")
def rec():
    items = [Item(f"i{j}", f"item {j}") for j in range(N)]
    data = RecData("toy", items, {f"u{u}": [f"i{(u + (1 + u % 3) * t) % N}" for t in range(10)] for u in range(150)})
    ids = build_ids([f"i{j}" for j in range(N)], np.random.default_rng(0).normal(size=(N, 8)).astype("float32"), levels=(4, 8))
    gm, _ = train_rec(data.split(), items, ids, GRConfig(d_model=32, n_heads=2, max_len=10, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                      TrainConfig(epochs=12, batch_size=32, lr=5e-3, eval_queries=20, beam=10, patience=50, progress=False, warmup_steps=10))
    split = data.split()
    users = list(split.valid_target)[:40]
    return gm, [split.train[u] for u in users], [{split.valid_target[u]} for u in users]


def test_plans_partition_the_catalogue_and_report_balance():
    ids = SemanticIds([f"i{j}" for j in range(12)], np.array([[j % 3, j // 3] for j in range(12)]), (3, 4))
    load = np.arange(12, dtype=float)
    for plan in (semantic_plan(ids, 2), semantic_plan(ids, 2, load=load, balance="load", hot=2), hash_plan(ids, 3, vnodes=16)):
        assert sorted(np.concatenate([np.flatnonzero(plan.owner == s) for s in range(plan.n_shards)]).tolist()) == list(range(12))
        st = plan.stats(load)
        assert st["items_max"] >= st["items_mean"] > 0 and st["load_imbalance"] >= 1.0
        assert ShardPlan.from_dict(plan.to_dict()).owner.tolist() == plan.owner.tolist()
    sem = semantic_plan(ids, 2)
    for p, s in sem.prefix_owner.items():  # a whole subtree on one shard
        assert set(sem.owner[ids.codes[:, 0] == p[0]]) == {s}
    hot = semantic_plan(ids, 2, load=load, hot=2)
    assert set(hot.replicas) == {11, 10} and all(len(hot.items_of(s)) > len(np.flatnonzero(hot.owner == s)) - 1 for s in range(2))
    with pytest.raises(InputError, match="n_shards"):
        semantic_plan(ids, 0)
    with pytest.raises(InputError, match="load"):
        semantic_plan(ids, 2, balance="load")


def test_a_shard_generates_only_its_items_and_scatter_matches_the_full_catalogue(rec):
    gm, inputs, rel = rec
    plan = semantic_plan(gm.ids, 3)
    sh = ShardedSearcher(gm, plan)
    for s in sh.shards:
        items, _ = gm._decode(gm.source(inputs[:5]), 5, 10, trie=sh.tries[s])
        assert set(items[items >= 0].tolist()) <= set(plan.items_of(s).tolist())
    # one shard holding everything answers exactly what the unsharded model answers
    one = ShardedSearcher(gm, semantic_plan(gm.ids, 1))
    got, fan = one.search_many(inputs, 10, beam=20, strategy="scatter")
    assert [[i for i, _ in r] for r in got] == [[i for i, _ in r] for r in gm.rank(inputs, 10, beam=20)] and set(fan) == {1}
    rows = compare(gm, plan, inputs, rel, fanouts=(1, None))
    assert rows["unsharded"]["recall_ratio"] == 1.0
    assert rows["prefix(max_fanout=1)"]["shards_per_query"] == 1.0
    assert rows["scatter"]["shards_per_query"] == len(sh.shards)
    assert 1.0 <= rows["prefix(max_fanout=beam)"]["shards_per_query"] <= len(sh.shards)
    assert all(0.0 <= r["recall@10"] <= 1.0 for r in rows.values())
