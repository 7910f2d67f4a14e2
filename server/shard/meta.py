"""Shard metadata in etcd: which bundle each shard serves, shard-by-shard rollout, replica leases, writer locks.

etcd is the "Raft-grade consensus for metadata" of DESIGN 14.3: every key below is a
linearizable register replicated on a majority, so one member's crash loses nothing
and a switch is never half-applied (etcd applies a transaction whole or not at all).

Keys (``prefix`` defaults to ``/edge-gr``)::

    /edge-gr/shards/<n>/current               {"version": ..., "bundle": ..., "sha256": ...}   (JSON)
    /edge-gr/shards/<n>/replicas/<replica>    {"replica": ..., ...}  attached to the replica's lease
    /edge-gr/shards/<n>/writer                {"writer": ..., "lease": ...} attached to the writer's lease

* :meth:`ShardMeta.switch` - compare-and-swap in one transaction: the value read must
  equal ``expected`` *and* the key's ``mod_revision`` must still be the one read, else
  nothing is written. Retried after a connection error / leader loss; a retry that finds
  ``new`` already there reports success (the first attempt landed, its answer was lost).
* :meth:`ShardMeta.rollout` - shard by shard in the given order (the first is the
  canary), an optional ``check`` between shards (e.g. a wrapper around
  :func:`server.rollout.check_stage`, whose ``StageCheck`` it accepts), idempotent (a
  shard already on ``new`` is skipped), rolls the switched shards back if a check fails.
* :meth:`ShardMeta.register_replica` / :meth:`live_replicas` - liveness by leases: the
  key disappears ``ttl`` s after the replica stops refreshing it.
* :meth:`ShardMeta.acquire_writer` - one writer per shard, the lock key held by a lease;
  the **fencing token** is the key's create revision (etcd revisions only grow, so a
  later holder always has a larger token). Replicas reject updates carrying a token lower
  than the highest they have applied (:mod:`server.shard.log`).
* :meth:`ShardMeta.watch` - a callback on every change of a shard's ``current`` (replicas
  hot-reload on a switch); it reconnects to another member from the last revision seen.

The client is pyetcd's multi-endpoint client with failover (a failed member is skipped
for ``endpoint_retry_s``), so requests move to the surviving members when one dies.

>>> _dump({"version": 2, "bundle": "b.tar"})
b'{"bundle":"b.tar","version":2}'
>>> meta = ShardMeta(["127.0.0.1:2379"])  # doctest: +SKIP
>>> meta.switch(0, None, {"version": 1, "bundle": "v1"})  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Callable, Sequence

from edge_gr.errors import BackendUnavailableError, EdgeGRError, InputError

__all__ = ["ShardMeta", "RolloutResult", "Lease", "WriterLock", "ShardWatch", "WriterLockHeld", "GRPC_OPTIONS"]


class WriterLockHeld(EdgeGRError):
    """Another writer holds a shard's writer lock."""


def _dump(value: dict) -> bytes:
    # canonical JSON: the same dict always gives the same bytes (readable with etcdctl, comparable)
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _load(raw: bytes | None) -> dict | None:
    return None if raw is None else json.loads(raw)


def _import_pyetcd():
    try:
        import grpc
        import pyetcd
        from pyetcd import exceptions
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError("the etcd client is not installed", hint="pip install etcd-sdk-python") from e
    return pyetcd, exceptions, grpc


# gRPC keeps one connection per address for the whole process and backs off up to 120 s after a member
# died; a restarted member would be refused long after it is back. Short backoff, per-channel pool.
GRPC_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.use_local_subchannel_pool", 1)]


def _parse_endpoint(ep: str) -> tuple[str, int]:
    ep = ep.split("://", 1)[-1].rstrip("/")
    host, _, port = ep.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"bad etcd endpoint {ep!r}", hint="use host:port, e.g. 127.0.0.1:2379")
    return host, int(port)


