"""Robust aggregation (issue "Trust", item 6): one NaN client, one x1e6 client, one client claiming 1e9
examples, against the real Flower strategies behind EdgeStrategy; the SecAgg+ client refuses a NaN update."""

import numpy as np
import pytest

from device_sim.fl.errors import FederationError
from device_sim.fl.robust import ReplyGuard, check_update, make_aggregator

D = 16
HONEST = 6
EX = 20  # examples each honest client reports


@pytest.fixture
def run_identity():
    """Flower messages need the run id a ServerApp process has (set by the engine in a real run)."""
    from flwr.supercore.task_identity import TaskIdentity

    old = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # the server (SuperLink) is node 0
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _replies(updates, examples):
    from flwr.app import Message, MetricRecord, RecordDict

    from device_sim.fl.flower import _dict_to_arrays

    out = []
    for i, (u, n) in enumerate(zip(updates, examples)):
        ins = Message(RecordDict(), dst_node_id=i + 1, message_type="train")
        out.append(Message(content=RecordDict({"arrays": _dict_to_arrays({"w": np.asarray(u, dtype=np.float32)}),
                                               "metrics": MetricRecord({"num-examples": n})}), reply_to=ins))
    return out


def _round(aggregation: str, updates, examples, guard: ReplyGuard):
    """One EdgeStrategy round: configure (the global model = zeros), then aggregate the replies."""
    from device_sim.fl.flower import EdgeStrategy

    inner = make_aggregator(aggregation, byzantine=1, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)
    log: list = []
    st = EdgeStrategy(inner, clients_per_round=len(updates), min_clients=2, log=log, guard=guard)
    st._global = {"w": np.zeros(D, dtype=np.float32)}  # what configure_train records from the arrays it sends
    arrays, _ = st.aggregate_train(1, _replies(updates, examples))
    return (None if arrays is None else arrays["w"].numpy()), log[0]


def _honest(seed=0):
    return [np.random.default_rng([seed, i]).normal(0.1, 0.02, size=D) for i in range(HONEST)]


def _fedavg(updates, weights):
    w = np.asarray(weights, dtype=float)
    return (np.stack(updates) * w[:, None]).sum(0) / w.sum()


@pytest.mark.parametrize("aggregation", ["fedavg", "median", "trimmed", "krum"])
def test_a_nan_client_is_rejected_and_the_model_stays_finite(aggregation, run_identity):
    honest = _honest()
    bad = np.full(D, np.nan)
    got, row = _round(aggregation, honest + [bad], [EX] * (HONEST + 1), ReplyGuard())
    want, _ = _round(aggregation, honest, [EX] * HONEST, ReplyGuard())
    assert np.isfinite(got).all() and np.allclose(got, want, atol=1e-6)
    assert row["rejected"] == 1 and "non-finite" in row["replies"][-1]["rejected"]


def test_a_scaled_client_is_rejected_by_the_norm_bound_or_outvoted_by_the_median(run_identity):
    honest = _honest(1)
    bad = honest[0] * 1e6
    honest_avg = _fedavg(honest, [EX] * HONEST)
    got, row = _round("fedavg", honest + [bad], [EX] * (HONEST + 1), ReplyGuard(max_update_norm=5.0))
    assert np.allclose(got, honest_avg, atol=1e-6) and row["rejected"] == 1 and "norm" in row["replies"][-1]["rejected"]
    plain, _ = _round("fedavg", honest + [bad], [EX] * (HONEST + 1), ReplyGuard())  # what an unbounded mean does
    assert np.abs(plain).max() > 1e4
    # no norm bound, a robust rule: the median stays inside the honest clients' range
    med, _ = _round("median", honest + [bad], [EX] * (HONEST + 1), ReplyGuard())
    lo, hi = np.min(honest, 0), np.max(honest, 0)
    assert np.all(med >= lo - 1e-6) and np.all(med <= hi + 1e-6)
    for rule in ("trimmed", "krum", "bulyan"):
        agg, _ = _round(rule, honest + [bad], [EX] * (HONEST + 1), ReplyGuard())
        assert np.abs(agg - honest_avg).max() <= (hi - lo).max(), rule


def test_a_client_claiming_1e9_examples_gets_at_most_max_examples_weight(run_identity):
    honest = _honest(2)
    poisoned = np.full(D, 1.0)  # a plausible-looking but shifted update
    guard = ReplyGuard(max_examples=EX)
    honest_avg = _fedavg(honest, [EX] * HONEST)
    got, _ = _round("fedavg", honest + [poisoned], [EX] * HONEST + [10**9], guard)
    # its weight is clipped to max_examples: the shift is bounded by w / (w + honest weight) x its distance
    bound = EX / (EX + EX * HONEST) * np.abs(poisoned - honest_avg).max()
    assert np.abs(got - honest_avg).max() <= bound + 1e-6
    unclipped, _ = _round("fedavg", honest + [poisoned], [EX] * HONEST + [10**9], ReplyGuard(max_examples=10**12))
    assert np.abs(unclipped - poisoned).max() < 1e-3  # what FedAvg did before: the aggregate is the attacker's


def test_wrong_shapes_and_keys_are_rejected():
    g = {"w": np.zeros(D)}
    assert "shape" in check_update({"w": np.zeros(D + 1)}, g, ReplyGuard())
    assert "differ" in check_update({"v": np.zeros(D)}, g, ReplyGuard())
    with pytest.raises(FederationError, match="unknown aggregation"):
        make_aggregator("mean-of-best")


def test_secagg_client_refuses_a_nan_update_before_masking():
    from device_sim.fl.secagg import _check_client_update

    with pytest.raises(FederationError, match="non-finite"):
        _check_client_update([np.array([0.1, np.nan])], 10, max_weight=100, clipping_range=8.0)
    _check_client_update([np.array([0.1, 0.2])], 10, max_weight=100, clipping_range=8.0)


@pytest.mark.timeout(600)
def test_a_federated_run_with_a_nan_phone_keeps_the_model_finite(tmp_path):
    """The public path end to end: Flower's simulation engine, one attacking phone (a client mod), the
    server's checks - the NaN reply is rejected every round and the federated adapter stays finite."""
    from device_sim.fl.attacks import parse_attack
    from device_sim.fl.flower import FLSpec
    from device_sim.fl.local import DPConfig, LocalConfig
    from device_sim.fl.setup import FLData
    from device_sim.fl.simulate import run_federated
    from server.model import GRConfig
    from server.train import TrainConfig

    d = FLData(dataset="ml-100k", max_users=8, levels=(8, 8), collab_dim=8,
               model=GRConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=20, dropout=0.1),
               train=TrainConfig(epochs=1, batch_size=64, eval_queries=10, progress=False, threads=1))
    spec = FLSpec(data=d, cache=str(tmp_path / "flcache"), num_devices=8, rounds=2, clients_per_round=8, min_clients=2,
                  eligibility=False, eval_users=4, local=LocalConfig(steps=1, batch_size=8, dp=DPConfig(target_epsilon=None)),
                  attack=parse_attack("nan:1"))
    out = run_federated(spec, baselines=False, personal_users=2, progress=False, num_cpus=1)
    for r in out["rounds"]:
        assert r["rejected"] == 1 and not r["skipped"]
        assert any("non-finite" in e.get("rejected", "") for e in r["replies"])
    assert out["final_arrays"] is not None
    assert all(np.isfinite(np.asarray(v, dtype=float)).all() for v in out["final_arrays"].values())
