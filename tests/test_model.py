"""The generative model end to end on tiny data built on the fly."""

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_gr.errors import FormatError, InputError
from server.data.base import Item, Query, RecData, RetrievalData
from server.generative import GenerativeModel
from server.model import GenerativeRetriever, GRConfig
from server.semantic_ids import build_ids
from server.train import TrainConfig, rec_windows, train_rec, train_retrieval

N_ITEMS = 30


def toy_rec() -> RecData:
    """Users walk the catalogue in steps of 1 (even users) or 2 (odd users)."""
    items = [Item(f"i{j}", f"item {j}") for j in range(N_ITEMS)]
    seqs = {f"u{u}": [f"i{(u + (1 + u % 2) * t) % N_ITEMS}" for t in range(12)] for u in range(120)}
    return RecData("toy", items, seqs)


def toy_ids(n=N_ITEMS, levels=(4, 4), seed=0):
    X = np.random.default_rng(seed).normal(size=(n, 8)).astype("float32")
    return build_ids([f"i{j}" for j in range(n)], X, levels=levels)


@pytest.fixture(scope="module")
def rec_model():
    d = toy_rec()
    split = d.split()
    gm, log = train_rec(split, d.items, toy_ids(), GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                        TrainConfig(epochs=25, batch_size=32, lr=5e-3, eval_queries=40, beam=10, patience=25, progress=False, warmup_steps=10))
    return gm, split, log


@pytest.fixture(scope="module")
def ret_model():
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
    docs = [Item(f"d{j}", " ".join(words[(j + t) % len(words)] for t in range(5)) + f" w{j}") for j in range(20)]
    train = [Query(f"q{j}", " ".join(d.text.split()[1:4]), frozenset({d.id})) for j, d in enumerate(docs)]
    data = RetrievalData("toy", docs, train=train, test=train, valid=train)
    ids = build_ids([d.id for d in docs], np.random.default_rng(0).normal(size=(20, 8)).astype("float32"), levels=(4,))
    gm, _ = train_retrieval(data, ids, GRConfig(d_model=32, n_heads=2, max_len=12, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                            TrainConfig(epochs=30, batch_size=16, lr=5e-3, eval_queries=20, beam=10, patience=30, progress=False, warmup_steps=10),
                            vocab_size=120, index_windows=1)
    return gm, data


def test_rec_model_learns_the_pattern(rec_model):
    gm, split, log = rec_model
    users = list(split.test_target)
    ranked = gm.rank([split.test_history(u) for u in users], 10, beam=20)
    hit = np.mean([split.test_target[u] in [i for i, _ in r] for u, r in zip(users, ranked)])
    assert hit > 0.8, hit  # random would be 10/30
    assert all(gm.ids.has(i) for r in ranked for i, _ in r)
    assert log and "valid" in log[-1]


def test_exclude_seen_and_fallbacks(rec_model):
    gm, split, _ = rec_model
    h = split.test_history("u0")
    assert not set(h[-3:]) & {i for i, _ in gm.search(h[-3:], 5, exclude_seen=True)}
    pop = gm.search([], 5)  # empty history -> documented popularity fallback
    assert [i for i, _ in pop] == gm.popularity[:5] and all(math.isnan(s) for _, s in pop)
    assert [i for i, _ in gm.search(["not-an-item"], 3)] == gm.popularity[:3]  # unknown items only
    with pytest.raises(InputError, match="history"):
        gm.search("some text")


def test_retrieval_model_learns_and_rejects_bad_queries(ret_model):
    gm, data = ret_model
    ranked = gm.search_many([q.text for q in data.test], 10, beam=10)
    hit = np.mean([q.relevant & {i for i, _ in r} != set() for q, r in zip(data.test, ranked)])
    assert hit > 0.8, hit
    for bad, msg in [("", "empty"), ("   \t", "empty"), ("!!! ???", "empty"), (b"\xff\xfe", "UTF-8"),
                     ("word " * 20_000, "characters"), (None, "must be text")]:
        with pytest.raises(InputError, match=msg):
            gm.search(bad)
    out = gm.search("alpha \x00\x01 beta \u202e\U0001F600 gamma", 3)  # control chars and emoji: still an answer
    assert len(out) == 3


def test_checkpoint_roundtrip_and_corruption(rec_model, ret_model, tmp_path):
    for gm in (rec_model[0], ret_model[0]):
        p = gm.save(tmp_path / gm.task)
        back = GenerativeModel.load(p)
        q = ["i1", "i2", "i3"] if gm.task == "rec" else "beta gamma delta"
        assert back.search(q, 5) == gm.search(q, 5)
        assert not list(tmp_path.glob("*.tmp*"))  # atomic: no temp folder left behind
    (tmp_path / "rec" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="model.safetensors"):
        GenerativeModel.load(tmp_path / "rec")
    with pytest.raises(FormatError, match="not an edge-gr checkpoint"):
        GenerativeModel.load(tmp_path / "nothing")


def test_shapes_and_windows():
    assert rec_windows([[1, 2, 3, 4, 5], [7]], 2).tolist() == [[3, 4, 5], [1, 2, 3]]
    ids = toy_ids()
    m = GenerativeRetriever(GRConfig(task="rec", levels=ids.levels, n_items=N_ITEMS, d_model=16, n_heads=2, max_len=6),
                            codes=torch.from_numpy(ids.codes))
    seq = torch.randint(0, N_ITEMS + 1, (3, 7))
    seq[0] = 0  # an all-padding row must not produce NaN
    loss = m(seq)
    assert torch.isfinite(loss)
    mem, pad = m.encode(seq[:, :-1])
    assert mem.shape == (3, 6, 16) and torch.isfinite(mem).all()


def test_ddp_two_processes(tmp_path):
    """torchrun with 2 CPU processes (gloo) trains and rank 0 saves."""
    script = tmp_path / "ddp_job.py"
    script.write_text(f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
import os, torch, torch.distributed as dist
from test_model import toy_rec, toy_ids
from server.model import GRConfig
from server.train import TrainConfig, train_rec
d = toy_rec(); s = d.split()
gm, log = train_rec(s, d.items, toy_ids(), GRConfig(d_model=16, n_heads=2, max_len=12, n_enc_layers=1, n_dec_layers=1),
                    TrainConfig(epochs=2, batch_size=32, eval_queries=10, beam=5, progress=False))
w = [p.detach().clone() for p in gm.model.parameters()]
gathered = [torch.zeros_like(w[0]) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, w[0])
assert torch.equal(gathered[0], gathered[1]), "replicas diverged"
if dist.get_rank() == 0:
    gm.save({str(tmp_path / 'ckpt')!r})
    print("DDP-OK", dist.get_world_size(), len(log), flush=True)
dist.barrier()  # no rank tears gloo down while the other still talks to it
dist.destroy_process_group()
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP-OK 2 2" in r.stdout
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()


def test_cli_reports_bad_input_without_a_trace(rec_model, tmp_path, capsys):
    from server.cli import main

    gm = rec_model[0]
    gm.meta["dataset"] = "ml-100k"
    gm.save(tmp_path / "ck")
    assert main(["search", str(tmp_path / "ck"), "--user", "no-such-user"]) == 2
    err = capsys.readouterr().err
    assert "unknown user 'no-such-user'" in err and "Traceback" not in err
    assert main(["search", str(tmp_path / "missing"), "x"]) == 2
    assert "not an edge-gr checkpoint" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "ck"), "--history", "i1", "i2", "-k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
