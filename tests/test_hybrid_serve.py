"""The hybrid path: the cloud service (server/serve.py) and the device client (edge_gr/hybrid.py) - issue #4, item 6."""

import asyncio
import doctest
import math
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import edge_gr.hybrid
from edge_gr.errors import InputError
from edge_gr.hybrid import CloudHit, HybridClient
from server.data.base import Item
from server.generative import GenerativeModel
from server.model import GenerativeRetriever, GRConfig
from server.semantic_ids import build_ids
from server.serve import create_app, model_version
from server.text import train_tokenizer

fastapi_testclient = pytest.importorskip("fastapi.testclient")
uvicorn = pytest.importorskip("uvicorn")

N = 12


def tiny_rec() -> GenerativeModel:
    """An untrained recommender: the service only needs a model that answers."""
    torch.manual_seed(0)
    ids = build_ids([f"i{j}" for j in range(N)], np.random.default_rng(0).normal(size=(N, 8)).astype("float32"), levels=(3,))
    cfg = GRConfig(task="rec", levels=ids.levels, n_items=N, d_model=16, n_heads=2, max_len=6, n_enc_layers=1, n_dec_layers=1)
    items = [Item(f"i{j}", f"Item {j} (19{80 + j})") for j in range(N)]
    return GenerativeModel(GenerativeRetriever(cfg, codes=torch.from_numpy(ids.codes)), ids, items, popularity=[f"i{j}" for j in range(N)])


def tiny_retrieval() -> GenerativeModel:
    torch.manual_seed(0)
    docs = [Item(f"d{j}", f"alpha beta gamma doc {j}") for j in range(8)]
    tok = train_tokenizer([d.text for d in docs] * 3, vocab_size=60)
    ids = build_ids([d.id for d in docs], np.random.default_rng(1).normal(size=(8, 8)).astype("float32"), levels=(3,))
    cfg = GRConfig(task="retrieval", levels=ids.levels, vocab_size=tok.get_vocab_size(), d_model=16, n_heads=2, max_len=12,
                   n_enc_layers=1, n_dec_layers=1)
    return GenerativeModel(GenerativeRetriever(cfg), ids, docs, tokenizer=tok)


@pytest.fixture(scope="module")
def rec():
    return tiny_rec()


@pytest.fixture(scope="module")
def client(rec):
    return fastapi_testclient.TestClient(create_app(rec, beam=10))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def live(rec):
    """A real uvicorn server on a free loopback port, in a thread; ``delay["s"]`` slows every response."""
    app = create_app(rec, beam=10)
    delay = {"s": 0.0}

    @app.middleware("http")
    async def slow(request, call_next):
        await asyncio.sleep(delay["s"])
        return await call_next(request)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t0 = time.time()
    while not server.started:
        assert time.time() - t0 < 20, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", delay
    server.should_exit = True
    th.join(10)
    sock.close()


class FakeLocal:
    def __init__(self, fail: Exception | None = None):
        self.fail, self.calls = fail, 0

    def search(self, q, k=10):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return [("local-best", 0.0)][:k]


def test_docstring_examples():
    r = doctest.testmod(edge_gr.hybrid, optionflags=doctest.ELLIPSIS)
    assert r.attempted > 0 and r.failed == 0


