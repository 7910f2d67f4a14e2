"""The router deployment of :mod:`server.shard.serving` (FastAPI ingress on Ray Serve).

Kept in its own module, defined at import time: Serve pickles an ingress class by reference, and a class
built inside a function drags its closure into the pickle (a RecursionError in ``serve.ingress``).

No ``from __future__ import annotations`` here: FastAPI must see the request model's class, not a string.
"""

import asyncio
import time
from typing import Optional

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from ray import serve

from edge_gr.errors import InputError
from server.security import Security, SecurityMiddleware, bearer_dependency
from server.schemas import Health, SearchHit, SearchRequest, SearchResponse

from .plan import ShardPlan

__all__ = ["Router"]


def _retryable() -> tuple[type, ...]:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return (RayActorError, ActorUnavailableError)


app = FastAPI(title="edge-gr sharded search", description="Generative retrieval over semantic shards (Ray Serve).")
_SECURITY = Security()  # set by Router.__init__ in each router replica's process
app.add_middleware(SecurityMiddleware, security=lambda: _SECURITY)
_AUTH = [Depends(bearer_dependency(lambda: _SECURITY))]


@app.exception_handler(InputError)
async def _bad_input(request, exc: InputError):
    return JSONResponse(status_code=400, content={"detail": exc.message, "hint": exc.hint})


@serve.deployment(name="router", ray_actor_options={"num_cpus": 0}, health_check_period_s=2, health_check_timeout_s=10)
@serve.ingress(app)
class Router:
    """The ingress: routes a query to the shards of its top prefixes (or all), calls them concurrently, merges."""

    def __init__(self, checkpoint: str, plan: dict, shards: dict, beam: int, strategy: str, max_fanout: Optional[int],
                 security: Optional[dict] = None):
        global _SECURITY
        _SECURITY = Security.from_dict(security)
        import torch

        from server.api import load
        from server.schemas import model_version

        from .route import ShardedSearcher

        torch.set_num_threads(1)  # the router runs one decoder step per query; the shards do the work
        self.gm = load(checkpoint)
        self.searcher = ShardedSearcher(self.gm, ShardPlan.from_dict(plan))
        self.handles = {int(s): h for s, h in shards.items()}
        self.beam, self.strategy, self.max_fanout = beam, strategy, max_fanout
        self.version = model_version(self.gm)
        self.titles = {it.id: (it.meta or {}).get("title") or it.text[:120] for it in self.gm.items}
        self.retried = 0

    async def _call(self, s: int, queries: list, k: int) -> dict:
        errors = _retryable()
        for attempt in range(4):
            try:
                return await self.handles[s].search.remote(queries, k)
            except errors:  # the replica died under the request: Serve routes the retry to a live one
                if attempt == 3:
                    raise
                self.retried += 1
                await asyncio.sleep(0.25 * (attempt + 1))

    async def answer(self, queries: list, k: int) -> tuple:
        from .route import merge

        src = self.gm.source(queries)
        if self.strategy == "prefix":
            routes = self.searcher.route(src, beam=self.beam, max_fanout=self.max_fanout)
        else:
            routes = [list(self.searcher.shards)] * len(queries)
        shards = sorted({s for r in routes for s in r})
        rows = {s: [q for q, r in enumerate(routes) if s in r] for s in shards}
        got = await asyncio.gather(*(self._call(s, [queries[q] for q in rows[s]], k) for s in shards))
        answers: list[list] = [[] for _ in queries]
        versions = set()
        for s, res in zip(shards, got):
            versions.add(res["version"])
            for q, a in zip(rows[s], res["answers"]):
                answers[q].append(a)
        return [merge(a, k) for a in answers], routes, sorted(versions)

    @app.get("/health", response_model=Health)
    def health(self) -> Health:
        return Health(status="ok", task=self.gm.task, model_version=self.version, items=len(self.gm.items))

    @app.get("/shards", dependencies=_AUTH)
    async def shards(self) -> dict:
        """Each shard as one of its replicas reports it: version, items, replica id, applied log sequence
        (a rollout's check reads the version)."""
        infos = await asyncio.gather(*(self.handles[s].info.remote() for s in sorted(self.handles)))
        return {"shards": {str(i["shard"]): i for i in infos},
                "strategy": self.strategy, "max_fanout": self.max_fanout, "retried": self.retried}

    @app.post("/search", response_model=SearchResponse, dependencies=_AUTH)
    async def search(self, req: SearchRequest) -> SearchResponse:
        q = req.query if req.query is not None else req.history
        if self.gm.task == "rec" and req.history is None:
            raise InputError("a recommender takes a history (list of item ids), not text", hint='send {"history": ["1", "50"]}')
        if self.gm.task == "retrieval" and req.query is None:
            raise InputError("a retrieval model takes a text query", hint='send {"query": "..."}')
        t0 = time.perf_counter()
        (hits,), _, versions = await self.answer([q], req.k)
        ms = (time.perf_counter() - t0) * 1000
        items = [SearchHit(item_id=i, score=s, title=self.titles.get(i, "")) for i, s in hits]
        return SearchResponse(items=items, model_version=",".join(versions), task=self.gm.task, latency_ms=round(ms, 3))
