"""Access control for the HTTP services (``edge-gr serve``, single-process and sharded on Ray Serve).

* **Bearer tokens** (FastAPI's ``HTTPBearer`` scheme, so the OpenAPI page documents it): every route but
  ``GET /health`` needs ``Authorization: Bearer <token>``; tokens come from a file (one per line, ``#``
  comments) or the ``EDGE_GR_TOKENS`` environment variable (comma-separated), compared in constant time
  (``hmac.compare_digest``) against each configured token.
* **Request-body limit** (default 1 MB): a larger ``Content-Length`` is refused before reading; a chunked
  body is counted as it streams and cut at the limit (413).
* **Slow clients**: reading the body must make progress every ``read_timeout_s`` (408) - a client that
  trickles bytes cannot hold a worker; uvicorn / Serve drop idle keep-alive connections.
* **Per-client rate limit**: a token bucket per token (or per client address without auth), ``rate``
  requests / s with bursts of ``burst`` (429 with ``Retry-After``). Per process: each Serve router
  replica keeps its own buckets, so the cluster-wide limit is ``rate x router replicas``.
* **Binding beyond loopback without tokens is refused** (:func:`check_bind`), loudly, unless the operator
  passes ``--insecure-dev`` (then a warning is printed).

Our own ~80 lines of ASGI middleware: the PyPI rate limiters for Starlette (slowapi, fastapi-limiter)
bring Redis or a decorator per route, and none bounds a streamed body or a trickling client.

>>> sec = Security(tokens=("s3cret",), max_body=10)
>>> sec.token_ok("s3cret"), sec.token_ok("guess"), Security().enabled
(True, False, False)
>>> check_bind("127.0.0.1", Security())          # loopback needs no token
>>> check_bind("0.0.0.0", Security())            # doctest: +ELLIPSIS
Traceback (most recent call last):
...
edge_gr.errors.InputError: refusing to listen on 0.0.0.0 without authentication...
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from edge_gr.errors import InputError

__all__ = ["Security", "load_tokens", "check_bind", "SecurityMiddleware", "bearer_dependency", "ENV_TOKENS"]

ENV_TOKENS = "EDGE_GR_TOKENS"


def load_tokens(path: str | os.PathLike | None = None, *, env: str = ENV_TOKENS) -> tuple[str, ...]:
    """Tokens from ``path`` (one per line; blank lines and ``#`` comments skipped) plus ``$EDGE_GR_TOKENS``."""
    out: list[str] = []
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read the token file {p} ({e.__class__.__name__})",
                             hint="one token per line, UTF-8; e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > tokens.txt`") from None
        out += [t.strip() for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]
    out += [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()]
    short = [t for t in out if len(t) < 16]
    if short:
        raise InputError(f"{len(short)} token(s) shorter than 16 characters", hint="use long random tokens: secrets.token_urlsafe(32)")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Security:
    """What a service enforces. ``tokens`` empty = no authentication (loopback development only)."""

    tokens: tuple[str, ...] = ()
    max_body: int = 1_000_000
    rate: float = 50.0            # requests / s per client
    burst: int = 100
    read_timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def token_ok(self, presented: str | None) -> bool:
        if not presented:
            return False
        ok = False
        for t in self.tokens:  # compare with every token (no early exit: the time does not say which one matched)
            ok |= hmac.compare_digest(presented.encode(), t.encode())
        return ok

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "max_body": self.max_body, "rate": self.rate, "burst": self.burst,
                "read_timeout_s": self.read_timeout_s}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Security":
        d = dict(d or {})
        d["tokens"] = tuple(d.get("tokens", ()))
        return cls(**d)


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, sec: Security, *, insecure_dev: bool = False) -> None:
    """Refuse to listen beyond loopback without tokens (``insecure_dev`` turns the refusal into a warning)."""
    if _is_loopback(host) or sec.enabled:
        return
    if insecure_dev:
        print(f"edge-gr: WARNING: listening on {host} WITHOUT authentication (--insecure-dev): anyone who can reach "
              "this port can query the model", file=sys.stderr)
        return
    raise InputError(f"refusing to listen on {host} without authentication",
                     hint="give --tokens FILE (or set EDGE_GR_TOKENS), or bind 127.0.0.1; --insecure-dev allows it for development")


class _Buckets:
    """Token buckets per client key (thread-safe: sync routes run in a thread pool)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 100_000):
        self.rate, self.burst, self.max_clients = float(rate), float(burst), max_clients
        self._b: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 if allowed, else the seconds until the next request would be."""
        now = time.monotonic()
        with self._lock:
            level, t = self._b.get(key, (self.burst, now))
            level = min(self.burst, level + (now - t) * self.rate)
            if level < 1.0:
                self._b[key] = (level, now)
                return (1.0 - level) / self.rate
            if len(self._b) >= self.max_clients and key not in self._b:  # bound the memory a scan of addresses can take
                self._b.clear()
            self._b[key] = (level - 1.0, now)
            return 0.0