# -- the service ---------------------------------------------------------------------
def test_health_and_search(client, rec):
    h = client.get("/health").json()
    assert h == {"status": "ok", "task": "rec", "model_version": model_version(rec), "items": N}
    r = client.post("/search", json={"history": ["i1", "i2", "i3"], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    want = rec.search(["i1", "i2", "i3"], 4, beam=10)
    assert [(x["item_id"], pytest.approx(x["score"])) for x in body["items"]] == [(i, pytest.approx(s)) for i, s in want]
    assert body["items"][0]["title"].startswith("Item ") and body["model_version"] == h["model_version"] and body["task"] == "rec"
    pop = client.post("/search", json={"history": [], "k": 3}).json()["items"]  # popularity fallback: nan -> null
    assert [x["item_id"] for x in pop] == ["i0", "i1", "i2"] and all(x["score"] is None for x in pop)


@pytest.mark.parametrize("body", [{}, {"query": "x", "history": ["i1"]}, {"history": ["i1"], "k": 0},
                                  {"history": ["i1"], "k": 1000}, {"history": "i1 i2"}, {"query": 3}])
def test_malformed_bodies_are_422(client, body):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_input_errors_are_400_with_the_hint(client):
    r = client.post("/search", json={"query": "star wars"})  # text to a recommender
    assert r.status_code == 400 and "history" in r.json()["detail"] and r.json()["hint"]
    c = fastapi_testclient.TestClient(create_app(tiny_retrieval(), beam=5))
    ok = c.post("/search", json={"query": "alpha beta", "k": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3 and ok.json()["task"] == "retrieval"
    for q in ["", "   ", "!!! ???"]:
        r = c.post("/search", json={"query": q})
        assert r.status_code == 400 and r.json() == {"detail": "the query is empty (no letters or digits)",
                                                     "hint": "type a few words of what you are looking for"}


def test_openapi_documents_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/health"} <= set(spec["paths"])
    post = spec["paths"]["/search"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    assert {"200", "400", "422"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert {"query", "history", "k"} <= set(schemas["SearchRequest"]["properties"])
    assert {"items", "model_version"} <= set(schemas["SearchResponse"]["properties"])


def test_cli_serve(rec, tmp_path, monkeypatch, capsys):
    from server.cli import main

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: ran.update(app=app, host=host, port=port))
    rec.save(tmp_path / "ck")
    assert main(["serve", "--checkpoint", str(tmp_path / "ck"), "--port", "8123", "--model-version", "v7"]) == 0
    assert ran["host"] == "127.0.0.1" and ran["port"] == 8123
    r = fastapi_testclient.TestClient(ran["app"]).get("/health").json()
    assert r["model_version"] == "v7"
    assert main(["serve", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not an edge-gr checkpoint" in capsys.readouterr().err


# -- the device client against a real server ----------------------------------------------
def test_refine_returns_the_cloud_answer(live, rec):
    url, _ = live
    with HybridClient(FakeLocal(), url, mode="refine", timeout_s=5) as c:
        a = c.answer(["i1", "i2"], 3)
        assert a.source == "cloud" and a.model_version == model_version(rec) and a.cloud_ms > 0 and a.local_ms is not None
        assert [(h.item_id, round(h.score, 4)) for h in a.hits] == [(i, round(s, 4)) for i, s in rec.search(["i1", "i2"], 3, beam=10)]
        assert isinstance(a.hits[0], CloudHit) and a.hits[0].title
        s = c.stats()
        assert (s["requests"], s["served_cloud"], s["cloud_ok"], s["served_local"]) == (1, 1, 1, 0)


def test_slow_cloud_times_out_to_the_local_answer(live):
    url, delay = live
    delay["s"] = 1.0
    try:
        with HybridClient(FakeLocal(), url, mode="refine", timeout_s=0.3) as c:
            t0 = time.perf_counter()
            a = c.answer(["i1"], 2)
            took = time.perf_counter() - t0
    finally:
        delay["s"] = 0.0
    assert a.source == "local" and a.hits == [("local-best", 0.0)] and a.fallback_reason == "timeout"
    assert 0.25 < took < 0.8, took
    assert c.stats()["timeout"] == 1


def test_offline_and_errors_fall_back_without_raising(live):
    url, _ = live
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t = [0.0]
    with HybridClient(FakeLocal(), dead, mode="refine", max_failures=3, retry_after_s=60, clock=lambda: t[0]) as c:
        reasons = [c.answer(["i1"], 1).fallback_reason for _ in range(4)]
        assert reasons == ["offline", "offline", "offline", "backoff"]  # the 4th does not even try
        assert c.stats()["cloud_requests"] == 3 and c.stats()["served_local"] == 4 and "cannot reach" in c.stats()["last_error"]
        t[0] = 61.0
        assert c.answer(["i1"], 1).fallback_reason == "offline" and c.stats()["cloud_requests"] == 4
    with HybridClient(FakeLocal(), None, mode="refine") as c:
        assert c.answer("anything").source == "local" and c.stats()["offline"] == 1
    with HybridClient(FakeLocal(), url, mode="refine", online=lambda: False) as c:
        assert c.answer(["i1"]).fallback_reason == "offline" and c.stats()["cloud_requests"] == 0
    with HybridClient(FakeLocal(), url, mode="refine", timeout_s=5) as c:  # the cloud refuses text for a recommender
        a = c.answer("star wars", 2)
        assert a.source == "local" and a.fallback_reason == "http-400" and c.stats()["http"] == 1


def test_local_first(live, rec):
    url, _ = live
    local = FakeLocal()
    with HybridClient(local, url, mode="local_first") as c:
        a = c.answer(["i1"], 2)
        assert a.source == "local" and a.fallback_reason is None and c.stats()["cloud_requests"] == 0
    broken = FakeLocal(fail=RuntimeError("bundle unreadable"))
    with HybridClient(broken, url, mode="local_first", timeout_s=5, make_hit=lambda i, s, t: i) as c:
        a = c.answer(["i1"], 2)
        assert a.source == "cloud" and a.hits == [i for i, _ in rec.search(["i1"], 2, beam=10)] and c.stats()["local_errors"] == 1
    with HybridClient(broken, None) as c, pytest.raises(RuntimeError, match="bundle"):
        c.answer(["i1"])  # no cloud to fall back to: the local failure is not hidden
    with HybridClient(FakeLocal(fail=InputError("the query is empty", hint="type something")), url, mode="refine") as c:
        with pytest.raises(InputError):
            c.answer("")
    with pytest.raises(InputError, match="mode"):
        HybridClient(local, url, mode="cloud_only")
    with pytest.raises(InputError, match="URL"):
        HybridClient(local, "127.0.0.1:8000")


def test_device_modules_import_no_torch_server_or_http_packages():
    code = ("import sys, edge_gr.policy, edge_gr.cache, edge_gr.hybrid; "
            "print([m for m in ('torch', 'server', 'device_sim', 'fastapi', 'httpx', 'requests', 'urllib3') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
