"""The hybrid path (DESIGN 14.5): the device answers itself; when online, the cloud may refine.

``mode="local_first"``: the local answer is the answer; the cloud is asked only when the
local model itself fails (not for bad input). ``mode="refine"``: the cloud request
starts first (in a worker thread), the local answer is computed meanwhile, and the
cloud's answer wins if it arrives within ``timeout_s`` of the request's start; else the
local one is returned. Offline (``cloud_url=None`` or an ``online()`` hook saying no),
refused connections, timeouts, HTTP errors and malformed replies all fall back to the
local answer: network problems never raise. After ``max_failures`` failures in a row
the cloud is skipped for ``retry_after_s`` (a device without a network stops paying
for connection attempts). Every outcome is counted in :meth:`HybridClient.stats`.

Standard library only (``urllib``); speaks the JSON of ``server/serve.py``::

    POST {cloud_url}/search  {"query": "..."} | {"history": [...]}, "k": 10
    -> {"items": [{"item_id", "score", "title"}], "model_version", "task", "latency_ms"}

>>> class Local:
...     def search(self, q, k=10): return [("John.3.16", -0.2)][:k]
>>> c = HybridClient(Local(), cloud_url=None, mode="refine")      # offline
>>> a = c.answer("god so loved")
>>> a.source, a.hits, c.stats()["offline"]
('local', [('John.3.16', -0.2)], 1)
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InputError
from .runtime import Hit

__all__ = ["HybridClient", "Answer", "CloudHit", "CloudError"]

MODES = ("local_first", "refine")


# Cloud answers are the runtime's own ``Hit`` (item_id, score - nan for the popularity fallback, title),
# so local and cloud answers are interchangeable for the caller.
CloudHit = Hit


@dataclass(frozen=True)
class Answer:
    """What :meth:`HybridClient.answer` returns: the hits and where they came from."""

    hits: list
    source: str                          # "local" | "cloud"
    model_version: str | None = None     # the cloud model's version when source == "cloud"
    local_ms: float | None = None        # time of the local search (None if not run)
    cloud_ms: float | None = None        # round trip of the cloud request (None if it did not return in time)
    fallback_reason: str | None = None   # why the cloud answer was not used: offline | backoff | timeout | http-NNN | error


class CloudError(Exception):
    """A cloud request failed; ``kind`` is offline | timeout | http | error. Never leaves HybridClient."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind, self.status = kind, status