def _header(scope, name: bytes) -> Optional[str]:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def _reply(send, status: int, detail: str, hint: str | None = None, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail, "hint": hint}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class SecurityMiddleware:
    """ASGI middleware: rate limit, body limit and slow-client timeout on every route; bearer tokens on all
    but ``/health`` (the FastAPI dependency :func:`bearer_dependency` documents the scheme in OpenAPI and
    checks again, so a route is never open if this middleware is left out)."""

    def __init__(self, app, security: "Security | dict | Callable[[], Security]"):
        self.app = app
        # a callable is read at the first request: the Serve router learns its settings in its constructor,
        # after the module-level app (and this middleware) were defined
        self._get = security if callable(security) else (lambda: security)
        self.sec: Security | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.sec is None:
            got = self._get()
            self.sec = got if isinstance(got, Security) else Security.from_dict(got)
            self.buckets = _Buckets(self.sec.rate, self.sec.burst)
        sec = self.sec
        auth = _header(scope, b"authorization") or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.buckets.take(f"t:{token}" if token and sec.token_ok(token) else f"a:{client}")
        if wait:
            return await _reply(send, 429, "too many requests", f"retry after {wait:.1f} s",
                                [(b"retry-after", str(max(1, round(wait))).encode())])
        if sec.enabled and scope.get("path") != "/health" and not sec.token_ok(token):
            return await _reply(send, 401, "missing or wrong bearer token", "send the header Authorization: Bearer <token>",
                                [(b"www-authenticate", b"Bearer")])
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                too_big = int(length) > sec.max_body
            except ValueError:
                return await _reply(send, 400, "bad Content-Length")
            if too_big:
                return await _reply(send, 413, f"request body over {sec.max_body} bytes", "send a smaller request")
        # Read the whole body here, bounded in size and in time, then hand it to the app in one message:
        # an exception raised from inside the app's receive() would be turned into a 400 by FastAPI's parser.
        chunks, seen, more = [], 0, True
        while more:
            try:
                msg = await asyncio.wait_for(receive(), timeout=sec.read_timeout_s)
            except asyncio.TimeoutError:
                return await _reply(send, 408, f"the request body did not arrive within {sec.read_timeout_s:g} s", "send the body at once")
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > sec.max_body:
                return await _reply(send, 413, f"request body over {sec.max_body} bytes", "send a smaller request")
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


def bearer_dependency(get_security):
    """A FastAPI dependency requiring a valid bearer token when ``get_security()`` has tokens (OpenAPI: HTTPBearer)."""
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    scheme = HTTPBearer(auto_error=False, description="a token from the service's token file / EDGE_GR_TOKENS")

    def require(creds: Optional[HTTPAuthorizationCredentials] = Depends(scheme)) -> None:
        sec = get_security()
        if sec.enabled and not sec.token_ok(creds.credentials if creds else None):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require


def add_arguments(parser) -> None:
    """The CLI flags of :class:`Security` (shared by the serving commands)."""
    g = parser.add_argument_group("access control")
    g.add_argument("--tokens", default=None, metavar="FILE", help=f"bearer tokens, one per line (also ${ENV_TOKENS}, comma-separated)")
    g.add_argument("--max-body", type=int, default=1_000_000, help="largest request body in bytes (default 1 MB)")
    g.add_argument("--rate", type=float, default=50.0, help="requests per second per client (token bucket, default 50)")
    g.add_argument("--burst", type=int, default=100, help="bucket size (default 100)")
    g.add_argument("--read-timeout", type=float, default=10.0, help="seconds a request body may stall (default 10)")
    g.add_argument("--tls-cert", default=None, help="TLS certificate (PEM); with --tls-key serves HTTPS")
    g.add_argument("--tls-key", default=None, help="TLS private key (PEM)")
    g.add_argument("--insecure-dev", action="store_true", help="allow a non-loopback --host without tokens (development only)")


def from_args(args) -> Security:
    """:class:`Security` from the flags of :func:`add_arguments`, with the bind check and TLS files checked."""
    for name in ("max_body", "burst"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1", hint="e.g. --max-body 1000000")
    if args.rate <= 0 or args.read_timeout <= 0:
        raise InputError("--rate and --read-timeout must be positive", hint="e.g. --rate 50 --read-timeout 10")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key go together", hint="give both PEM files, or neither")
    for f in (args.tls_cert, args.tls_key):
        if f and not Path(f).is_file():
            raise InputError(f"no such file: {f}", hint="give the PEM certificate and key files")
    sec = Security(load_tokens(args.tokens), args.max_body, args.rate, args.burst, args.read_timeout)
    check_bind(args.host, sec, insecure_dev=args.insecure_dev)
    return sec
