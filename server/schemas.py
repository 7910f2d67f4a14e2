"""The HTTP contract of the cloud services: request / response models and the model-version rule.

Shared by the single-process service (:mod:`server.serve`) and the sharded Ray Serve router
(:mod:`server.shard.router`), so both speak the same schema and neither imports the other.

>>> SearchRequest(history=["1", "50"]).k
10
"""

from __future__ import annotations

import hashlib
from typing import Optional

try:
    from pydantic import BaseModel, Field, model_validator
except ImportError as e:  # pragma: no cover - fastapi is a pinned dependency
    _IMPORT_ERROR: ImportError | None = e
    BaseModel = object  # type: ignore[assignment,misc]

    def Field(*a, **kw):  # type: ignore[no-redef]
        return None

    def model_validator(*a, **kw):  # type: ignore[no-redef]
        return lambda f: f
else:
    _IMPORT_ERROR = None

__all__ = ["MAX_K", "SearchRequest", "SearchResponse", "SearchHit", "Health", "ErrorBody", "model_version"]

MAX_K = 100


class SearchRequest(BaseModel):
    """Exactly one of ``query`` (retrieval model) or ``history`` (recommender, oldest first)."""

    query: Optional[str] = Field(None, description="search text (retrieval model)", examples=["god so loved the world"])
    history: Optional[list[str]] = Field(None, description="item ids, oldest first (recommender)", examples=[["1", "50", "181"]])
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.query is None) == (self.history is None):
            raise ValueError("give exactly one of 'query' (text) or 'history' (list of item ids)")
        return self


class SearchHit(BaseModel):
    item_id: str
    score: Optional[float] = Field(None, description="summed log-probability; null for the popularity fallback")
    title: str = ""


class SearchResponse(BaseModel):
    items: list[SearchHit]
    model_version: str
    task: str
    latency_ms: float


class Health(BaseModel):
    status: str
    task: str
    model_version: str
    items: int


class ErrorBody(BaseModel):
    detail: str
    hint: Optional[str] = None


def model_version(model) -> str:
    """``meta["model_version"]`` if the checkpoint has one, else ``task-`` + 12 hex of a sha256 of the weights."""
    v = (model.meta or {}).get("model_version")
    if v:
        return str(v)
    h = hashlib.sha256()
    for name, t in sorted(model.model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.task}-{h.hexdigest()[:12]}"


