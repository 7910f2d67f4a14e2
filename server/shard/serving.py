"""Semantic shards served by Ray Serve: one deployment per shard (with replicas), a FastAPI router in front.

    edge-gr shard-plan --checkpoint ckpt/ --shards 4 --out plan.json
    edge-gr serve --checkpoint ckpt/ --shards plan.json --replicas 2 --port 8000

* ``shard-<n>`` deployments (:class:`ShardReplica`): the model with the trie of the shard's items only
  (:meth:`~edge_gr.ids.SemanticIds.trie_of`), so it can generate nothing it does not hold. ``num_replicas``
  or an ``autoscaling_config``; Serve's health check calls :meth:`ShardReplica.check_health` and replaces a
  replica that fails it or dies.
* the ``router`` deployment (FastAPI ingress, the single-process ``edge-gr serve`` schema: ``GET /health``,
  ``POST /search``) runs the model's first decoder step to pick the shards of the query's top prefixes
  (:meth:`server.shard.route.ShardedSearcher.route`, or scatter to all), calls them concurrently through
  Serve handles and merges by score (:func:`server.shard.route.merge`) - the same code as the in-process
  :class:`~server.shard.route.ShardedSearcher`, so both give the same answers.
* a request to a replica that dies under it is retried (Serve then routes to the live replicas).

Why one deployment per shard: Serve's model multiplexing routes a model id to a replica that has it only
best-effort, and a partition must never be answered by a replica that does not hold it.

>>> from server.shard.serving import build_app, start          # doctest: +SKIP
>>> svc = start("ckpt/", ShardPlan.from_dict(json.load(open("plan.json"))), replicas=2, port=8000)  # doctest: +SKIP
>>> httpx.post(svc.url + "/search", json={"history": ["1", "50"], "k": 3}).json()["items"][0]       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_gr.errors import BackendUnavailableError, InputError

from .plan import ShardPlan

__all__ = ["ShardReplica", "build_app", "start", "ShardedService", "replica_pids", "load_plan"]

APP_NAME = "edge-gr"


def _serve():
    try:
        import ray
        from ray import serve
    except ImportError as e:  # pragma: no cover - ray is pinned (flwr[simulation])
        raise BackendUnavailableError("sharded serving needs Ray Serve", hint="pip install 'ray==2.55.1'") from e
    return ray, serve


class ShardReplica:
    """One replica of one shard: the checkpoint's model decoding only the shard's subtree.

    ``search(queries, k)`` -> ``{"answers": [[(item id, score), ...] per query], "version", "pid"}``.
    ``reconfigure({"checkpoint": ..., "version": ...})`` hot-reloads (Serve's ``user_config``).
    """

    def __init__(self, checkpoint: str, plan: dict, shard: int, beam: int = 20, threads: int = 1,
                 etcd: list[str] | None = None, lease_ttl: int = 5, nats: list[str] | None = None):
        import torch

        torch.set_num_threads(threads)  # replicas share the host's cores: one intra-op thread each unless told
        self.shard, self.beam = int(shard), int(beam)
        self.plan = ShardPlan.from_dict(plan)
        self._lock = threading.Lock()
        self.gm = None
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}"
        self.reloads = 0
        self.feed = None
        self._load(checkpoint, None)
        if nats:
            self._follow(nats)
        self.meta = self.lease = self.watch = None
        if etcd:  # liveness by a lease, and hot reload when the shard's `current` is switched (server.shard.meta)
            from .meta import ShardMeta

            self.meta = ShardMeta(etcd)
            self.lease = self.meta.register_replica(self.shard, self.replica_id, ttl=lease_ttl, info={"pid": os.getpid()})
            self.watch = self.meta.watch(self.shard, self._on_switch, initial=True)

    def _on_switch(self, value: dict | None, revision: int) -> None:
        """etcd says what this shard serves: ``{"checkpoint": ..., "version": ...}``; load it if it is new."""
        if not value or not value.get("checkpoint"):
            return
        if value["checkpoint"] != self.checkpoint or value.get("version") not in (None, self.version):
            self._load(value["checkpoint"], value.get("version"))
            self.reloads += 1

    def _load(self, checkpoint: str, version: str | None) -> None:
        from server.api import load
        from server.schemas import model_version

        gm = load(checkpoint)
        rows = self.plan.items_of(self.shard)
        if len(rows) and int(rows.max()) >= len(gm.ids):
            raise InputError(f"the plan names item rows up to {int(rows.max())}, the checkpoint has {len(gm.ids)} items",
                             hint="build the plan from this checkpoint: edge-gr shard-plan --checkpoint ...")
        trie = gm.ids.trie_of(rows)
        with self._lock:
            self.gm, self.trie, self.served, self.checkpoint = gm, trie, gm.ids.items, checkpoint
            self.version = version or model_version(gm)
            self._fed = -1  # the catalogue feed's table is rebuilt on the next query

    def _follow(self, nats: list[str]) -> None:
        """Apply the shard's catalogue updates from NATS JetStream (:class:`server.shard.log.CatalogueReplica`):
        the base table is the checkpoint's shard items; the durable consumer replays the log on top."""
        from edge_gr.ids import SemanticIds

        from .log import CatalogueReplica, ReplicaState

        ids, rows = self.gm.ids, self.plan.items_of(self.shard)
        base = SemanticIds([ids.items[r] for r in rows], ids.codes[rows], ids.levels, {"retired": ids.meta.get("retired", [])})
        self.feed = CatalogueReplica(nats, self.shard, self.replica_id, state=ReplicaState.from_ids(self.shard, base))
        self.feed.start()

    def _table(self):
        """(trie, item ids by trie row): the checkpoint's, or the catalogue feed's once it applied updates."""
        with self._lock:
            gm, trie, served, fed = self.gm, self.trie, self.served, self._fed
        if self.feed is None:
            return gm, trie, served
        snap = self.feed.snapshot()
        if snap.applied != fed:
            local = snap.ids(gm.ids.levels)
            trie, served = local.trie(), local.items
            with self._lock:
                self.trie, self.served, self._fed = trie, served, snap.applied
        return gm, trie, served

    def reconfigure(self, config: dict) -> None:
        if config and config.get("checkpoint") and config["checkpoint"] != getattr(self, "checkpoint", None):
            self._load(config["checkpoint"], config.get("version"))

    def check_health(self) -> None:
        if self.gm is None:
            raise RuntimeError(f"shard {self.shard}: no model loaded")
        if self.lease is not None and not self.lease.valid:  # etcd no longer lists us: let Serve replace us
            raise RuntimeError(f"shard {self.shard}: the etcd liveness lease of {self.replica_id} expired")

    def __del__(self):
        for h in (self.watch, self.lease, self.feed):
            try:
                h and (h.cancel() if hasattr(h, "cancel") else h.close() if hasattr(h, "close") else h.stop())
            except Exception:  # shutting down: etcd may be gone already
                pass

    def search(self, queries: list, k: int) -> dict:
        gm, trie, served = self._table()
        version = self.version
        src = gm.source(queries)
        items, scores = gm._decode(src, k, max(self.beam, k), trie=trie)
        answers = [[(served[i], float(s)) for i, s in zip(ir, sr) if i >= 0] for ir, sr in zip(items, scores)]
        return {"answers": answers, "version": version, "pid": os.getpid(), "shard": self.shard}

    def info(self) -> dict:
        _, _, served = self._table()
        out = {"shard": self.shard, "version": self.version, "items": len(served), "pid": os.getpid(),
               "replica": self.replica_id, "reloads": self.reloads}
        if self.feed is not None:
            snap = self.feed.snapshot()
            out.update(applied_seq=snap.applied_seq, applied=snap.applied, rejected=len(snap.rejected),
                       items_hash=hashlib.sha256(json.dumps(sorted(snap.codes.items())).encode()).hexdigest()[:16])
        return out


def build_app(checkpoint: str | os.PathLike, plan: ShardPlan, *, replicas: int = 1, autoscale_max: int | None = None,
              beam: int = 20, strategy: str = "prefix", max_fanout: int | None = None, health_period_s: float = 2.0,
              threads: int = 1, etcd: list[str] | None = None, nats: list[str] | None = None, security=None):
    """The Serve application: ``shard-<n>`` deployments (``replicas`` each, or autoscaled 1..``autoscale_max``
    on ongoing requests) and the FastAPI ``router``. With ``etcd`` (member ``host:port`` list) each replica
    holds a liveness lease under ``/edge-gr/shards/<n>/replicas/`` and reloads when ``current`` is switched;
    with ``nats`` (server URLs) each replica applies its shard's catalogue updates from JetStream."""
    _, serve = _serve()
    if strategy not in ("prefix", "scatter"):
        raise InputError(f"unknown strategy {strategy!r}", hint="use prefix or scatter")
    if replicas < 1:
        raise InputError(f"replicas must be >= 1, got {replicas}", hint="e.g. --replicas 2")
    checkpoint = str(Path(checkpoint).resolve())
    pd = plan.to_dict()
    shard = serve.deployment(ShardReplica, ray_actor_options={"num_cpus": 0}, health_check_period_s=health_period_s,
                             health_check_timeout_s=10, graceful_shutdown_timeout_s=2)
    opts = ({"autoscaling_config": {"min_replicas": 1, "initial_replicas": replicas, "max_replicas": autoscale_max,
                                    "target_ongoing_requests": 2, "upscale_delay_s": 2, "downscale_delay_s": 30}}
            if autoscale_max else {"num_replicas": replicas})
    bound = {str(s): shard.options(name=f"shard-{s}", **opts).bind(checkpoint, pd, s, beam, threads, etcd, 5, nats)
             for s in range(plan.n_shards) if len(plan.items_of(s))}
    from .router import Router  # imports ray and fastapi at module level: a class Serve pickles by reference

    return Router.bind(checkpoint, pd, bound, beam, strategy, max_fanout, security.to_dict() if security else None)


@dataclass
class ShardedService:
    """A running sharded service: ``url`` (HTTP), ``handle`` (the router's Serve handle)."""

    url: str
    handle: object
    started_s: dict = field(default_factory=dict)

    def shutdown(self) -> None:
        ray, serve = _serve()
        serve.shutdown()
        ray.shutdown()


def start(checkpoint: str | os.PathLike, plan: ShardPlan, *, host: str = "127.0.0.1", port: int = 8000,
          address: str | None = None, tls: tuple[str, str] | None = None, **app_options) -> ShardedService:
    """Start Ray (loopback, no dashboard) or join ``address`` (``auto`` = a cluster started with ``ray start``),
    then Serve on ``host:port`` and the application of :func:`build_app`."""
    ray, serve = _serve()
    t0 = time.perf_counter()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # loopback: without _node_ip_address Ray binds to the machine's external address
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    t1 = time.perf_counter()
    http = {"host": host, "port": port, "keep_alive_timeout_s": 5}
    if tls:
        http.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
    serve.start(http_options=http)
    handle = serve.run(build_app(checkpoint, plan, **app_options), name=APP_NAME, route_prefix="/")
    t2 = time.perf_counter()
    return ShardedService(f"{'https' if tls else 'http'}://{host}:{port}", handle, {"ray_init": t1 - t0, "serve_run": t2 - t1})


def replica_pids(shard: int) -> list[int]:
    """The process ids of a shard's live replicas (to kill one in a fault test)."""
    ray, _ = _serve()
    pids = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = a["name"] if isinstance(a, dict) else a
        if f"#shard-{shard}#" in name:
            actor = ray.get_actor(name, namespace=a.get("namespace", "serve") if isinstance(a, dict) else "serve")
            pids.append(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))
    return sorted(pids)


def load_plan(path: str | os.PathLike) -> ShardPlan:
    """A plan written by ``edge-gr shard-plan`` (clear error when it is not one)."""
    p = Path(path)
    try:
        return ShardPlan.from_dict(json.loads(p.read_text()))
    except FileNotFoundError:
        raise InputError(f"no shard plan at {p}", hint="write one: edge-gr shard-plan --checkpoint CKPT --shards 4 --out plan.json") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{p} is not a shard plan ({e})", hint="write one with edge-gr shard-plan") from None
