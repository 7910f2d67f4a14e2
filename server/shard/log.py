"""Catalogue updates through NATS JetStream: one writer per shard appends, every replica applies in log order.

This is the chapter's "primary -> write-ahead log -> asynchronous replication -> replica
update -> ACK" (DESIGN 14.3) on a real replicated log instead of home-made code:

* **The log**: one JetStream stream (``EDGEGR_CATALOGUE``, file storage, ``replicas=3`` on a
  3-node cluster: a message acknowledged to the writer is on a majority) with one subject
  per shard, ``edgegr.catalogue.<shard>``. JetStream fixes one order per stream; every
  replica of a shard sees that shard's updates in that order.
* **The writer** (:class:`ShardWriter`) owns a shard's ID table. New items get IDs from
  :func:`server.incremental_ids.assign_new_ids` (nearest prefix, never a retired ID),
  retired ones go through :func:`~server.incremental_ids.retire`, a change is new
  text/meta for an existing ID. Each message names the op (``add``/``change``/``retire``),
  the item and its semantic ID. :meth:`CatalogueLog.publish` waits for JetStream's ack and
  retries with the *same* ``Nats-Msg-Id``, so a retry after a leader loss whose first
  attempt was in fact stored is dropped by JetStream's dedupe window (the ack says
  ``duplicate``) instead of being appended twice. A failed publish stays queued and goes
  out first next time, so the writer's order is the log's order.
* **Replicas** (:class:`CatalogueReplica`): one durable pull consumer each, filtered on its
  shard's subject. It applies updates in stream order to its own state (item set + ID
  table), acks each, and records the stream sequence applied; a replica that was down
  resumes from its durable consumer's position (the consumer lives in the cluster, not in
  the replica). Applying is idempotent: a redelivered message (its ack was lost) is
  recognised by its stream sequence and skipped, and a missing one (a gap in the writer's
  numbering) is waited for, never skipped.

**Conflicting writers: one writer per shard, leased in etcd, with fencing tokens.** The
writer takes :meth:`server.shard.meta.ShardMeta.acquire_writer` (a lease-held key; its
create revision is the token, so a later holder always has a larger one) and stamps every
message with ``Edge-GR-Token`` and its own counter ``Edge-GR-Seq``. A replica rejects a
message whose token is below the highest it has applied for that shard: a writer that
stalled past its lease (GC pause, partition) and wakes up cannot overwrite its successor's
work. As a second guard, each publish carries ``Nats-Expected-Last-Subject-Sequence``, so
JetStream itself refuses an append from a writer that has not seen the shard's latest
message (:class:`StaleWriterError`). Every replica decides from the same log prefix with the
same rule, so all replicas of a shard end identical with no merge step.

*Why not the chapter's per-item version vectors?* Version vectors *detect* concurrent
updates of one item and leave the resolution to a merge rule. The invariants that matter
here span items, not one item: no two items share a semantic ID, and a retired ID is never
handed out again - two writers each assigning "the smallest free suffix under prefix 17-203"
both produce valid per-item histories and together break the trie, and no per-item merge
can repair that without renumbering an item a model was already trained on. A shard is
already the unit of ownership (a subtree of the trie), so serialising its writes through one
leased writer keeps ID assignment a sequential function, and the consensus needed (who is
the writer, which token) is the metadata etcd already holds. The cost: a shard accepts no
writes while its lock is vacant (at most one lease ttl), and one writer bounds a shard's
write rate - fine for catalogue updates. Version vectors remain the tool for multi-master
writes by disconnected parties (devices), which this path does not have.

**Sync facade.** nats-py is asyncio-only; each :class:`CatalogueLog` / :class:`CatalogueReplica`
runs its own event loop on a daemon thread and its public methods are plain blocking calls
(usable from tests, CLIs and benchmarks); ``close()`` (or ``with``) stops it.

>>> u = Update("add", "item-7", (3, 1, 4), text="a new song")
>>> Update.from_json(u.to_json()) == u
True
>>> s = ReplicaState(shard=0)
>>> s.offer(u, token=5, n=1, seq=1), s.offer(u, token=5, n=1, seq=1), s.offer(Update("retire", "item-7", (3, 1, 4)), token=4, n=9, seq=2)
('applied', 'duplicate', 'fenced')
>>> s.codes, s.applied_seq
({'item-7': (3, 1, 4)}, 2)
>>> with CatalogueLog(["nats://127.0.0.1:4222"]) as log:  # doctest: +SKIP
...     log.ensure_stream(replicas=3)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Coroutine, Literal, Sequence

import numpy as np

from edge_gr.errors import BackendUnavailableError, EdgeGRError, InputError
from edge_gr.ids import SemanticIds

__all__ = ["STREAM", "SUBJECT_PREFIX", "Update", "ReplicaState", "CatalogueLog", "ShardWriter", "CatalogueReplica",
           "StaleWriterError", "subject", "measure_propagation"]

STREAM = "EDGEGR_CATALOGUE"
SUBJECT_PREFIX = "edgegr.catalogue"
H_TOKEN, H_SEQ, H_WRITER = "Edge-GR-Token", "Edge-GR-Seq", "Edge-GR-Writer"
_WRONG_LAST_SEQ = 10071  # JetStream's err_code for a failed Nats-Expected-Last-Subject-Sequence

Op = Literal["add", "change", "retire"]


class StaleWriterError(EdgeGRError):
    """JetStream refused an append: the shard's log has a message this writer has not seen (another writer took over)."""


