"""The cloud half of the hybrid path (DESIGN 14.5): a small HTTP service around a trained
:class:`~server.generative.GenerativeModel`.

    edge-gr serve --checkpoint .cache/edge_gr/demo/rec-model --host 127.0.0.1 --port 8000

``GET /health`` -> ``{"status": "ok", "task", "model_version", "items"}``
``POST /search`` ``{"query": "god so loved"}`` or ``{"history": ["1", "50"]}``, optional ``"k"``
-> ``{"items": [{"item_id", "score", "title"}], "model_version", "task", "latency_ms"}``

A malformed body is a 422 (pydantic says which field); a request the model cannot serve
(empty query, text sent to a recommender ...) is a 400 ``{"detail", "hint"}`` from
:class:`edge_gr.errors.InputError`. Scores are summed log-probabilities; the popularity
fallback's ``nan`` scores travel as ``null``. The device side talks to it with
:class:`edge_gr.hybrid.HybridClient` (standard library only).

>>> from fastapi.testclient import TestClient                      # doctest: +SKIP
>>> client = TestClient(create_app(server.load("ckpt/")))          # doctest: +SKIP
>>> client.post("/search", json={"history": ["1", "50"], "k": 3}).json()["items"][0]   # doctest: +SKIP
{'item_id': '181', 'score': -1.93, 'title': 'Return of the Jedi (1983)'}
"""

from __future__ import annotations

import argparse
import math
import threading
import time

from edge_gr.errors import BackendUnavailableError, InputError

try:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
except ImportError as e:  # pragma: no cover - fastapi is a pinned dependency
    _IMPORT_ERROR: ImportError | None = e
else:
    _IMPORT_ERROR = None

from .schemas import MAX_K, ErrorBody, Health, SearchHit, SearchRequest, SearchResponse, model_version  # noqa: F401 - re-exported

__all__ = ["create_app", "model_version", "SearchRequest", "SearchResponse", "SearchHit", "Health", "add_parser", "cmd_serve"]


def create_app(model, *, version: str | None = None, beam: int = 50, security=None) -> "FastAPI":
    """A FastAPI app serving ``model`` (a :class:`~server.generative.GenerativeModel`).

    ``security`` (:class:`server.security.Security`): bearer tokens on every route but ``/health``,
    the body limit, slow-client timeout and per-client rate limit (default: no tokens, 1 MB, 50 req/s).

    One request decodes at a time (a lock): the model is small and the beam search is
    CPU-bound, so concurrency would only interleave the same cores.
    """
    if _IMPORT_ERROR is not None:
        raise BackendUnavailableError("the cloud service needs fastapi and uvicorn",
                                      hint="pip install 'fastapi==0.138.2' 'uvicorn==0.49.0'") from _IMPORT_ERROR
    from fastapi import Depends

    from .security import Security, SecurityMiddleware, bearer_dependency

    sec = security or Security()
    version = version or model_version(model)
    titles = {it.id: (it.meta or {}).get("title") or it.text[:120] for it in model.items}
    lock = threading.Lock()
    app = FastAPI(title="edge-gr cloud search", version=version,
                  description="Generative retrieval / recommendation: the cloud refinement path of edge-gr's hybrid mode.")

    app.add_middleware(SecurityMiddleware, security=sec)
    auth = [Depends(bearer_dependency(lambda: sec))]

    @app.exception_handler(InputError)
    async def _bad_input(request, exc: InputError):
        return JSONResponse(status_code=400, content={"detail": exc.message, "hint": exc.hint})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", task=model.task, model_version=version, items=len(model.items))

    @app.post("/search", response_model=SearchResponse, dependencies=auth,
              responses={400: {"model": ErrorBody, "description": "the model cannot serve this input"},
                         401: {"model": ErrorBody, "description": "missing or wrong bearer token"}})
    def search(req: SearchRequest) -> SearchResponse:
        q = req.query if req.query is not None else req.history
        t0 = time.perf_counter()
        with lock:
            hits = model.search(q, req.k, beam=max(beam, req.k))
        ms = (time.perf_counter() - t0) * 1000
        items = [SearchHit(item_id=i, score=None if math.isnan(s) else s, title=titles.get(i, "")) for i, s in hits]
        return SearchResponse(items=items, model_version=version, task=model.task, latency_ms=round(ms, 3))

    return app


