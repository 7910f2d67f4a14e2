"""What a federation trains (issue #17): every candidate of FEDERATED_PARTS on a real model, full-parameter
federation on Flower's simulation engine (what the server receives), the emulated FedAvg used to choose a recipe,
and the client-level DP accountant behind `edge-gr fl privacy`."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
import sys
import warnings

import numpy as np
import pytest
import torch

from device_sim.fl.adapters import FEDERATED_PARTS, add_adapters, federated_part, get_adapter, set_adapter
from device_sim.fl.local import DPConfig, LocalConfig, local_train, records_loss
from device_sim.fl.records import device_records
from edge_gr.errors import InputError
from server.model import GRConfig, GenerativeRetriever

warnings.filterwarnings("ignore", message="Optimal order")


def tiny_model(n_items=40):
    torch.manual_seed(0)
    cfg = GRConfig(task="rec", n_items=n_items, levels=(8, 8), d_model=32, n_heads=2, max_len=12, n_enc_layers=1,
                   n_dec_layers=1, dropout=0.0)
    codes = torch.stack([torch.arange(n_items) % 8, torch.arange(n_items) // 8 % 8], 1)
    return GenerativeRetriever(cfg, codes=codes), codes.numpy()


@pytest.mark.parametrize("part", sorted(FEDERATED_PARTS))
def test_each_part_starts_as_the_base_trains_only_itself_and_learns(part):
    m, codes = tiny_model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    rows = np.random.default_rng(0).integers(1, 9, 60)
    src, tgt = device_records(rows, codes, max_len=12, start=1, max_records=48)
    l0 = records_loss(m, src, tgt)
    add_adapters(m, federated_part(part))
    assert records_loss(m, src, tgt) == pytest.approx(l0, abs=1e-6)        # round 0 equals the base
    init = get_adapter(m)
    res = local_train(m, src, tgt, LocalConfig(steps=20, batch_size=16, lr=1e-2, dp=DPConfig(target_epsilon=None)))
    assert records_loss(m, src, tgt) < l0 - 0.05
    assert set(res.arrays) == set(init) and all(res.arrays[k].shape == init[k].shape for k in init)
    wire = set(init)
    for n, p in m.named_parameters():
        key = n.replace(".base_layer", "").replace(".default.weight", "")
        if key not in wire:                                                 # not federated: untouched
            assert torch.equal(p, before[n.replace(".base_layer", "")]), n
    set_adapter(m, init)
    assert records_loss(m, src, tgt) == pytest.approx(l0, abs=1e-5)         # the wire format round-trips


def test_parts_are_what_they_say():
    m, _ = tiny_model()
    full = get_adapter(add_adapters(m, federated_part("full")))
    assert set(full) == {n for n, _ in tiny_model()[0].named_parameters()}
    body = get_adapter(add_adapters(tiny_model()[0], federated_part("body")))
    assert "item_in.weight" not in body and len(body) == len(full) - 1
    head = get_adapter(add_adapters(tiny_model()[0], federated_part("head-norms")))
    assert "head.weight" in head and all(k.startswith("head.") or "ln" in k for k in head)
    with pytest.raises(InputError, match="unknown federated part"):
        federated_part("everything")


@pytest.mark.parametrize("part", ["full", "lora-qo", "head-norms"])
def test_batched_sequence_training_equals_one_client_at_a_time(part):
    """The GPU screen trains a round's clients together (vmap over stacked copies); each client must get exactly what
    `local_train(objective="sequence")` gives it alone, and the sequence objective must learn."""
    from device_sim.fl.adapters import _key
    from device_sim.fl.emulate import batched_local_train
    from device_sim.fl.records import device_sequence

    m, _ = tiny_model()
    add_adapters(m, federated_part(part))
    init = get_adapter(m)
    names = {_key(n): n for n, _ in m.named_parameters() if _key(n) in init}
    rng = np.random.default_rng(1)
    seqs = np.stack([device_sequence(rng.integers(1, 41, n).tolist(), 12) for n in (5, 13, 30)])   # (3, 1, 13)
    local = LocalConfig(steps=4, lr=0.5, optimizer="sgd", objective="sequence", dp=DPConfig(target_epsilon=None))
    out = batched_local_train(m, {names[k]: torch.from_numpy(v) for k, v in init.items()}, torch.from_numpy(seqs), local)
    for c in range(3):
        set_adapter(m, init)
        with torch.no_grad():
            l0 = float(m(torch.from_numpy(seqs[c])))
        res = local_train(m, seqs[c], None, local)
        with torch.no_grad():
            assert float(m(torch.from_numpy(seqs[c]))) < l0 - 0.01                       # it learns its own sequence
        for k in init:
            assert torch.allclose(out[names[k]][c], torch.from_numpy(res.arrays[k]), atol=1e-5), (c, k)
        assert res.n_records == min(len(np.nonzero(seqs[c][0])[0]), 13) - 1
    with pytest.raises(InputError, match="record-level DP"):
        local_train(m, seqs[0], None, LocalConfig(objective="sequence"))


def test_emulated_fedavg_and_client_level_accountant(tmp_path):
    from device_sim.fl.ceiling import device_cohort
    from device_sim.fl.emulate import EmuConfig, client_epsilon, emulate, extrapolate, plan_client_noise
    from device_sim.fl.setup import FLData, prepare
    from server.train import TrainConfig

    d = FLData(dataset="ml-100k", max_users=40, levels=(8, 8), collab_dim=8, scenario="users", cloud_users=0.3,
               model=GRConfig(d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=10, dropout=0.0),
               train=TrainConfig(epochs=1, batch_size=64, eval_queries=5, progress=False, threads=1))
    setup = prepare(d, tmp_path, progress=False)
    users = device_cohort(setup, 10)
    local = LocalConfig(steps=2, batch_size=8, lr=1e-3, dp=DPConfig(target_epsilon=None))
    plain = emulate(setup, federated_part("head-norms"), local, EmuConfig(rounds=2, clients_per_round=4, eval_every=1),
                    users, targets=("valid", "test"), progress=False)
    assert sorted(plain["curve"]) == [0, 1, 2] and set(plain["curve"][2]) == {"valid", "test"}
    assert plain["epsilon"] is None and plain["upload_bytes"] == 4 * plain["params"]
    base = get_adapter(setup.adapted_model(federated_part("head-norms")).model)
    assert any(not np.array_equal(plain["final_arrays"][k], base[k]) for k in base)   # rounds moved the global model
    seq = emulate(setup, federated_part("full"), replace(local, objective="sequence", lr=1e-2), EmuConfig(
        rounds=2, clients_per_round=4, eval_every=2, target_epsilon=4.0), users, progress=False)
    assert seq["epsilon"] == pytest.approx(4.0, rel=0.02) and sorted(seq["curve"]) == [0, 2]
    assert seq["local"]["objective"] == "sequence" and seq["upload_bytes"] == 4 * seq["params"]
    z = plan_client_noise(2.0, 4 / plain["devices"], 2, 1e-5)
    noisy = emulate(setup, federated_part("head-norms"), local, EmuConfig(rounds=2, clients_per_round=4, eval_every=2,
                    target_epsilon=2.0, clipping_norm=0.5, server_opt="adam", server_lr=1e-3), users, progress=False)
    assert noisy["epsilon"] == pytest.approx(2.0, rel=0.02)
    assert noisy["noise_std_of_mean"] == pytest.approx(z * 0.5 / 4)
    # more clients per round with the same noise on the mean: the accountant's epsilon falls
    assert client_epsilon(1.0, 0.01, 100, 1e-5) > client_epsilon(2.0, 0.01, 100, 1e-5)
    rows = extrapolate(0.02, 1.0, 40, 0.011, (1000, 10_000))
    assert rows[0]["epsilon"] > rows[1]["epsilon"] or rows[1]["epsilon"] < 0.05
    assert rows[1]["noise_std_of_mean_at_epsilon_1"] < rows[0]["noise_std_of_mean_at_epsilon_1"] < 0.02


def test_cli_privacy_and_federate_reach_the_spec(tmp_path):
    from device_sim.cli import _spec
    from server.cli import build_parser

    sp = _spec(build_parser().parse_args(["fl", "run", "--federate", "head-norms", "--local-optimizer", "sgd"]))
    assert sp.adapter == federated_part("head-norms") and sp.local.optimizer == "sgd"
    from device_sim.fl.flower import FLSpec

    assert FLSpec.from_json(sp.to_json()).adapter == sp.adapter                       # the deployment's run config
    sq = _spec(build_parser().parse_args(["fl", "run", "--federate", "full", "--local-objective", "sequence", "--epsilon", "none",
                                          "--aggregation", "fedadam", "--server-lr", "2e-3", "--local-optimizer", "sgd"]))
    back = FLSpec.from_json(sq.to_json())
    assert back.local.objective == "sequence" and back.aggregation == "fedadam" and back.server_lr == 2e-3
    nodp = subprocess.run([sys.executable, "-m", "server.cli", "fl", "run", "--local-objective", "sequence", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert nodp.returncode != 0 and "Traceback" not in nodp.stderr and "--epsilon none" in nodp.stderr
    assert not (tmp_path / "x").exists()
    out = tmp_path / "dp.json"
    r = subprocess.run([sys.executable, "-m", "server.cli", "fl", "privacy", "--clients", "50", "--fleet", "4530",
                        "--rounds", "40", "--epsilon", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["epsilon"] == pytest.approx(1.0, rel=0.02) and len(doc["extrapolation"]) == 3
    bad = subprocess.run([sys.executable, "-m", "server.cli", "fl", "privacy", "--clients", "60", "--fleet", "50"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--fleet" in bad.stderr


@pytest.mark.timeout(900)
@pytest.mark.parametrize("objective", ["records", "sequence"])
def test_full_parameter_federation_on_flower_sends_only_those_weights(tmp_path, objective):
    """Issue #17's privacy check for the new trained parameters: a Flower simulation federating the output head and
    LayerNorms; every reply carries exactly those tensors (the model's shapes) and the allowed scalars, no record."""
    from device_sim.fl.flower import ALLOWED_REPLY_METRICS, FLSpec, env_for
    from device_sim.fl.setup import FLData
    from device_sim.fl.simulate import run_federated
    from server.train import TrainConfig

    d = FLData(dataset="ml-100k", max_users=30, levels=(8, 8), collab_dim=8, scenario="users", cloud_users=0.3,
               model=GRConfig(d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=10, dropout=0.0),
               train=TrainConfig(epochs=1, batch_size=64, eval_queries=5, progress=False, threads=1))
    spec = FLSpec(data=d, cache=str(tmp_path), adapter=federated_part("head-norms"), rounds=1, clients_per_round=4,
                  min_clients=2, eval_users=5, eligibility=False, aggregation="fedavg" if objective == "records" else "fedadam",
                  local=LocalConfig(steps=2, batch_size=8, lr=1e-3, objective=objective,
                                    dp=DPConfig(target_epsilon=2.0 if objective == "records" else None)))
    out = run_federated(spec, baselines=False, progress=False, num_cpus=1)
    env = env_for(spec)
    names = {n for n, p in env.gm.model.named_parameters() if p.requires_grad}
    shapes = {k: list(v.shape) for k, v in get_adapter(env.gm.model).items()}
    assert set(shapes) == names and "head.weight" in shapes
    n = 0
    for r in out["rounds"]:
        for e in r["replies"]:
            assert not e["error"] and set(e["records"]) <= {"arrays", "metrics"}
            assert set(e["metrics"]) <= ALLOWED_REPLY_METRICS
            if e["arrays"]:
                assert e["arrays"] == shapes
                n += 1
    assert n >= 2 and out["rounds"][0]["used"] >= 2
    final = {k: np.asarray(v) for k, v in out["final_arrays"].items()}
    assert any(not np.allclose(final[k], env.init[k]) for k in final)   # the aggregate moved the federated weights
    if objective == "sequence":   # the cloud-vs-edge report from this run's costs with quality measured elsewhere
        from device_sim.fl.report import write_report

        md = write_report({"run": out}, tmp_path / "report", ndcg={"cloud": 0.1234, "device": 0.2345}, ndcg_note="from a GPU run")
        doc = json.loads((tmp_path / "report" / "report.json").read_text())
        assert doc["ndcg"] == {"cloud": 0.1234, "device": 0.2345} and "from a GPU run" in md and "0.2345" in md
        assert doc["fl"]["upload_bytes_mean"] > 0 and (tmp_path / "report" / "report.png").exists()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("attack", [None, "scale:1"])
def test_robust_secure_private_round_on_the_real_model(tmp_path, attack):
    """Issue #17 item 5 through the documented API: one run with SecAgg+, client-side clipping before masking, the
    server's aggregate check, client-level DP noise and an attacking device, sampling clients from a larger pool."""
    from device_sim.fl.attacks import parse_attack
    from device_sim.fl.flower import FLSpec
    from device_sim.fl.setup import FLData
    from device_sim.fl.simulate import run_secagg
    from server.train import TrainConfig

    d = FLData(dataset="ml-100k", max_users=40, levels=(8, 8), collab_dim=8, scenario="users", cloud_users=0.3,
               model=GRConfig(d_model=16, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=10, dropout=0.0),
               train=TrainConfig(epochs=1, batch_size=64, eval_queries=5, progress=False, threads=1))
    spec = FLSpec(data=d, cache=str(tmp_path), adapter=federated_part("lora-all"), rounds=2, clients_per_round=4,
                  min_clients=2, eval_users=5, eligibility=False, max_update_norm=1.0,
                  attack=parse_attack(attack) if attack else None,
                  central_dp={"noise_multiplier": 0.5, "clipping_norm": 0.5},
                  local=LocalConfig(steps=1, lr=1.0, optimizer="sgd", objective="sequence", dp=DPConfig(target_epsilon=None)))
    res = run_secagg(spec, clients=4, devices=10)
    assert res["secure"] and res["devices"] == 10 and res["max_update_norm"] == 0.5
    assert res["sampled"] == 8 and 4 <= res["distinct"] <= 8 and 0 < res["epsilon"] < float("inf")
    for r in res["rounds"]:
        assert len(r["partitions"]) == 4 and np.isfinite(r["ndcg@10"])
        if attack and 0 in r["partitions"]:   # x1e6 after its own clipping: the unmasked mean breaks the bound
            assert r["skipped"] and "aggregate update norm" in r["reason"] and r["noise_std"] == 0.0
        else:
            assert not r["skipped"] and r["noise_std"] == pytest.approx(0.5 * 0.5 / 4)   # z * C / m on the mean
    final = {k: np.asarray(v) for k, v in res["final_arrays"].items()}
    assert all(np.isfinite(v).all() for v in final.values())
