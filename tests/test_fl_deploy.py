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


def _plain_http_answer(address: str) -> bytes:
    """What a plain-text HTTP request to ``address`` gets back (b"" if the server hangs up)."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        out = b""
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def _check_tls(fed):
    """The SuperLink port speaks only TLS, with the harness's own certificate."""
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    host, port = fed.superlink_address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(fed.tls.ca_cert))  # verifies the chain and the SAN 127.0.0.1
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        presented = s.getpeercert(binary_form=True)
    want = x509.load_pem_x509_certificate(fed.tls.server_cert.read_bytes()).public_bytes(Encoding.DER)
    assert presented == want
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust the harness CA refuses it
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            ssl.create_default_context().wrap_socket(raw, server_hostname=host)
    assert not _plain_http_answer(fed.superlink_address).startswith(b"HTTP/")  # no plain-text service
    assert "insecure" not in fed.log("superlink").lower()
    assert all("insecure" not in fed.log(f"supernode-{i}").lower() for i in range(fed.num_supernodes))


def _gone(pids):
    return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


@pytest.mark.timeout(180)
def test_superlink_and_two_supernodes_complete_a_round(tmp_path):
    result_path = tmp_path / "result.json"
    with LocalFederation(num_supernodes=2, workdir=tmp_path / "fed") as fed:
        res = fed.run(PROBE_APP_DIR, run_config={"result-path": str(result_path), "min-nodes": 2}, timeout=150)
        _check_tls(fed)  # the round above ran over TLS (the default)
        assert 'root-certificates = "' in (fed.workdir / "cli-home" / "config.toml").read_text()
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


@pytest.mark.timeout(120)
def test_insecure_dev_mode_is_plain_http_and_warns(tmp_path, capfd):
    """The counter-check of the TLS test: in the explicit dev mode the same port answers plain HTTP."""
    with LocalFederation(num_supernodes=1, workdir=tmp_path / "fed", insecure_dev=True) as fed:
        assert fed.tls is None
        assert _plain_http_answer(fed.superlink_address).startswith(b"HTTP/1.1")
    err = capfd.readouterr().err
    assert "WARNING" in err and "insecure_dev=True" in err and "unencrypted" in err


def test_tls_arguments_are_checked_before_starting(tmp_path):
    from device_sim.fl.deploy import TLSFiles, make_loopback_certificates

    tls = make_loopback_certificates(tmp_path / "tls")
    with pytest.raises(FederationError, match="both tls= and insecure_dev"):
        LocalFederation(tls=tls, insecure_dev=True)
    with pytest.raises(FederationError, match="server_key .* is not a file"):
        LocalFederation(tls=TLSFiles(tls.ca_cert, tls.server_cert, tmp_path / "missing.key"))
    fed = LocalFederation(tls=tls)  # user-supplied certificates: used as given
    fed.tls = fed._given_tls
    assert fed._server_tls_args() == ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                                      "--ssl-keyfile", str(tls.server_key)]
    assert fed._client_tls_args() == ["--root-certificates", str(tls.ca_cert)]
    assert oct((tmp_path / "tls" / "ca.key").stat().st_mode & 0o777) == "0o600"


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


@pytest.mark.timeout(240)
def test_robust_secure_private_round_over_real_supernodes(tmp_path):
    """Issue #17 item 5 on the real deployment: SecAgg+ with clipping before masking, the aggregate check and
    client-level DP noise (z * C / m) on a SuperLink with 3 SuperNodes; the result is the clipped, equally weighted
    FedAvg of the probe updates plus noise of that std."""
    from device_sim.fl.deploy_app import SECAGG_PRIVATE_CLIP, SECAGG_PROBE_FIT, secagg_probe_initial_arrays
    from device_sim.fl.secagg import fedavg

    result_path = tmp_path / "result.json"
    with LocalFederation(num_supernodes=3, workdir=tmp_path / "fed") as fed:
        res = fed.run(PROBE_APP_DIR.parent / "secagg_private_probe", timeout=200,
                      run_config={"result-path": str(result_path), "min-nodes": 3, "num-server-rounds": 1,
                                  "noise-multiplier": 0.5})
    assert res.status == "finished:completed" and res.install_attempts == ()
    [r] = json.loads(result_path.read_text())
    assert r["secure"] and not r["skipped"] and r["partition-ids"] == [0, 1, 2]
    assert r["noise-std"] == pytest.approx(0.5 * SECAGG_PRIVATE_CLIP / 3)
    init = secagg_probe_initial_arrays()
    clipped = []
    for p in range(3):
        delta = [a - g for a, g in zip(SECAGG_PROBE_FIT(p, init, {})[0], init)]
        norm = float(np.sqrt(sum((d ** 2).sum() for d in delta)))
        clipped.append([d * min(1.0, SECAGG_PRIVATE_CLIP / norm) for d in delta])
    want = [g + m for g, m in zip(init, fedavg(clipped, [1, 1, 1]))]
    noise = np.concatenate([(np.array(a) - w).ravel() for a, w in zip(r["arrays"], want, strict=True)])
    assert 0 < np.abs(noise).max() < 6 * r["noise-std"]                 # noise of that scale, no clipping skipped
