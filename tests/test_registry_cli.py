"""`edge-gr registry ...` and `edge-gr rollout simulate` (parsers registered the way server/cli.py does it)."""

import argparse
import json

import numpy as np
import pytest
import torch

from device_sim import rollout_sim
from edge_gr.ids import SemanticIds
from server import registry_cli
from server.data.base import Item
from server.generative import GenerativeModel
from server.model import GenerativeRetriever, GRConfig


def _run(*argv):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    registry_cli.add_parser(sub)
    rollout_sim.add_parser(sub)
    args = p.parse_args([str(a) for a in argv])
    args.fn(args)


@pytest.fixture
def setup(tmp_path):
    n = 20
    ids = SemanticIds([f"m{i}" for i in range(n)], np.array([[i % 4, i // 4] for i in range(n)]), (4, 5))
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=n, d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=8)
    torch.manual_seed(0)
    gm = GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, [Item(f"m{i}", f"movie {i}") for i in range(n)],
                         popularity=["m0"])
    gm.save(tmp_path / "ckpt")
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text("".join(json.dumps({"id": f"m{i}", "text": f"movie {i}"}) + "\n" for i in range(n)))
    (data / "interactions.jsonl").write_text("".join(json.dumps({"user": f"u{u}", "item": f"m{(u + j) % n}", "timestamp": j}) + "\n"
                                                     for u in range(60) for j in range(6)))
    return tmp_path, gm


def test_publish_list_diff_rollback_gc_materialize_package(setup, capsys):
    tmp, gm = setup
    reg = tmp / "reg"
    _run("registry", "publish", "--registry", reg, "--checkpoint", tmp / "ckpt", "--activate", "--metrics", '{"ndcg@10": 0.1}')
    with torch.no_grad():
        gm.model.head.bias += 1
    gm.save(tmp / "ckpt")
    _run("registry", "publish", "--registry", reg, "--checkpoint", tmp / "ckpt", "--activate")
    out = capsys.readouterr().out
    assert "published v1.0 (full" in out and "published v1.1 (delta, parent v1.0)" in out and "now current" in out
    _run("registry", "list", "--registry", reg, "--json")
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["current"], r["status"]) for r in rows] == [("v1.0", False, "ok"), ("v1.1", True, "ok")]
    _run("registry", "diff", "--registry", reg, "v1.0", "v1.1")
    assert list(json.loads(capsys.readouterr().out)["changed"]) == ["head.bias"]
    _run("registry", "rollback", "--registry", reg)
    assert "v1.1 -> v1.0" in capsys.readouterr().out
    _run("registry", "materialize", "--registry", reg, "v1.1", "--out", tmp / "m")
    assert torch.equal(GenerativeModel.load(tmp / "m").model.head.bias, gm.model.head.bias)
    _run("registry", "package", "--registry", reg, "--from", "v1.0", "--to", "v1.1", "--out", tmp / "pkg")
    doc = json.loads((tmp / "pkg" / "update.json").read_text())
    assert (doc["kind"], doc["from"], doc["to"], doc["files"]) == ("bundle", "v1.0", "v1.1", {})  # weights rebuilt on the device
    assert [list(s["ops"]) for s in doc["steps"]] == [["head.bias"]] and "1 rebuilt on the device" in capsys.readouterr().out
    _run("registry", "gc", "--registry", reg, "--keep", "1", "--dry-run")
    assert "would remove: nothing" in capsys.readouterr().out  # v1.1 needs v1.0; v1.0 is current
    _run("registry", "list", "--registry", reg)
    assert "v1.1" in capsys.readouterr().out


def test_rollout_simulate_writes_the_ab_report_and_never_promotes_a_corrupted_candidate(setup, capsys):
    tmp, gm = setup
    reg = tmp / "reg"
    _run("registry", "publish", "--registry", reg, "--checkpoint", tmp / "ckpt", "--activate")
    _run("registry", "publish", "--registry", reg, "--checkpoint", tmp / "ckpt", "--note", "same weights")
    _run("rollout", "simulate", "--registry", reg, "--candidate", "v1.1", "--data", tmp / "data", "--requests", "1",
         "--corrupt-candidate", "3", "--out", tmp / "rep")
    rep = json.loads((tmp / "rep.json").read_text())
    assert rep["baseline"] == "v1.0" and rep["stages"] and rep["outcome"] in ("completed", "rolled back")
    assert "| 5% |" in (tmp / "rep.md").read_text()
    from server.registry import Registry

    assert Registry(reg).current() == "v1.0"
