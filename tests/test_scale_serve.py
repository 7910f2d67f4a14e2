"""Semantic shards on Ray Serve (issue "Scale out", item 3 and the replica kill of item 6): the router + shard
deployments answer what the in-process ShardedSearcher answers, and killing a shard replica under load loses
no request. Ray is started on loopback by the test (no dashboard)."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from server.data.base import Item, RecData
from server.model import GRConfig
from server.semantic_ids import build_ids
from server.shard.plan import semantic_plan
from server.shard.route import ShardedSearcher
from server.train import TrainConfig, train_rec

N = 32

# Ray Serve clusters on loopback: run by .ci/run in their own pytest process (the full suite died right after them,
# likely from Ray state an earlier Flower simulation left in the same process), so `slow` in the default one.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    items = [Item(f"i{j}", f"item {j}") for j in range(N)]
    data = RecData("toy", items, {f"u{u}": [f"i{(u + (1 + u % 3) * t) % N}" for t in range(10)] for u in range(150)})
    ids = build_ids([f"i{j}" for j in range(N)], np.random.default_rng(0).normal(size=(N, 8)).astype("float32"), levels=(4, 8))
    gm, _ = train_rec(data.split(), items, ids, GRConfig(d_model=32, n_heads=2, max_len=10, dropout=0.0, n_enc_layers=1, n_dec_layers=1),
                      TrainConfig(epochs=6, batch_size=32, lr=5e-3, eval_queries=20, beam=10, patience=50, progress=False, warmup_steps=10))
    ckpt = tmp_path_factory.mktemp("shard-serve") / "ckpt"
    gm.save(ckpt)
    split = data.split()
    return gm, ckpt, [split.train[u] for u in list(split.valid_target)[:30]]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    import shutil

    from server.shard.engines import EtcdCluster

    if not shutil.which("etcd"):
        pytest.skip("etcd missing: apt-get install etcd-server etcd-client (make install does it as root)")
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as c:
        yield c


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    import shutil

    from server.shard.engines import NatsCluster
    from server.shard.log import CatalogueLog

    if not shutil.which("nats-server"):
        pytest.skip("nats-server missing: apt-get install nats-server (make install does it as root)")
    with NatsCluster(1, tmp_path_factory.mktemp("nats")) as c:
        with CatalogueLog(c.urls) as log:  # the stream exists before the replicas' consumers
            log.ensure_stream(replicas=1)
        yield c


@pytest.fixture(scope="module")
def service(rec, etcd, nats):
    from server.shard.serving import start

    gm, ckpt, _ = rec
    plan = semantic_plan(gm.ids, 2)
    svc = start(ckpt, plan, port=_free_port(), replicas=2, beam=10, health_period_s=1.0, etcd=etcd.endpoints, nats=nats.urls)
    yield svc, plan
    svc.shutdown()


def test_ray_serve_shards_answer_what_the_in_process_searcher_answers(rec, service):
    gm, _, histories = rec
    svc, plan = service
    want, _ = ShardedSearcher(gm, plan).search_many(histories, 5, beam=10, strategy="prefix")
    with httpx.Client(timeout=60) as c:
        assert c.get(svc.url + "/health").json()["items"] == N
        for h, w in zip(histories, want):
            r = c.post(svc.url + "/search", json={"history": h, "k": 5})
            assert r.status_code == 200, r.text
            assert [(x["item_id"], round(x["score"], 4)) for x in r.json()["items"]] == [(i, round(s, 4)) for i, s in w]
        bad = c.post(svc.url + "/search", json={"query": "text to a recommender"})
        assert bad.status_code == 400 and "history" in bad.json()["detail"]


def _replica_views(url: str, shard: int, want: int = 2, timeout: float = 60.0) -> dict:
    """replica id -> its /shards view of ``shard``, until ``want`` replicas answered (Serve picks one per call)."""
    seen: dict = {}
    deadline = time.time() + timeout
    while time.time() < deadline and len(seen) < want:
        v = httpx.get(url + "/shards", timeout=30).json()["shards"][str(shard)]
        seen[v["replica"]] = v
    return seen


def test_catalogue_updates_from_jetstream_reach_every_replica(rec, service, etcd, nats):
    """The leased writer appends retire / add updates; both replicas of the shard apply them in order: the
    retired item is never served again and the replicas end with the same item table."""
    from edge_gr.ids import SemanticIds
    from server.shard.log import CatalogueLog, ShardWriter
    from server.shard.meta import ShardMeta

    gm, _, histories = rec
    svc, plan = service
    X = np.random.default_rng(0).normal(size=(N, 8))  # the vectors the fixture built the IDs from
    shard = 0
    rows = plan.items_of(shard)
    base = SemanticIds([gm.ids.items[r] for r in rows], gm.ids.codes[rows], gm.ids.levels, {})
    served = {x["item_id"] for h in histories for x in httpx.post(svc.url + "/search", json={"history": h, "k": 10}, timeout=60).json()["items"]}
    victim = next(i for i in base.items if i in served)
    with ShardMeta(etcd.endpoints) as meta, CatalogueLog(nats.urls) as log:
        lock = meta.acquire_writer(shard, "writer-1", ttl=10)
        w = ShardWriter(log, shard, base, X[rows], token=lock.token, writer_id="writer-1")
        seqs = w.retire([victim]) + w.add(["new-a", "new-b"], X[rows[:2]] + 0.01)
        lock.release()
    assert len(seqs) == 3
    deadline = time.time() + 60
    while time.time() < deadline:
        views = _replica_views(svc.url, shard)
        if len(views) == 2 and all(v.get("applied_seq", 0) >= seqs[-1] for v in views.values()):
            break
        time.sleep(0.5)
    assert len(views) == 2 and all(v["applied_seq"] >= seqs[-1] and v["rejected"] == 0 for v in views.values()), views
    assert len({v["items_hash"] for v in views.values()}) == 1  # the same table on both replicas
    assert all(v["items"] == len(rows) + 1 for v in views.values())
    for h in histories:
        got = [x["item_id"] for x in httpx.post(svc.url + "/search", json={"history": h, "k": 10}, timeout=60).json()["items"]]
        assert victim not in got


def test_rollout_through_etcd_reloads_every_shard_canary_first(rec, service, etcd, tmp_path):
    """`edge-gr shard-rollout` switches each shard's `current` by CAS; the replicas watch it and reload; the
    check waits until the service reports the new version before the next shard moves."""
    from server.cli import main as cli
    from server.shard.meta import ShardMeta

    gm, _, histories = rec
    svc, plan = service
    with ShardMeta(etcd.endpoints) as meta:
        assert all(len(meta.live_replicas(s)) == 2 for s in range(plan.n_shards))  # liveness leases
    v2 = tmp_path / "ckpt-v2"
    gm.save(v2)
    assert cli(["shard-rollout", "--etcd", ",".join(etcd.endpoints), "--shards", "1,0", "--checkpoint", str(v2),
                "--version", "v2", "--check-url", svc.url, "--check-timeout", "60"]) == 0
    shards = httpx.get(svc.url + "/shards", timeout=30).json()["shards"]
    assert {s: v["version"] for s, v in shards.items()} == {"0": "v2", "1": "v2"}
    r = httpx.post(svc.url + "/search", json={"history": histories[0], "k": 3}, timeout=60).json()
    assert r["model_version"] == "v2"
    # every replica reloaded, not only the one the router asked: wait until both report v2 on every shard
    deadline = time.time() + 30
    while time.time() < deadline:
        seen = {(s, tuple(sorted({httpx.get(svc.url + "/shards", timeout=30).json()["shards"][str(s)]["version"] for _ in range(6)})))
                for s in range(plan.n_shards)}
        if all(v == ("v2",) for _, v in seen):
            break
    assert all(v == ("v2",) for _, v in seen)
    with pytest.raises(SystemExit):  # a bad argument is argparse's clear error, nothing switched
        cli(["shard-rollout", "--etcd", ",".join(etcd.endpoints), "--shards", "0", "--checkpoint", str(v2)])
    assert cli(["shard-rollout", "--etcd", ",".join(etcd.endpoints), "--shards", "0", "--checkpoint", str(tmp_path),
                "--version", "v3"]) == 2  # not a checkpoint folder


def test_killing_a_shard_replica_under_load_loses_no_request(rec, service):
    from server.shard.serving import replica_pids

    _, _, histories = rec
    svc, plan = service
    shard = max(range(plan.n_shards), key=lambda s: len(plan.items_of(s)))
    pids = replica_pids(shard)
    assert len(pids) == 2
    ok, answers = 0, {}
    with httpx.Client(timeout=60) as c:
        for n in range(120):
            if n == 30:
                os.kill(pids[0], signal.SIGKILL)
            h = histories[n % len(histories)]
            r = c.post(svc.url + "/search", json={"history": h, "k": 5})
            assert r.status_code == 200, (n, r.text)
            got = [x["item_id"] for x in r.json()["items"]]
            assert answers.setdefault(n % len(histories), got) == got  # the surviving replica answers the same
            ok += 1
    assert ok == 120
    # Serve's health checks replace the dead replica
    deadline = time.time() + 60
    while time.time() < deadline and len(replica_pids(shard)) < 2:
        time.sleep(1)
    now = replica_pids(shard)
    assert len(now) == 2 and pids[0] not in now


def test_cli_shard_plan_then_serve_shards(rec, tmp_path):
    """The public path: `edge-gr shard-plan` writes the plan, `edge-gr serve --shards` serves it on Ray Serve."""
    from server.cli import main as cli

    gm, ckpt, histories = rec
    plan = tmp_path / "plan.json"
    assert cli(["shard-plan", "--checkpoint", str(ckpt), "--shards", "2", "--out", str(plan)]) == 0
    assert sorted(json.loads(plan.read_text())["owner"]) == sorted(semantic_plan(gm.ids, 2).owner.tolist())
    assert cli(["serve", "--checkpoint", str(ckpt), "--shards", str(tmp_path / "missing.json")]) == 2  # a clear error
    port = _free_port()
    token = "shard-token-0123456789abcdef"
    (tmp_path / "tokens").write_text(token + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(ckpt), "--shards", str(plan),
                             "--port", str(port), "--beam", "10", "--tokens", str(tmp_path / "tokens"), "--max-body", "4000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        line = ""
        while time.time() < deadline and "Ctrl-C" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "edge-gr serve --shards exited"
        assert "2 shards" in line
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(url + "/search", json={"history": histories[0], "k": 3}, headers=auth, timeout=60)
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        # the router enforces the same access control as the single-process service
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        assert httpx.post(url + "/search", json={"history": histories[0], "k": 3}, timeout=60).status_code == 401
        assert httpx.get(url + "/shards", timeout=60).status_code == 401
        big = httpx.post(url + "/search", json={"history": ["i1"] * 2000, "k": 3}, headers=auth, timeout=60)
        assert big.status_code == 413
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
