"""Access control on serving (issue "Trust", item 5): bearer tokens, body limit, rate limit, slow clients,
TLS, and the refusal to listen beyond loopback without authentication - on the real uvicorn server and app."""

import datetime
import json
import socket
import threading
import time

import httpx
import pytest

from server.cli import main as cli
from server.security import Security, check_bind, load_tokens
from server.serve import create_app
from tests.test_hybrid_serve import tiny_rec

TOKEN = "t0ken-abcdefghijklmnop"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread on loopback (the same server `edge-gr serve` runs)."""

    def __init__(self, app, **kw):
        import uvicorn

        self.port = _port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **kw))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def model():
    return tiny_rec()


def test_tokens_guard_every_route_but_health(model):
    sec = Security(tokens=(TOKEN,))
    with _Server(create_app(model, security=sec)) as s:
        url = f"http://127.0.0.1:{s.port}"
        assert httpx.get(url + "/health").status_code == 200
        body = {"history": ["i1", "i2"], "k": 3}
        r = httpx.post(url + "/search", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "bearer" in r.json()["detail"]
        assert httpx.post(url + "/search", json=body, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}).status_code == 401
        ok = httpx.post(url + "/search", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
        assert httpx.get(url + "/docs").status_code == 401  # the API description is not public either
        schema = create_app(model, security=sec).openapi()
        assert "HTTPBearer" in json.dumps(schema["components"]["securitySchemes"])


def test_body_limit_refuses_large_and_streamed_bodies(model):
    with _Server(create_app(model, security=Security(max_body=2_000))) as s:
        url = f"http://127.0.0.1:{s.port}/search"
        big = {"history": ["i1"] * 2_000, "k": 3}
        r = httpx.post(url, json=big)
        assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it streams
            yield b'{"history": ['
            for _ in range(1_000):
                yield b'"i1",'
            yield b'"i1"], "k": 3}'

        r = httpx.post(url, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert httpx.post(url, json={"history": ["i1"], "k": 3}).status_code == 200


def test_rate_limit_per_client(model):
    with _Server(create_app(model, security=Security(rate=0.01, burst=3))) as s:
        url = f"http://127.0.0.1:{s.port}/search"
        codes = [httpx.post(url, json={"history": ["i1"], "k": 2}).status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = httpx.post(url, json={"history": ["i1"], "k": 2})
        assert int(r.headers["retry-after"]) >= 1


def test_a_trickling_client_is_cut_off(model):
    with _Server(create_app(model, security=Security(read_timeout_s=0.5))) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"hist")
            t0 = time.time()
            reply = c.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 408") and time.time() - t0 < 5


def test_tls(model, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    with _Server(create_app(model), ssl_certfile=str(tmp_path / "cert.pem"), ssl_keyfile=str(tmp_path / "key.pem")) as s:
        r = httpx.get(f"https://127.0.0.1:{s.port}/health", verify=str(tmp_path / "cert.pem"))
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{s.port}/health", timeout=5)  # no plain-text fallback


def test_cli_refuses_public_bind_without_tokens_and_bad_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("EDGE_GR_TOKENS", raising=False)
    missing = str(tmp_path / "no-ckpt")
    assert cli(["serve", "--checkpoint", missing, "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in capsys.readouterr().err
    assert cli(["serve", "--checkpoint", missing, "--tls-cert", str(tmp_path / "c.pem")]) == 2
    assert "go together" in capsys.readouterr().err
    (tmp_path / "tokens").write_text("# ops\nshort\n")
    assert cli(["serve", "--checkpoint", missing, "--tokens", str(tmp_path / "tokens")]) == 2
    assert "shorter than 16" in capsys.readouterr().err
    assert cli(["serve", "--checkpoint", missing, "--max-body", "0"]) == 2


def test_token_sources(tmp_path, monkeypatch):
    (tmp_path / "tokens").write_text(f"# comment\n{TOKEN}\n\n")
    monkeypatch.setenv("EDGE_GR_TOKENS", "env-token-0123456789, " + TOKEN)
    assert load_tokens(tmp_path / "tokens") == (TOKEN, "env-token-0123456789")
    check_bind("0.0.0.0", Security(tokens=(TOKEN,)))  # authenticated: allowed
    check_bind("::", Security(), insecure_dev=True)   # development: a warning only


def test_the_device_hybrid_client_sends_its_token(model):
    """The public device path: HybridClient(mode="refine") asks the cloud; with the token it is served there."""
    from edge_gr.hybrid import HybridClient

    class Local:
        def search(self, q, k=10):
            return [("local", -1.0)][:k]

    with _Server(create_app(model, security=Security(tokens=(TOKEN,)))) as s:
        url = f"http://127.0.0.1:{s.port}"
        with HybridClient(Local(), url, timeout_s=10, mode="refine", token=TOKEN) as c:
            c.search(["i1"], k=2)
            assert c.stats()["served_cloud"] == 1
        with HybridClient(Local(), url, timeout_s=10, mode="refine") as c:
            assert c.search(["i1"], k=2)[0][0] == "local"  # refused by the cloud: the local answer stays
            st = c.stats()
            assert st["http"] == 1 and "401" in st["last_error"]