@dataclass
class RolloutResult:
    """What :meth:`ShardMeta.rollout` did. ``ok``: every shard holds ``new``."""

    new: dict
    order: list[int]
    switched: list[int] = field(default_factory=list)       # switched by this call, in order
    already: list[int] = field(default_factory=list)        # held ``new`` before (idempotent re-run)
    stopped_at: int | None = None                           # the shard whose check failed / that conflicted
    reason: str = ""
    rolled_back: list[int] = field(default_factory=list)
    retries: int = 0                                        # connection errors / leader losses retried
    longest_switch_s: float = 0.0                           # the slowest shard (read + switch, retries included)

    @property
    def ok(self) -> bool:
        return self.stopped_at is None


class Lease:
    """A lease kept alive by a background thread; ``valid`` turns False once it may have expired.

    ``stop(revoke=True)`` ends it now (its keys vanish); ``stop(revoke=False)`` only stops the
    keep-alive (what a crashed or stalled process does): the keys vanish after ``ttl``.
    """

    def __init__(self, meta: "ShardMeta", lease_id: int, ttl: int, key: str):
        self.meta, self.id, self.ttl, self.key = meta, lease_id, int(ttl), key
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._keepalive, name=f"edge-gr-lease-{lease_id:x}", daemon=True)
        self._thread.start()

    @property
    def valid(self) -> bool:
        # the holder must stop acting once the lease *may* have expired, not once etcd says so
        return not self._lost.is_set() and time.monotonic() - self._last_ok < self.ttl

    def _keepalive(self) -> None:
        while not self._stop.wait(max(self.ttl / 3.0, 0.2)):
            try:
                resp = list(self.meta._client.refresh_lease(self.id))
                if not resp or resp[0].TTL <= 0:
                    self._lost.set()  # expired on the server: keys gone, nothing to refresh any more
                    return
                self._last_ok = time.monotonic()
            except Exception:  # noqa: BLE001 - a member down: try again next tick (the client fails over)
                if time.monotonic() - self._last_ok > self.ttl:
                    self._lost.set()
                    return

    def stop(self, *, revoke: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if revoke and not self._lost.is_set():
            try:
                self.meta._retry(lambda _: self.meta._client.revoke_lease(self.id), f"revoke lease {self.id:x}")
            except BackendUnavailableError:
                pass  # it expires by itself after ttl
        self._lost.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class WriterLock(Lease):
    """The single-writer lock of one shard; ``token`` is the fencing token (the lock key's create revision)."""

    def __init__(self, meta: "ShardMeta", lease_id: int, ttl: int, key: str, shard: int, writer_id: str, token: int):
        super().__init__(meta, lease_id, ttl, key)
        self.shard, self.writer_id, self.token = shard, writer_id, int(token)

    def release(self) -> None:
        self.stop(revoke=True)


class ShardWatch:
    """Follows one key from a revision on, across member failures; ``cancel()`` ends it.

    ``callback(value, revision)`` runs on the watch thread for every change (``value`` is
    None when the key was deleted). ``errors`` counts reconnects.
    """

    def __init__(self, meta: "ShardMeta", key: str, callback: Callable[[dict | None, int], None], *, initial: bool):
        self.meta, self.key, self.callback = meta, key, callback
        self.revision = 0          # last revision delivered (or read): the watch resumes after it
        self.errors = 0
        self._stop = threading.Event()
        self._cancel: Callable[[], None] | None = None
        value, rev = meta._retry(lambda _: meta._get(key), f"read {key}")
        self.revision = rev
        if initial:
            callback(value, rev)
        self._thread = threading.Thread(target=self._run, name=f"edge-gr-watch{key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pyetcd, exceptions, _ = _import_pyetcd()
        k = 0
        while not self._stop.is_set():
            host, port = self.meta._endpoints[k % len(self.meta._endpoints)]
            k += 1
            client = None
            try:
                client = pyetcd.client(host, port, timeout=self.meta.timeout, grpc_options=GRPC_OPTIONS)
                # hasleader: a member cut off from the quorum ends the watch instead of going silent
                client.metadata = (("hasleader", "true"),)
                it, self._cancel = client.watch_response(self.key, start_revision=self.revision + 1)
                if self._stop.is_set():
                    break
                for resp in it:
                    for ev in resp.events:
                        rev = int(ev.mod_revision)
                        if rev <= self.revision:
                            continue
                        value = None if isinstance(ev, pyetcd.events.DeleteEvent) else _load(ev.value)
                        self.revision = rev
                        self.callback(value, rev)
                if self._stop.is_set():
                    break
                raise exceptions.ConnectionFailedError()  # the stream ended without cancel(): reconnect
            except exceptions.RevisionCompactedError:
                # history gone: hand over the current state instead (a replica reloads that)
                try:
                    value, rev = self.meta._get(self.key)
                    self.revision = rev
                    self.callback(value, rev)
                except Exception:  # noqa: BLE001
                    pass
            except Exception:  # noqa: BLE001 - member died / lost quorum: resume on the next one
                self.errors += 1
                self._stop.wait(0.2)
            finally:
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001
                        pass

    def cancel(self) -> None:
        self._stop.set()
        if self._cancel is not None:
            try:
                self._cancel()
            except Exception:  # noqa: BLE001 - its member may be dead already
                pass
        self._thread.join(timeout=5)


class ShardMeta:
    """Shard metadata on an etcd cluster (``endpoints``: ``host:port`` of its members).

    ``timeout`` bounds each request; a request failing for connection reasons (a member
    down, an election under way) is retried ``retries`` times with backoff, on the next member.
    """

    def __init__(self, endpoints: Sequence[str], *, prefix: str = "/edge-gr", timeout: float = 2.0,
                 retries: int = 8, backoff_s: float = 0.1, endpoint_retry_s: float = 1.0):
        pyetcd, self._exc, grpc = _import_pyetcd()
        if not endpoints:
            raise InputError("no etcd endpoints", hint="pass the members' host:port, e.g. EtcdCluster.endpoints")
        self._endpoints = [_parse_endpoint(e) for e in endpoints]
        self.prefix, self.timeout, self.retries, self.backoff_s = prefix.rstrip("/"), float(timeout), int(retries), float(backoff_s)
        # a failed member is skipped for endpoint_retry_s only: pyetcd's default (300 s) would leave a
        # 3-member cluster with no usable endpoint after two timeouts during one election
        eps = [pyetcd.Endpoint(h, p, secure=False, time_retry=endpoint_retry_s, opts=GRPC_OPTIONS) for h, p in self._endpoints]
        self._client = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=self.timeout, failover=True)
        self._tx = self._client.transactions
        self._retryable = (self._exc.ConnectionFailedError, self._exc.ConnectionTimeoutError,
                           self._exc.NoServerAvailableError, self._exc.InternalServerError)
        self._grpc_retry = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
        self._grpc = grpc
        self.retried = 0  # connection errors retried so far (all calls)

    # -- plumbing ----------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _retry(self, fn: Callable[[bool], Any], what: str) -> Any:
        """``fn(retrying)`` until it returns, retrying connection errors; ``retrying`` is True after a failure."""
        delay, last = self.backoff_s, None
        for attempt in range(self.retries + 1):
            try:
                return fn(attempt > 0)
            except self._retryable as e:
                last = e
            except self._grpc.RpcError as e:
                if e.code() not in self._grpc_retry:
                    raise
                last = e
            self.retried += 1
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        members = ", ".join(f"{h}:{p}" for h, p in self._endpoints)
        raise BackendUnavailableError(f"etcd did not answer '{what}' after {self.retries} retries ({last!r})",
                                      hint=f"check that a majority of the etcd members ({members}) is running")

    def _get(self, key: str) -> tuple[dict | None, int]:
        """(value, revision): the key's mod revision, or the store revision if it does not exist."""
        resp = self._client.get_response(key)
        if resp.count < 1:
            return None, int(resp.header.revision)
        kv = resp.kvs[0]
        return _load(kv.value), int(kv.mod_revision)

    def key(self, shard: int, *parts: str) -> str:
        return "/".join([f"{self.prefix}/shards/{int(shard)}", *parts]) if parts else f"{self.prefix}/shards/{int(shard)}/current"

    # -- current bundle per shard -----------------------------------------
    def get(self, shard: int) -> dict | None:
        """The shard's ``current`` value (None if never set)."""
        return self._retry(lambda _: self._get(self.key(shard))[0], f"get shard {shard}")

    def current(self, shards: Sequence[int]) -> dict[int, dict | None]:
        """``current`` of several shards (one read each)."""
        return {s: self.get(s) for s in shards}

    def switch(self, shard: int, expected: dict | None, new: dict) -> bool:
        """Set the shard's ``current`` to ``new`` iff it is ``expected`` now (None: the key must not exist).

        One transaction: compare the key's mod revision with the one at which ``expected``
        was read, then put. Returns False - and writes nothing - if the value is not
        ``expected`` (a stale caller) or changed in between.
        """
        key, data = self.key(shard), _dump(new)

        def attempt(retrying: bool) -> bool:
            value, rev = self._get(key)
            if value == new and (retrying or expected == new):
                return True  # already there: our earlier attempt landed, or a no-op switch
            if value != expected:
                return False
            cmp = self._tx.mod(key) == rev if value is not None else self._tx.create(key) == 0
            ok, _ = self._client.transaction(compare=[cmp], success=[self._tx.put(key, data)], failure=[])
            return bool(ok)

        return self._retry(attempt, f"switch shard {shard}")

    def rollout(self, shards: Sequence[int], new: dict, *, old: dict | None | EllipsisType = ...,
                check: Callable[[int, dict], Any] | None = None, rollback: bool = True) -> RolloutResult:
        """Move ``shards`` to ``new`` one by one in the given order (the first is the canary).

        ``old``: if given, a shard must hold ``old`` or ``new`` (else the rollout stops there,
        saying so in ``reason``); by default whatever a shard holds is replaced. After each
        switch, ``check(shard, new)`` - returning a bool or an object with ``.ok``
        (``server.rollout.StageCheck``) - may stop the rollout; with ``rollback`` the shards
        switched by this call go back to their previous values (by CAS: a shard changed since
        is left alone). Safe to re-run: shards already on ``new`` are skipped.
        """
        order = [int(s) for s in shards]
        if len(set(order)) != len(order):
            raise InputError(f"shards {order} repeat a shard", hint="list each shard once, canary first")
        res = RolloutResult(new=new, order=order)
        before: dict[int, dict | None] = {}
        retried0 = self.retried
        for s in order:
            t0 = time.monotonic()
            cur = self.get(s)
            if cur == new:
                res.already.append(s)
                continue
            if old is not ... and cur != old:
                res.stopped_at, res.reason = s, f"shard {s} holds {cur!r}, expected {old!r} or the new value"
                break
            if not self.switch(s, cur, new):
                # changed between our read and the CAS: someone else is writing this shard
                res.stopped_at, res.reason = s, f"shard {s} changed during the rollout (now {self.get(s)!r})"
                break
            res.longest_switch_s = max(res.longest_switch_s, time.monotonic() - t0)
            before[s] = cur
            res.switched.append(s)
            if check is not None:
                verdict = check(s, new)
                ok = bool(getattr(verdict, "ok", verdict))
                if not ok:
                    reasons = getattr(verdict, "reasons", None)
                    res.stopped_at, res.reason = s, f"check failed after shard {s}" + (f": {'; '.join(reasons)}" if reasons else "")
                    break
        if res.stopped_at is not None and rollback:
            for s in reversed(res.switched):
                if before[s] is not None and self.switch(s, new, before[s]):
                    res.rolled_back.append(s)
        res.retries = self.retried - retried0
        return res

    def watch(self, shard: int, callback: Callable[[dict | None, int], None], *, initial: bool = True) -> ShardWatch:
        """Call ``callback(value, revision)`` on every change of the shard's ``current`` (first with the
        value now, if ``initial``). Survives member failures (resumes after the last revision seen)."""
        return ShardWatch(self, self.key(shard), callback, initial=initial)

    # -- leases: replica liveness, writer lock -----------------------------
    def _grant(self, ttl: int):
        return self._retry(lambda _: self._client.lease(int(ttl)), f"grant a {ttl} s lease")

    def register_replica(self, shard: int, replica_id: str, ttl: int = 5, info: dict | None = None) -> Lease:
        """Announce a live replica: its key exists while the returned lease is kept alive (``stop()`` to leave)."""
        if ttl < 1:
            raise InputError(f"ttl is {ttl}", hint="use a lease ttl of at least 1 s (etcd raises smaller ones)")
        key = self.key(shard, "replicas", replica_id)
        lease = self._grant(ttl)
        data = _dump({"replica": replica_id, **(info or {})})
        self._retry(lambda _: self._client.put(key, data, lease=lease.id), f"register {key}")
        return Lease(self, lease.id, ttl, key)

    def live_replicas(self, shard: int) -> list[str]:
        """Ids of the replicas of ``shard`` whose lease is alive, sorted."""
        prefix = self.key(shard, "replicas", "")
        rows = self._retry(lambda _: list(self._client.get_prefix(prefix)), f"list {prefix}")
        return sorted(json.loads(v)["replica"] for v, _ in rows)

    def acquire_writer(self, shard: int, writer_id: str, ttl: int = 5, *, wait_s: float = 0.0) -> WriterLock:
        """Take the shard's single-writer lock; returns it with its fencing token.

        Raises :class:`WriterLockHeld` if another writer holds it (after waiting up to
        ``wait_s`` s for its lease to end).
        """
        key = self.key(shard, "writer")
        deadline = time.monotonic() + wait_s
        while True:
            lease = self._grant(ttl)
            data = _dump({"writer": writer_id, "lease": lease.id})

            def attempt(retrying: bool, lease=lease, data=data):
                ok, resp = self._client.transaction(
                    compare=[self._tx.create(key) == 0],
                    success=[self._tx.put(key, data, lease=lease.id), self._tx.get(key)],
                    failure=[self._tx.get(key)])
                kvs = resp[-1] if resp else []
                holder = _load(kvs[0][0]) if kvs else None
                token = kvs[0][1].create_revision if kvs else 0
                # a retry whose first attempt landed sees its own value: that is a success too
                return ok or (retrying and holder == {"writer": writer_id, "lease": lease.id}), holder, token

            ok, holder, token = self._retry(attempt, f"lock {key}")
            if ok:
                return WriterLock(self, lease.id, ttl, key, shard, writer_id, token)
            try:
                self._retry(lambda _: self._client.revoke_lease(lease.id), "revoke an unused lease")
            except BackendUnavailableError:
                pass  # expires by itself
            if time.monotonic() >= deadline:
                left = ""
                if holder and holder.get("lease"):
                    try:
                        left = f", its lease has ~{self._client.get_lease_info(holder['lease']).TTL} s left"
                    except Exception:  # noqa: BLE001
                        pass
                raise WriterLockHeld(f"shard {shard}'s writer lock is held by {holder and holder.get('writer')!r}{left}",
                                     hint="one writer per shard: stop that writer, or wait for its lease to expire "
                                          "(acquire_writer(..., wait_s=ttl))")
            time.sleep(min(0.25, max(deadline - time.monotonic(), 0.01)))