# -- command line: registered by server/cli.py -----------------------------------------
def add_parser(sub) -> None:
    """Add ``edge-gr serve`` to the CLI's subparsers."""
    sp = sub.add_parser("serve", help="serve a checkpoint over HTTP (the cloud half of the hybrid path)")
    sp.add_argument("--checkpoint", required=True, help="checkpoint folder written by `edge-gr train`")
    sp.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--beam", type=int, default=50, help="beam width of the decoding")
    sp.add_argument("--model-version", default=None, help="version string to report (default: from the weights)")
    from .security import add_arguments

    add_arguments(sp)
    g = sp.add_argument_group("sharded (Ray Serve): one deployment per shard behind a router")
    g.add_argument("--shards", default=None, metavar="PLAN", help="plan JSON from `edge-gr shard-plan`; serves on Ray Serve")
    g.add_argument("--replicas", type=int, default=1, help="replicas per shard (default 1)")
    g.add_argument("--autoscale-max", type=int, default=None, help="autoscale each shard between 1 and N replicas")
    g.add_argument("--strategy", choices=["prefix", "scatter"], default="prefix", help="route by the query's top prefixes, or ask every shard")
    g.add_argument("--max-fanout", type=int, default=None, help="prefix routing: at most N shards per query")
    g.add_argument("--etcd", default=None, metavar="HOST:PORT,...", help="etcd members: replicas hold liveness leases and reload on `edge-gr shard-rollout`")
    g.add_argument("--nats", default=None, metavar="URL,...", help="NATS servers: each replica applies its shard's catalogue updates from JetStream")
    g.add_argument("--address", default=None, help="join a Ray cluster (`auto` after `ray start`); default: a local one on loopback")
    sp.set_defaults(fn=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from .security import from_args

    from edge_gr.validate import MAX_BEAM

    if not 1 <= args.beam <= MAX_BEAM:
        raise InputError(f"--beam {args.beam} is outside 1..{MAX_BEAM}", hint="e.g. --beam 50")
    sec = from_args(args)  # refuses 0.0.0.0 without tokens, checks the TLS files, before loading anything
    if args.shards:
        return _serve_sharded(args, sec)
    from .api import load

    app = create_app(load(args.checkpoint), version=args.model_version, beam=args.beam, security=sec)
    try:
        import uvicorn
    except ImportError as e:  # pragma: no cover
        raise BackendUnavailableError("`edge-gr serve` needs uvicorn", hint="pip install 'uvicorn==0.49.0'") from e
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key,
                timeout_keep_alive=5)


def _serve_sharded(args: argparse.Namespace, sec) -> None:
    from .shard.serving import load_plan, start

    plan = load_plan(args.shards)
    svc = start(args.checkpoint, plan, host=args.host, port=args.port, address=args.address, replicas=args.replicas,
                autoscale_max=args.autoscale_max, beam=args.beam, strategy=args.strategy, max_fanout=args.max_fanout,
                etcd=args.etcd.split(",") if args.etcd else None, nats=args.nats.split(",") if args.nats else None,
                security=sec, tls=(args.tls_cert, args.tls_key) if args.tls_cert else None)
    print(f"edge-gr serve: {plan.n_shards} shards x {args.replicas} replicas on Ray Serve at {svc.url} "
          f"(ray {svc.started_s['ray_init']:.1f} s, serve {svc.started_s['serve_run']:.1f} s); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        svc.shutdown()
