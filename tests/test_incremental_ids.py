"""IDs for new items: nearest codes, collision-free suffix, spill when full, retired IDs never reused."""

import numpy as np
import pytest

from edge_gr.errors import InputError
from server.incremental_ids import assign_new_ids, nearest_prefixes, retire, rq_codebooks, utilisation, with_headroom
from server.semantic_ids import build_ids


def _clusters(n=120, k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 5
    lab = rng.integers(0, k, n)
    return (centres[lab] + rng.normal(size=(n, d)) * 0.3).astype(np.float32)


@pytest.fixture(params=["rq", "hkm"])
def base(request):
    X = _clusters()
    ids = build_ids([f"i{k}" for k in range(len(X))], X, levels=(6, 4), method=request.param, seed=0)
    return with_headroom(ids, 4), X, request.param


def test_a_new_item_next_to_an_old_one_gets_its_prefix(base):
    ids, X, method = base
    rng = np.random.default_rng(1)
    pick = rng.choice(len(X), 10, replace=False)
    new, rep = assign_new_ids(ids, X, [f"n{k}" for k in range(10)], X[pick] + 1e-4, method=method)
    assert (new.codes[len(ids):, :-1] == ids.codes[pick, :-1]).all()
    assert rep["nearest"] == 10 and rep["spilled"] == 0 and rep["collisions"] == 0


def test_old_ids_stay_the_trie_grows_and_nothing_collides(base):
    ids, X, method = base
    Xn = _clusters(n=40, seed=2)
    new, rep = assign_new_ids(ids, X, [f"n{k}" for k in range(40)], Xn, method=method)
    assert new.items[: len(ids)] == ids.items and (new.codes[: len(ids)] == ids.codes).all() and new.levels == ids.levels
    assert len(np.unique(new.codes, axis=0)) == len(new) == len(ids) + 40
    trie = new.trie()
    assert all(tuple(c) in trie for c in new.codes.tolist())
    assert rep["utilisation"]["n_items"] == len(new) and new.meta["id_version"] == 1


def test_a_full_prefix_spills_to_the_next_nearest(base):
    ids, X, method = base
    tight = with_headroom(build_ids([f"i{k}" for k in range(len(X))], X, levels=(6, 4), method=method, seed=0), 0)
    many = np.repeat(X[:1], 30, 0)  # 30 items at one spot: more than the prefix's free slots
    new, rep = assign_new_ids(tight, X, [f"n{k}" for k in range(30)], many, method=method, candidates=24)
    assert rep["spilled"] > 0 and rep["nearest"] + rep["spilled"] == 30 and len(np.unique(new.codes, axis=0)) == len(new)
    with pytest.raises(InputError, match="with_headroom"):
        assign_new_ids(tight, X, [f"m{k}" for k in range(200)], np.repeat(X[:1], 200, 0), method=method, candidates=2)


def test_retired_ids_are_never_handed_out_again(base):
    ids, X, method = base
    gone = ids.items[5]
    r = retire(ids, [gone])
    keep = [i for i in range(len(ids)) if i != 5]
    new, _ = assign_new_ids(r, X[keep], [f"n{k}" for k in range(ids.levels[-1])], np.repeat(X[5:6], ids.levels[-1], 0), method=method)
    retired = tuple(ids.codes[5])
    assert retired not in set(map(tuple, new.codes.tolist()))
    assert r.meta["retired"][0]["item"] == gone and new.meta["id_version"] == 2
    assert utilisation(new)["retired"] == 1


def test_rq_codebooks_match_the_cells_and_nearest_is_the_own_cell():
    X = _clusters()
    ids = build_ids([str(k) for k in range(len(X))], X, levels=(6, 4), method="rq", seed=0)
    books = rq_codebooks(X, ids.codes[:, :-1], ids.levels[:-1])
    hits = [nearest_prefixes(X[i], books, "rq", beam=4)[0][0] == tuple(ids.codes[i, :-1]) for i in range(len(X))]
    assert np.mean(hits) > 0.9  # k-means' own assignment is the nearest centroid (up to its last update)


def test_bad_input_says_what_to_do(base):
    ids, X, method = base
    with pytest.raises(InputError, match="already have IDs"):
        assign_new_ids(ids, X, [ids.items[0]], X[:1], method=method)
    with pytest.raises(InputError, match="one embedding row per item"):
        assign_new_ids(ids, X[:3], ["z"], X[:1], method=method)