class HybridClient:
    """Local answers first, cloud refinement when online (see the module docstring).

    local         anything with ``search(query_or_history, k)`` (the device Retriever)
    cloud_url     base URL of ``edge-gr serve`` (e.g. ``http://10.0.0.2:8000``); None = offline
    timeout_s     the cloud's answer must arrive within this many seconds of the request's start
    mode          ``"local_first"`` or ``"refine"``
    online        optional hook, e.g. the OS's connectivity state; False -> treated as offline
    make_hit      builds a hit from ``(item_id, score, title)`` (default: the runtime's ``Hit``)
    token         bearer token of a service started with ``--tokens`` (sent as ``Authorization``)
    """

    def __init__(self, local, cloud_url: str | None = None, *, timeout_s: float = 0.3, mode: str = "local_first",
                 online: Callable[[], bool] | None = None, make_hit: Callable[[str, float, str], Any] = CloudHit,
                 max_failures: int = 3, retry_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 proxies: dict | None = None, max_workers: int = 2, token: str | None = None):
        if mode not in MODES:
            raise InputError(f"unknown hybrid mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
        if not timeout_s > 0:
            raise InputError(f"timeout_s must be > 0, got {timeout_s}", hint="pass e.g. 0.3 (seconds)")
        if cloud_url is not None and not cloud_url.startswith(("http://", "https://")):
            raise InputError(f"cloud_url {cloud_url!r} is not an http(s) URL", hint="pass e.g. 'http://127.0.0.1:8000' or None for offline")
        self.local, self.cloud_url, self.timeout_s, self.mode = local, cloud_url.rstrip("/") if cloud_url else None, timeout_s, mode
        self.online, self.make_hit, self.clock = online, make_hit, clock
        self.max_failures, self.retry_after_s = max_failures, retry_after_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:  # the service's bearer token (edge-gr serve --tokens); send it over https beyond loopback
            self._headers["Authorization"] = f"Bearer {token}"
        self._opener = urllib.request.build_opener(*([urllib.request.ProxyHandler(proxies)] if proxies is not None else []))
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="edge-gr-cloud")
        self._lock = threading.Lock()
        self._failures_in_row = 0
        self._skip_until = -math.inf
        self._n = dict(requests=0, served_local=0, served_cloud=0, cloud_requests=0, cloud_ok=0, offline=0, backoff=0,
                       timeout=0, http=0, error=0, local_errors=0)
        self.last_error: str | None = None

    # -- the cloud request -------------------------------------------------------
    @staticmethod
    def body(query, k: int) -> dict:
        """The JSON body for ``query`` (text) or a history (sequence of item ids)."""
        if isinstance(query, (bytes, bytearray)):
            try:
                query = query.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError("the query is not valid UTF-8", hint="decode it to text (UTF-8) before searching") from None
        if isinstance(query, str):
            return {"query": query, "k": k}
        try:
            return {"history": [str(x) for x in query], "k": k}
        except TypeError:
            raise InputError(f"cannot send a {type(query).__name__} to the cloud", hint="pass text or a list of item ids") from None

    def _post(self, body: dict) -> tuple[list, str | None, float]:
        t0 = time.perf_counter()
        req = urllib.request.Request(self.cloud_url + "/search", data=json.dumps(body).encode("utf-8"), method="POST",
                                     headers=self._headers)
        try:
            with self._opener.open(req, timeout=self.timeout_s) as r:
                payload = json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise CloudError("http", f"HTTP {e.code} from {self.cloud_url}", status=e.code) from None
        except (TimeoutError, socket.timeout) as e:
            raise CloudError("timeout", f"no answer from {self.cloud_url} within {self.timeout_s}s") from e
        except urllib.error.URLError as e:
            kind = "timeout" if isinstance(e.reason, (TimeoutError, socket.timeout)) else "offline"
            raise CloudError(kind, f"cannot reach {self.cloud_url} ({e.reason})") from None
        except (OSError, ValueError) as e:  # reset connections, bad JSON / UTF-8
            raise CloudError("error", f"bad reply from {self.cloud_url} ({type(e).__name__}: {e})") from None
        try:
            hits = [self.make_hit(str(h["item_id"]), math.nan if h.get("score") is None else float(h["score"]), str(h.get("title", "")))
                    for h in payload["items"]]
        except (KeyError, TypeError, ValueError) as e:
            raise CloudError("error", f"malformed reply from {self.cloud_url} ({type(e).__name__}: {e})") from None
        return hits, payload.get("model_version"), (time.perf_counter() - t0) * 1000

    def _cloud_unavailable(self) -> str | None:
        """Why the cloud is not to be asked now (offline | backoff), or None."""
        if self.cloud_url is None or (self.online is not None and not self.online()):
            return "offline"
        if self.clock() < self._skip_until:
            return "backoff"
        return None

    def _record_failure(self, e: CloudError) -> str:
        with self._lock:
            self._n[e.kind] += 1
            self._failures_in_row += 1
            self.last_error = str(e)
            if self._failures_in_row >= self.max_failures:
                self._skip_until = self.clock() + self.retry_after_s
                self._failures_in_row = 0
        return f"http-{e.status}" if e.kind == "http" else e.kind

    # -- the request path ----------------------------------------------------------
    def answer(self, query, k: int = 10) -> Answer:
        """The answer and its source; raises only what the *local* search raises for bad input."""
        t_start = time.perf_counter()
        with self._lock:
            self._n["requests"] += 1
        why_not = self._cloud_unavailable()
        future = None
        if why_not is None and self.mode == "refine":
            future = self._submit(query, k)

        local_err: Exception | None = None
        t0 = time.perf_counter()
        try:
            local_hits = self.local.search(query, k)
        except InputError:
            raise  # the request itself is bad; the cloud would refuse it too
        except Exception as e:  # the local model is broken: the cloud may still answer
            local_err, local_hits = e, None
            with self._lock:
                self._n["local_errors"] += 1
        local_ms = (time.perf_counter() - t0) * 1000

        if local_err is not None and future is None and why_not is None:
            future = self._submit(query, k)  # local_first: the cloud is the fallback
        if future is not None:
            remaining = self.timeout_s - (time.perf_counter() - t_start)
            try:
                hits, version, cloud_ms = future.result(timeout=max(remaining, 0.0))
            except FutureTimeout:
                why_not = self._record_failure(CloudError("timeout", f"no answer from {self.cloud_url} within {self.timeout_s}s"))
            except CloudError as e:
                why_not = self._record_failure(e)
            else:
                with self._lock:
                    self._n["cloud_ok"] += 1
                    self._n["served_cloud"] += 1
                    self._failures_in_row = 0
                return Answer(list(hits), "cloud", version, local_ms if local_err is None else None, cloud_ms)
        elif why_not is not None and (self.mode == "refine" or local_err is not None):
            with self._lock:
                self._n[why_not] += 1
        else:
            why_not = None  # local_first with a working local model: the cloud was not needed
        if local_err is not None:
            raise local_err
        with self._lock:
            self._n["served_local"] += 1
        return Answer(list(local_hits), "local", None, local_ms, None, why_not)

    def _submit(self, query, k: int):
        body = self.body(query, k)
        with self._lock:
            self._n["cloud_requests"] += 1
        return self._pool.submit(self._post, body)

    def search(self, query, k: int = 10) -> list:
        """Same signature as the local retriever's: just the hits of :meth:`answer`."""
        return self.answer(query, k).hits

    def stats(self) -> dict:
        """Telemetry counts: requests, served_local / served_cloud, cloud_requests / cloud_ok, and the
        fallback reasons offline, backoff, timeout, http, error; local_errors; last_error."""
        with self._lock:
            return {**self._n, "last_error": self.last_error}

    def close(self) -> None:
        """Stop the worker threads (requests in flight finish within ``timeout_s``)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "HybridClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
