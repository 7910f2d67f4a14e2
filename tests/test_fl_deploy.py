"""A real deployment (issue #5): a SuperLink and 2 SuperNode processes on loopback
complete a FedAvg round of the probe app, without installing anything."""

import doctest
import json

import numpy as np
import psutil
import pytest

from device_sim.fl import deploy, deploy_app
from device_sim.fl.deploy import PROBE_APP_DIR, FederationError, LocalFederation
from device_sim.fl.deploy_app import expected_probe_value


@pytest.mark.parametrize("module", [deploy, deploy_app])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


@pytest.mark.timeout(180)
def test_superlink_and_two_supernodes_complete_a_round(tmp_path):
    result_path = tmp_path / "result.json"
    with LocalFederation(num_supernodes=2, workdir=tmp_path / "fed") as fed:
        res = fed.run(PROBE_APP_DIR, run_config={"result-path": str(result_path), "min-nodes": 2}, timeout=150)
        tag_pids = [p.pid for p in deploy._tagged_processes(psutil, fed._tag).values()]
        pids = fed.pids + tag_pids
        assert len(tag_pids) >= 1 + 2 + 3  # superlink, 2 supernodes and their 3 superexec helpers
    assert res.status == "finished:completed" and res.install_attempts == ()
    out = json.loads(result_path.read_text())
    assert out["rounds"]["1"] == {"partition-ids": [0, 1], "num-replies": 2}  # both SuperNodes contributed
    np.testing.assert_allclose(out["arrays"][0], np.full(4, expected_probe_value(2)), rtol=1e-12)
    assert _gone(pids)  # torn down, detached helpers included
    assert "--disable-runtime-dependency-installation" not in res.output  # sanity: output is the ServerApp log
    assert "Starting FedAvg strategy" in res.output


@pytest.mark.timeout(120)
def test_failing_run_raises_with_logs_and_tears_down(tmp_path):
    with pytest.raises(FederationError) as info:
        with LocalFederation(num_supernodes=2, workdir=tmp_path / "fed") as fed:
            pids = fed.pids
            fed.run(PROBE_APP_DIR, run_config={"array-size": -1}, timeout=100)  # the ServerApp raises
    message = str(info.value)
    assert "finished:failed" in message and "superlink.log (tail)" in message and "supernode-1.log (tail)" in message
    assert _gone(pids)


def test_app_dir_without_pyproject_is_refused_before_running(tmp_path):
    fed = LocalFederation(num_supernodes=2)
    with pytest.raises(FederationError, match="not running"):
        fed.run(tmp_path)


@pytest.mark.slow  # ~40 s: every SecAgg+ stage starts a flwr-clientapp process per node
@pytest.mark.timeout(180)
def test_secagg_round_over_real_supernodes(tmp_path):
    from device_sim.fl.deploy_app import SECAGG_PROBE_FIT, secagg_probe_initial_arrays
    from device_sim.fl.secagg import fedavg, secagg_tolerance

    result_path = tmp_path / "result.json"
    with LocalFederation(num_supernodes=3, workdir=tmp_path / "fed") as fed:
        res = fed.run(PROBE_APP_DIR.parent / "secagg_probe", timeout=150,
                      run_config={"result-path": str(result_path), "min-nodes": 3, "num-server-rounds": 1})
    assert res.status == "finished:completed" and res.install_attempts == ()
    [r] = json.loads(result_path.read_text())
    assert r["secure"] and r["partition-ids"] == [0, 1, 2] and r["num-failures"] == 0
    outs = [SECAGG_PROBE_FIT(p, secagg_probe_initial_arrays(), {}) for p in range(3)]
    want = fedavg([o[0] for o in outs], [o[1] for o in outs])
    tol = secagg_tolerance([o[1] for o in outs], max_abs_update=0.1, max_weight=2)
    assert max(float(np.abs(np.array(a) - w).max()) for a, w in zip(r["arrays"], want, strict=True)) <= tol


@pytest.mark.timeout(400)
def test_real_personalization_apps_on_two_supernodes(tmp_path):
    """The simulation's own ServerApp/ClientApp (LoRA + DP-SGD) complete a round on real SuperNodes."""
    from device_sim.fl.deploy import PERSONALIZE_APP_DIR
    from device_sim.fl.flower import FLSpec
    from device_sim.fl.local import DPConfig, LocalConfig
    from device_sim.fl.setup import FLData, prepare
    from server.model import GRConfig
    from server.train import TrainConfig

    d = FLData(dataset="ml-100k", max_users=10, levels=(8, 8), collab_dim=8,
               model=GRConfig(d_model=32, n_heads=2, n_enc_layers=1, n_dec_layers=1, max_len=20, dropout=0.1),
               train=TrainConfig(epochs=1, batch_size=64, eval_queries=5, progress=False, threads=1))
    spec = FLSpec(data=d, cache=str(tmp_path / "cache"), num_devices=2, rounds=1, clients_per_round=2, overselect=1.0,
                  min_clients=2, eligibility=False, local=LocalConfig(steps=2, batch_size=8, dp=DPConfig(target_epsilon=2.0)),
                  result_path=str(tmp_path / "run.json"))
    prepare(d, spec.cache, progress=False)  # the base model, trained once here; the SuperNodes load it
    (tmp_path / "spec.json").write_text(spec.to_json())
    with LocalFederation(num_supernodes=2, workdir=tmp_path / "fed") as fed:
        res = fed.run(PERSONALIZE_APP_DIR, run_config={"spec-path": str(tmp_path / "spec.json")}, timeout=360)
    assert res.status == "finished:completed" and res.install_attempts == ()
    out = json.loads((tmp_path / "run.json").read_text())
    [r] = out["rounds"]
    assert r["sampled"] == 2 and r["used"] == 2 and not r["skipped"]  # both devices trained and were aggregated
    assert all(set(e["records"]) <= {"arrays", "metrics"} and 0 < e["metrics"]["epsilon"] <= 2.0 * 1.001 for e in r["replies"])
    assert out["final_arrays"] is not None and any(np.abs(np.asarray(v)).sum() > 0 for v in out["final_arrays"].values())