def subject(shard: int, prefix: str = SUBJECT_PREFIX) -> str:
    """The shard's subject, ``edgegr.catalogue.<shard>``."""
    return f"{prefix}.{int(shard)}"


def _import_nats():
    try:
        import nats
        import nats.errors
        import nats.js.errors
        from nats.js import api
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError("the NATS client is not installed", hint="pip install nats-py") from e
    return nats, api


@dataclass(frozen=True)
class Update:
    """One catalogue change: ``op`` on ``item``, whose semantic ID is ``code``."""

    op: Op
    item: str
    code: tuple[int, ...]
    text: str | None = None
    meta: dict | None = None
    id_version: int = 0          # the writer's ID table version after this change

    def __post_init__(self):
        if self.op not in ("add", "change", "retire"):
            raise InputError(f"unknown update op {self.op!r}", hint="use 'add', 'change' or 'retire'")
        object.__setattr__(self, "code", tuple(int(c) for c in self.code))

    def to_json(self) -> bytes:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["code"] = list(self.code)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "Update":
        return cls(**json.loads(raw))


@dataclass
class ReplicaState:
    """A replica's copy of one shard: the ID table (item -> code, in catalogue order) plus texts / metas.

    :meth:`offer` is the whole replication rule, a pure function of the log prefix, so
    every replica fed the same stream ends in the same state.
    """

    shard: int
    codes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    metas: dict[str, dict] = field(default_factory=dict)
    retired: dict[str, tuple[int, ...]] = field(default_factory=dict)
    applied_seq: int = 0      # stream sequence of the last message decided (applied or rejected)
    token: int = 0            # highest fencing token applied
    writer_seq: int = 0       # last Edge-GR-Seq applied under ``token``
    applied: int = 0
    rejected: list[dict] = field(default_factory=list)   # {"seq", "token", "reason"}

    def offer(self, u: Update, *, token: int, n: int, seq: int) -> str:
        """Decide one message: ``'applied'``, ``'duplicate'`` (seen), ``'fenced'`` / ``'invalid'`` (rejected,
        never retried) or ``'gap'`` (an earlier message of this writer is missing: do not ack, wait for it)."""
        if seq <= self.applied_seq:
            return "duplicate"
        if token < self.token:
            return self._reject(seq, token, f"fenced: token {token} < {self.token}", "fenced")
        expected = self.writer_seq + 1 if token == self.token else 1
        if n < expected:
            self.applied_seq = seq
            return "duplicate"   # the same writer message stored twice (outside the dedupe window)
        if n > expected:
            return "gap"
        problem = self._check(u)
        if problem:
            self.token, self.writer_seq = token, n  # the writer's numbering moved on; its next message must still follow
            return self._reject(seq, token, problem, "invalid")
        if u.op == "add":
            self.codes[u.item] = u.code
        elif u.op == "retire":
            self.retired[u.item] = self.codes.pop(u.item)
            self.texts.pop(u.item, None)
            self.metas.pop(u.item, None)
        if u.text is not None and u.op != "retire":
            self.texts[u.item] = u.text
        if u.meta is not None and u.op != "retire":
            self.metas[u.item] = u.meta
        self.token, self.writer_seq, self.applied_seq = token, n, seq
        self.applied += 1
        return "applied"

    def _check(self, u: Update) -> str:
        if u.op == "add":
            if u.item in self.codes:
                return f"add of {u.item!r}, which exists"
            if u.code in set(self.codes.values()) | set(self.retired.values()):
                return f"add of {u.item!r} with ID {u.code}, which is taken or retired"
        elif u.item not in self.codes or self.codes[u.item] != u.code:
            return f"{u.op} of {u.item!r} {u.code}, which this replica does not hold with that ID"
        return ""

    def _reject(self, seq: int, token: int, reason: str, kind: str) -> str:
        self.applied_seq = seq
        self.rejected.append({"seq": seq, "token": token, "reason": reason})
        return kind

    @classmethod
    def from_ids(cls, shard: int, ids: SemanticIds, texts: dict[str, str] | None = None, *, applied_seq: int = 0) -> "ReplicaState":
        """A replica's starting point: the shard's base ID table (from its bundle), which includes the log up to ``applied_seq``."""
        retired = {r["item"]: tuple(int(c) for c in r["code"]) for r in ids.meta.get("retired", [])}
        return cls(shard=int(shard), codes={it: tuple(int(c) for c in row) for it, row in zip(ids.items, ids.codes.tolist())},
                   texts=dict(texts or {}), retired=retired, applied_seq=int(applied_seq))

    def ids(self, levels: Sequence[int], meta: dict | None = None) -> SemanticIds:
        """The ID table as :class:`~edge_gr.ids.SemanticIds` (retired IDs in ``meta["retired"]``)."""
        items = list(self.codes)
        codes = np.array([self.codes[i] for i in items], dtype=np.int64).reshape(len(items), len(levels))
        m = dict(meta or {})
        m["retired"] = [{"item": k, "code": list(v)} for k, v in self.retired.items()]
        return SemanticIds(items, codes, tuple(levels), m)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("codes", "retired"):
            d[k] = {i: list(c) for i, c in d[k].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReplicaState":
        d = dict(d)
        for k in ("codes", "retired"):
            d[k] = {i: tuple(c) for i, c in d.get(k, {}).items()}
        return cls(**d)


class _Loop:
    """An asyncio loop on a daemon thread: ``run(coro)`` from plain code, blocking."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


async def _connect(servers: Sequence[str], name: str):
    nats, _ = _import_nats()

    async def quiet(*_):  # nats-py logs every reconnect otherwise; failures surface as timeouts on calls
        pass

    try:
        return await nats.connect(servers=list(servers), name=name, connect_timeout=2, reconnect_time_wait=0.1,
                                  max_reconnect_attempts=-1, allow_reconnect=True, error_cb=quiet,
                                  disconnected_cb=quiet, reconnected_cb=quiet)
    except Exception as e:  # noqa: BLE001 - no server answered
        raise BackendUnavailableError(f"no NATS server of {list(servers)} answered ({e!r})",
                                      hint="start the cluster (server.shard.engines.NatsCluster or nats-server -js ...)") from e


def _transient(e: BaseException) -> bool:
    """A NATS error worth retrying: timeouts, no responders / no leader during an election, a reconnect."""
    nats, _ = _import_nats()
    if isinstance(e, (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
                      nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError,
                      nats.errors.OutboundBufferLimitError, nats.js.errors.NoStreamResponseError,
                      nats.js.errors.ServiceUnavailableError)):
        return True
    # 10008: stream/consumer "temporarily unavailable"; 503 without err_code: JetStream not ready
    return isinstance(e, nats.js.errors.APIError) and (e.code == 503 or e.err_code in (10008,))


async def _retry(fn: Callable[[], Coroutine], what: str, retries: int, backoff_s: float, servers: Sequence[str]) -> Any:
    """``await fn()`` until it returns, retrying transient errors (an election, a reconnect) with backoff."""
    delay, last = backoff_s, None
    for _ in range(retries + 1):
        try:
            return await fn()
        except Exception as e:  # noqa: BLE001
            if not _transient(e):
                raise
            last = e
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise BackendUnavailableError(f"JetStream did not answer '{what}' after {retries} retries ({last!r})",
                                  hint=f"check that a majority of the NATS servers ({', '.join(servers)}) runs")


class CatalogueLog:
    """A writer's connection to the catalogue stream (``servers``: NATS URLs of the cluster)."""

    def __init__(self, servers: Sequence[str], *, stream: str = STREAM, prefix: str = SUBJECT_PREFIX,
                 ack_timeout: float = 1.0, retries: int = 30, backoff_s: float = 0.05):
        self.servers, self.stream, self.prefix = list(servers), stream, prefix
        self.ack_timeout, self.retries, self.backoff_s = float(ack_timeout), int(retries), float(backoff_s)
        self._loop = _Loop(f"edge-gr-log-{stream}")
        try:
            self._nc = self._loop.run(_connect(self.servers, "edge-gr-writer"), timeout=30)
        except BaseException:
            self._loop.close()
            raise
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        self.stats = {"attempts": 0, "failed_attempts": 0, "duplicates": 0, "longest_publish_s": 0.0}

    def close(self) -> None:
        try:
            self._loop.run(self._nc.close(), timeout=5)
        except Exception:  # noqa: BLE001 - closing a connection whose cluster is gone
            pass
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    async def _retry(self, fn: Callable[[], Coroutine], what: str) -> Any:
        return await _retry(fn, what, self.retries, self.backoff_s, self.servers)

    def ensure_stream(self, replicas: int | None = None, *, duplicate_window_s: float = 120.0) -> dict:
        """Create the stream if missing (idempotent); ``replicas`` defaults to min(3, number of servers)."""
        _, api = _import_nats()
        r = int(replicas or min(3, len(self.servers)))
        cfg = api.StreamConfig(name=self.stream, subjects=[f"{self.prefix}.*"], storage=api.StorageType.FILE,
                               num_replicas=r, duplicate_window=duplicate_window_s, max_msgs_per_subject=-1)

        async def go():
            try:
                info = await self._js.add_stream(cfg)
            except Exception as e:  # noqa: BLE001
                if _transient(e):
                    raise
                info = await self._js.stream_info(self.stream)   # exists with other settings: keep them, say which
            return {"name": info.config.name, "replicas": info.config.num_replicas, "subjects": info.config.subjects}

        return self._loop.run(self._retry(go, f"create stream {self.stream}"), timeout=120)

    def last_subject_seq(self, shard: int) -> int:
        """Stream sequence of the shard's latest message (0 if none)."""
        nats, _ = _import_nats()

        async def go():
            try:
                return (await self._js.get_last_msg(self.stream, subject(shard, self.prefix))).seq
            except nats.js.errors.NotFoundError:
                return 0

        return self._loop.run(self._retry(go, f"last message of shard {shard}"), timeout=120)

    def stream_state(self) -> dict:
        """The stream's ``messages``, ``first_seq``, ``last_seq`` (all shards)."""
        async def go():
            st = (await self._js.stream_info(self.stream)).state
            return {"messages": int(st.messages), "first_seq": int(st.first_seq), "last_seq": int(st.last_seq)}

        return self._loop.run(self._retry(go, f"info of stream {self.stream}"), timeout=120)

    def tokens_after(self, shard: int, seq: int) -> list[tuple[int, int]]:
        """``(stream seq, fencing token)`` of the shard's messages after stream sequence ``seq``."""
        nats, _ = _import_nats()
        subj = subject(shard, self.prefix)

        async def go():
            out, nxt = [], seq + 1
            while True:
                try:
                    m = await self._js.get_msg(self.stream, seq=nxt, subject=subj, next=True)
                except nats.js.errors.NotFoundError:
                    return out
                out.append((int(m.seq), int((m.headers or {}).get(H_TOKEN, 0))))
                nxt = int(m.seq) + 1

        return self._loop.run(self._retry(go, f"messages of shard {shard} after {seq}"), timeout=120)

    def publish(self, shard: int, update: Update, *, token: int, n: int, writer: str = "",
                msg_id: str | None = None, expect_last: int | None = None) -> tuple[int, bool]:
        """Append ``update`` to the shard's subject and wait for the ack; returns ``(stream seq, duplicate)``.

        ``token``/``n``: the writer's fencing token and its own message counter (replicas check
        both). ``msg_id`` (default ``<shard>-<token>-<n>``) is reused on every retry, so a stored
        first attempt is not stored again. ``expect_last``: the stream sequence of the shard's
        previous message; JetStream refuses the append if there is a newer one (:class:`StaleWriterError`).
        """
        nats, _ = _import_nats()
        hdr = {"Nats-Msg-Id": msg_id or f"{shard}-{token}-{n}", H_TOKEN: str(int(token)), H_SEQ: str(int(n)), H_WRITER: writer}
        if expect_last is not None:
            hdr["Nats-Expected-Last-Subject-Sequence"] = str(int(expect_last))
        subj, body = subject(shard, self.prefix), update.to_json()

        async def once():
            self.stats["attempts"] += 1
            try:
                return await self._js.publish(subj, body, timeout=self.ack_timeout, stream=self.stream, headers=dict(hdr))
            except Exception:
                self.stats["failed_attempts"] += 1
                raise

        async def go():
            try:
                return await self._retry(once, f"publish to {subj}")
            except nats.js.errors.APIError as e:
                if e.err_code == _WRONG_LAST_SEQ:
                    raise StaleWriterError(f"shard {shard}'s log has moved past sequence {expect_last} ({e.description})",
                                           hint="another writer took over: re-acquire the writer lock and "
                                                "rebuild the ID table from a replica") from None
                raise

        t0 = time.monotonic()
        ack = self._loop.run(go(), timeout=None)
        self.stats["longest_publish_s"] = max(self.stats["longest_publish_s"], time.monotonic() - t0)
        self.stats["duplicates"] += bool(ack.duplicate)
        return int(ack.seq), bool(ack.duplicate)


class ShardWriter:
    """The single writer of one shard: owns its ID table, turns changes into updates, appends them in order.

    ``ids``/``embeddings``: the shard's current ID table and its items' vectors (row i =
    ``ids.items[i]``, the space :func:`~server.incremental_ids.assign_new_ids` places new items in).
    ``token``: the fencing token of the writer lock (``ShardMeta.acquire_writer(...).token``).
    ``guard``: also make JetStream refuse appends after someone else's (expected last subject sequence).
    """

    def __init__(self, log: CatalogueLog, shard: int, ids: SemanticIds, embeddings: np.ndarray, *, token: int,
                 writer_id: str = "writer", guard: bool = True):
        if len(ids) != np.asarray(embeddings).shape[0]:
            raise InputError(f"{len(ids)} items but {np.asarray(embeddings).shape[0]} embedding rows",
                             hint="pass one embedding row per item of the ID table")
        self.log, self.shard, self.token, self.writer_id = log, int(shard), int(token), writer_id
        self.ids, self.embeddings = ids, np.asarray(embeddings, dtype=np.float64)
        self.n = 0                               # messages numbered so far (Edge-GR-Seq of the last one)
        self._queue: deque[tuple[int, Update]] = deque()   # numbered, not yet acknowledged - sent first next time
        self.published: list[tuple[int, Update]] = []      # (stream seq, update) acknowledged, in order
        self._last = log.last_subject_seq(shard) if guard else None

    def _enqueue(self, updates: list[Update]) -> list[int]:
        for u in updates:
            self.n += 1
            self._queue.append((self.n, u))
        return self.flush()

    def flush(self) -> list[int]:
        """Publish the queued updates in order; returns their stream sequences (raises, keeping the rest queued)."""
        seqs, skipped = [], 0
        while self._queue:
            n, u = self._queue[0]
            try:
                seq, _dup = self.log.publish(self.shard, u, token=self.token, n=n, writer=self.writer_id, expect_last=self._last)
            except StaleWriterError:
                # someone appended since our last message. If it is only an older writer's (lower token:
                # every replica rejects it), step over it; a newer writer's means we are the stale one.
                newer = self.log.tokens_after(self.shard, self._last or 0)
                if not newer or any(tok >= self.token for _, tok in newer) or skipped >= 16:
                    raise
                self._last, skipped = newer[-1][0], skipped + 1
                continue
            self._queue.popleft()
            self.published.append((seq, u))
            if self._last is not None:
                self._last = seq
            seqs.append(seq)
        return seqs

    def add(self, items: Sequence[str], embeddings: np.ndarray, texts: Sequence[str] | None = None, *,
            method: str | None = None) -> list[int]:
        """New items: IDs from :func:`assign_new_ids`, one ``add`` update each."""
        from server.incremental_ids import assign_new_ids

        E = np.asarray(embeddings, dtype=np.float64)
        new_ids, _report = assign_new_ids(self.ids, self.embeddings, list(items), E, method=method)
        v = int(new_ids.meta.get("id_version", 0))
        ups = [Update("add", it, tuple(new_ids.codes[len(self.ids) + k]), text=texts[k] if texts is not None else None, id_version=v)
               for k, it in enumerate(items)]
        self.ids, self.embeddings = new_ids, np.concatenate([self.embeddings, E.reshape(len(items), -1)]) if len(items) else self.embeddings
        return self._enqueue(ups)

    def change(self, item: str, *, text: str | None = None, meta: dict | None = None) -> int:
        """New text / meta for an existing item (its ID stays)."""
        code = tuple(int(c) for c in self.ids.codes[self.ids.index(item)])
        return self._enqueue([Update("change", item, code, text=text, meta=meta, id_version=int(self.ids.meta.get("id_version", 0)))])[0]

    def retire(self, items: Sequence[str]) -> list[int]:
        """Remove items; their IDs are retired for good (:func:`~server.incremental_ids.retire`)."""
        from server.incremental_ids import retire

        rows = [self.ids.index(i) for i in items]
        codes = [tuple(int(c) for c in self.ids.codes[r]) for r in rows]
        new_ids = retire(self.ids, list(items))
        keep = np.setdiff1d(np.arange(len(self.ids)), rows)
        v = int(new_ids.meta.get("id_version", 0))
        self.ids, self.embeddings = new_ids, self.embeddings[keep]
        return self._enqueue([Update("retire", it, c, id_version=v) for it, c in zip(items, codes)])


class CatalogueReplica:
    """One replica of one shard: a durable pull consumer ``replica_id`` applying the shard's updates.

    ``state``: where to resume from (a replica restarting with its saved :class:`ReplicaState`);
    the durable consumer remembers what was acked, so only the rest is delivered.
    ``poll()`` applies what is there; ``start()`` keeps consuming on the replica's thread.
    """

    def __init__(self, servers: Sequence[str], shard: int, replica_id: str, *, stream: str = STREAM,
                 prefix: str = SUBJECT_PREFIX, state: ReplicaState | None = None, ack_wait_s: float = 2.0,
                 batch: int = 64, retries: int = 30):
        _, api = _import_nats()
        self.servers, self.shard, self.replica_id, self.stream = list(servers), int(shard), replica_id, stream
        self.state = state if state is not None else ReplicaState(shard=self.shard)
        self.batch, self.ack_wait_s = int(batch), float(ack_wait_s)
        self.durable = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"edgegr-{shard}-{replica_id}")
        self.applied_at: dict[int, float] = {}    # stream seq -> perf_counter() when applied (propagation benchmark)
        self.outcomes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._loop = _Loop(f"edge-gr-replica-{replica_id}")
        self.retries = int(retries)
        # a new durable starts after what the starting state already holds (a consumer that exists keeps its position)
        start = {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self.state.applied_seq + 1} \
            if self.state.applied_seq else {"deliver_policy": api.DeliverPolicy.ALL}
        cfg = api.ConsumerConfig(durable_name=self.durable, ack_policy=api.AckPolicy.EXPLICIT, **start, ack_wait=self.ack_wait_s,
                                 max_ack_pending=4 * self.batch, filter_subject=subject(shard, prefix))

        async def setup():
            nc = await _connect(self.servers, f"edge-gr-replica-{replica_id}")
            js = nc.jetstream(timeout=2.0)
            sub = await _retry(lambda: js.pull_subscribe(subject(shard, prefix), durable=self.durable,
                                                                      stream=stream, config=cfg),
                               f"consumer {self.durable}", self.retries, 0.05, self.servers)
            return nc, js, sub

        try:
            self._nc, self._js, self._sub = self._loop.run(setup(), timeout=120)
        except BaseException:
            self._loop.close()
            raise

    # -- consuming -----------------------------------------------------------
    async def _poll(self, timeout: float) -> int:
        nats, _ = _import_nats()
        try:
            msgs = await self._sub.fetch(self.batch, timeout=timeout)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            return 0
        applied = 0
        for k, m in enumerate(msgs):
            h = m.headers or {}
            seq = m.metadata.sequence.stream
            try:
                u, token, n = Update.from_json(m.data), int(h.get(H_TOKEN, 0)), int(h.get(H_SEQ, 0))
            except (ValueError, TypeError, KeyError):
                with self._lock:
                    self.state._reject(seq, -1, "unreadable message", "invalid")
                await m.term()
                continue
            with self._lock:
                outcome = self.state.offer(u, token=token, n=n, seq=seq)
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
                if outcome == "applied":
                    self.applied_at[seq] = time.perf_counter()
                    applied += 1
            if outcome == "gap":
                # an earlier message is still out (its delivery was lost): hand this one and the rest back
                for later in msgs[k:]:
                    await later.nak(delay=0.1)
                break
            await m.ack()  # decided for good (applied, duplicate or rejected): never deliver it again
        return applied

    def poll(self, timeout: float = 0.5) -> int:
        """Fetch and apply what is available now (one batch); returns the number of updates applied."""
        self._check_stopped()
        return self._loop.run(self._poll_safe(timeout), timeout=timeout + 30)

    async def _poll_safe(self, timeout: float) -> int:
        try:
            return await self._poll(timeout)
        except Exception as e:  # noqa: BLE001
            if _transient(e):
                await asyncio.sleep(0.05)
                return 0
            raise

    def _check_stopped(self) -> None:
        if self._task is not None:
            raise InputError("the replica is consuming in the background", hint="call stop() before poll()")

    def start(self) -> None:
        """Consume in the background (on the replica's loop) until :meth:`stop`."""
        if self._task is not None:
            return

        async def run():
            while True:
                try:
                    await self._poll_safe(1.0)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - keep the replica alive; the next poll retries
                    await asyncio.sleep(0.1)

        async def spawn():
            return asyncio.ensure_future(run())

        self._task = self._loop.run(spawn(), timeout=10)

    def stop(self) -> None:
        """Stop background consuming (the durable consumer keeps the position)."""
        if self._task is None:
            return
        task, self._task = self._task, None

        async def cancel():
            task.cancel()
            try:
                await task  # let it finish cancelling on its loop, so no half-done poll is left behind
            except asyncio.CancelledError:
                pass

        self._loop.run(cancel(), timeout=10)

    def pending(self) -> int:
        """Messages of this shard not yet acked by this replica (delivered-but-unacked included)."""
        async def go():
            info = await self._sub.consumer_info()
            return int(info.num_pending) + int(info.num_ack_pending)
        return self._loop.run(_retry(go, f"consumer info {self.durable}", self.retries, 0.05, self.servers), timeout=120)

    def wait_applied(self, seq: int, timeout: float = 30.0) -> None:
        """Block until the replica has decided every message up to stream sequence ``seq``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.state.applied_seq >= seq:
                    return
            if self._task is None:
                self.poll(0.2)
            else:
                time.sleep(0.005)
        raise EdgeGRError(f"replica {self.replica_id} reached sequence {self.state.applied_seq}, not {seq}, within {timeout:.0f} s",
                          hint="check that the NATS cluster has a majority up and the replica's consumer exists")

    def catch_up(self, timeout: float = 30.0) -> int:
        """Apply until nothing of the shard is pending; returns the updates applied."""
        self._check_stopped()
        deadline, applied = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            applied += self.poll(0.3)
            if self.pending() == 0:
                return applied
        raise EdgeGRError(f"replica {self.replica_id} still has updates pending after {timeout:.0f} s",
                          hint="check the NATS cluster's health (a majority of servers up)")

    def snapshot(self) -> ReplicaState:
        """A consistent copy of the state (safe while consuming in the background)."""
        with self._lock:
            return ReplicaState.from_dict(self.state.to_dict())

    def close(self) -> None:
        """Stop and disconnect; the durable consumer stays (a later replica with the same id resumes)."""
        self.stop()
        try:
            self._loop.run(self._nc.close(), timeout=5)
        except Exception:  # noqa: BLE001
            pass
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_propagation(writer: ShardWriter, replicas: Sequence[CatalogueReplica], n: int = 100, *,
                        item: str | None = None, timeout: float = 30.0) -> dict:
    """Update-propagation delay: append one ``change`` -> every replica applied it, ``n`` times, one in flight.

    Replicas are started in the background if they are not. Returns ``{"n", "p50_ms", "p99_ms",
    "max_ms", "mean_ms"}`` (append time = just before the publish; includes the ack round trip).
    """
    if not replicas or n < 1:
        raise InputError("need at least one replica and one update", hint="pass the shard's replicas and n >= 1")
    for r in replicas:
        r.start()
    item = item or writer.ids.items[0]
    delays = []
    for k in range(n):
        t0 = time.perf_counter()
        seq = writer.change(item, text=f"propagation probe {k}")
        for r in replicas:
            r.wait_applied(seq, timeout)
        if any(seq not in r.applied_at for r in replicas):
            raise EdgeGRError(f"a replica rejected probe {seq}: {[r.state.rejected[-1:] for r in replicas]}",
                              hint="measure with the writer that holds the shard's lock (the highest token)")
        delays.append(max(r.applied_at[seq] for r in replicas) - t0)
    d = np.array(delays) * 1000.0
    return {"n": n, "p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)),
            "max_ms": float(d.max()), "mean_ms": float(d.mean())}
