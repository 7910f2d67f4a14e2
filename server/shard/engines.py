"""Start and stop real etcd and NATS JetStream clusters on loopback (tests, benchmarks, local runs).

No home-made consensus: these are the Debian binaries (``apt-get install etcd-server
etcd-client nats-server``) run as subprocesses, each member with its own temp data dir and
free loopback ports (picked by binding port 0). Both classes are context managers that
always kill their processes on exit, also when the body raised.

**etcd** member ``i`` of ``n`` (what :meth:`EtcdCluster.command` runs; on several machines,
replace ``127.0.0.1`` by each machine's address and keep the same ``--initial-cluster``)::

    etcd --name m0 --data-dir /var/lib/edge-gr/etcd-m0 \\
         --listen-client-urls http://127.0.0.1:C0 --advertise-client-urls http://127.0.0.1:C0 \\
         --listen-peer-urls http://127.0.0.1:P0 --initial-advertise-peer-urls http://127.0.0.1:P0 \\
         --initial-cluster m0=http://127.0.0.1:P0,m1=http://127.0.0.1:P1,m2=http://127.0.0.1:P2 \\
         --initial-cluster-token edge-gr --initial-cluster-state new \\
         --heartbeat-interval 100 --election-timeout 1000

**NATS** server ``i`` (JetStream on, clustered; what :meth:`NatsCluster.command` runs)::

    nats-server -n n0 -a 127.0.0.1 -p C0 -m M0 -js -sd /var/lib/edge-gr/nats-n0 \\
         --cluster_name edge-gr --cluster nats://127.0.0.1:R0 \\
         --routes nats://127.0.0.1:R0,nats://127.0.0.1:R1,nats://127.0.0.1:R2

Health is read over HTTP with the standard library only (etcd's ``/health`` and
``/v3/maintenance/status`` gateway, NATS' monitoring ``/healthz`` and ``/jsz``), so this
module needs neither client library.

>>> EtcdCluster(3, "etcd-data").command(0)[:3]  # nothing is started or created
['etcd', '--name', 'm0']
>>> with EtcdCluster(3) as etcd:  # doctest: +SKIP
...     etcd.kill(etcd.leader()); etcd.wait_healthy()
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from edge_gr.errors import BackendUnavailableError, EdgeGRError

__all__ = ["EtcdCluster", "NatsCluster", "free_ports", "find_binary", "INSTALL_HINT"]

INSTALL_HINT = "apt-get install etcd-server etcd-client nats-server"


def find_binary(name: str) -> str:
    """Path of ``name`` (also looked for in /usr/sbin, which a non-root PATH lacks), or a clear error."""
    for path in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if path and os.access(path, os.X_OK):
            return path
    raise BackendUnavailableError(f"the {name!r} binary is not installed", hint=INSTALL_HINT)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free TCP ports (bound to port 0 at once, so they differ, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http(url: str, data: bytes | None = None, timeout: float = 1.0) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def _wait(pred: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (OSError, ValueError, urllib.error.URLError):
            pass  # not up yet
        time.sleep(0.1)
    raise EdgeGRError(f"{what} not healthy after {timeout:.0f} s; last log lines:\n{logs()}",
                      hint="check the log above (a port taken by another process, a stale data dir)")


class _Cluster(abc.ABC):
    """Shared process handling: ``n`` members, SIGKILL / restart, cleanup on exit."""

    binary_name = ""

    def __init__(self, n: int, workdir: str | os.PathLike | None, start_timeout: float):
        if n < 1:
            raise EdgeGRError(f"a cluster needs at least one member, got n={n}", hint="pass n >= 1 (3 tolerates one failure)")
        self.n, self.start_timeout = n, float(start_timeout)
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.procs: list[subprocess.Popen | None] = [None] * n
        self._logs: list = [None] * n

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self):
        """Start every member and wait until the cluster is healthy (at most ``start_timeout`` s)."""
        self._binary = find_binary(self.binary_name)  # before creating anything: a missing binary is the common failure
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"edge-gr-{self.binary_name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            self._spawn(i)
        self.wait_healthy()
        return self

    def stop(self) -> None:
        """SIGKILL every member (their data dirs are throw-away) and remove a temp workdir."""
        for i in range(self.n):
            self._reap(i)
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _spawn(self, i: int) -> None:
        cmd = self.command(i)
        cmd[0] = self._binary
        log = open(self.workdir / f"{self._member(i)}.log", "ab")
        self._logs[i] = log
        # own process group: a Ctrl-C of the test run is not delivered twice, and kill() hits only this member
        self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def _reap(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
        if p is not None:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._logs[i] is not None:
            self._logs[i].close()
        self.procs[i], self._logs[i] = None, None

    def alive(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def live(self) -> list[int]:
        """Indices of the members whose process runs."""
        return [i for i in range(self.n) if self.alive(i)]

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (a crash: no clean shutdown, no goodbye to its peers)."""
        self._reap(i)

    def restart(self, i: int, *, wait: bool = True) -> None:
        """Start member ``i`` again on its old ports and data dir (it rejoins and catches up)."""
        self._reap(i)
        self._spawn(i)
        if wait:
            self.wait_healthy()

    def logs(self, i: int | None = None, lines: int = 20) -> str:
        out = []
        for j in ([i] if i is not None else range(self.n)):
            try:
                text = (self.workdir / f"{self._member(j)}.log").read_text(errors="replace").splitlines()[-lines:]
            except (OSError, TypeError):
                text = []
            out.append(f"--- {self._member(j)} ---\n" + "\n".join(text))
        return "\n".join(out)

    # -- per engine --------------------------------------------------------
    @abc.abstractmethod
    def _member(self, i: int) -> str:
        """Defined by each engine."""

    @abc.abstractmethod
    def command(self, i: int) -> list[str]:
        """Defined by each engine."""

    @abc.abstractmethod
    def wait_healthy(self, timeout: float | None = None) -> None:
        """Defined by each engine."""


class EtcdCluster(_Cluster):
    """An ``n``-member etcd cluster on ``host``: ``.endpoints`` (``host:port``) for clients, ``.urls`` (http).

    ``heartbeat_ms`` / ``election_ms`` are etcd's defaults; on a loaded 2-core machine, do not
    go much lower, or elections fire spuriously.
    """

    binary_name = "etcd"

    def __init__(self, n: int = 3, workdir: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 heartbeat_ms: int = 100, election_ms: int = 1000, start_timeout: float = 20.0, token: str = "edge-gr"):
        super().__init__(n, workdir, start_timeout)
        self.host, self.heartbeat_ms, self.election_ms, self.token = host, heartbeat_ms, election_ms, token
        ports = free_ports(2 * n, host)
        self.client_ports, self.peer_ports = ports[:n], ports[n:]
        self._member_ids: dict[int, str] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.host}:{p}" for p in self.client_ports]

    @property
    def urls(self) -> list[str]:
        return [f"http://{e}" for e in self.endpoints]

    def _member(self, i: int) -> str:
        return f"m{i}"

    def command(self, i: int) -> list[str]:
        h = self.host
        cluster = ",".join(f"m{j}=http://{h}:{p}" for j, p in enumerate(self.peer_ports))
        data = str((self.workdir or Path("<workdir>")) / f"m{i}.etcd")
        return ["etcd", "--name", f"m{i}", "--data-dir", data,
                "--listen-client-urls", f"http://{h}:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://{h}:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://{h}:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://{h}:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-token", self.token,
                # ignored once the data dir exists, so a restarted member just rejoins
                "--initial-cluster-state", "new",
                "--heartbeat-interval", str(self.heartbeat_ms), "--election-timeout", str(self.election_ms),
                "--logger", "zap", "--log-level", "warn"]

    def status(self, i: int, timeout: float = 1.0) -> dict:
        """Member ``i``'s ``/v3/maintenance/status`` (``header.member_id``, ``leader``, ``raftTerm`` ...)."""
        return _http(f"{self.urls[i]}/v3/maintenance/status", b"{}", timeout)

    def _healthy(self) -> bool:
        live = self.live()
        if len(live) * 2 <= self.n:
            return False  # no quorum can exist; wait_healthy's timeout says so
        for i in live:
            # /health is a quorum read: true only when this member sees a leader that answers
            if _http(f"{self.urls[i]}/health").get("health") not in ("true", True):
                return False
        return True

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until every live member answers ``/health`` true (a leader and a quorum)."""
        _wait(self._healthy, timeout or self.start_timeout, f"etcd cluster ({len(self.live())}/{self.n} live)", self.logs)

    def leader(self, timeout: float = 10.0) -> int:
        """Index of the current leader (asked of the live members; waits out an election)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids, leader = {}, None
            for i in self.live():
                try:
                    st = self.status(i)
                except (OSError, ValueError, urllib.error.URLError):
                    continue
                ids[st["header"]["member_id"]] = i
                leader = st.get("leader") or leader
            if leader in ids:
                return ids[leader]
            time.sleep(0.1)
        raise EdgeGRError(f"no etcd leader within {timeout:.0f} s", hint="check that a majority of members is running")


class NatsCluster(_Cluster):
    """An ``n``-server NATS cluster with JetStream: ``.urls`` (``nats://host:port``), ``.monitor_urls`` (http)."""

    binary_name = "nats-server"

    def __init__(self, n: int = 3, workdir: str | os.PathLike | None = None, *, host: str = "127.0.0.1",
                 cluster_name: str = "edge-gr", start_timeout: float = 30.0):
        super().__init__(n, workdir, start_timeout)
        self.host, self.cluster_name = host, cluster_name
        ports = free_ports(3 * n, host)
        self.client_ports, self.route_ports, self.monitor_ports = ports[:n], ports[n:2 * n], ports[2 * n:]

    @property
    def urls(self) -> list[str]:
        return [f"nats://{self.host}:{p}" for p in self.client_ports]

    endpoints = urls

    @property
    def monitor_urls(self) -> list[str]:
        return [f"http://{self.host}:{p}" for p in self.monitor_ports]

    def _member(self, i: int) -> str:
        return f"n{i}"

    def server_name(self, i: int) -> str:
        return f"n{i}"

    def command(self, i: int) -> list[str]:
        h = self.host
        store = str((self.workdir or Path("<workdir>")) / f"n{i}.js")
        cmd = ["nats-server", "-n", f"n{i}", "-a", h, "-p", str(self.client_ports[i]), "-m", str(self.monitor_ports[i]),
               "-js", "-sd", store]
        if self.n > 1:
            routes = ",".join(f"nats://{h}:{p}" for p in self.route_ports)
            cmd += ["--cluster_name", self.cluster_name, "--cluster", f"nats://{h}:{self.route_ports[i]}", "--routes", routes]
        return cmd

    def jsz(self, i: int, **params: str) -> dict:
        """Server ``i``'s JetStream monitoring page ``/jsz`` (``meta_cluster.leader``, streams with ``streams='true'``)."""
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return _http(f"{self.monitor_urls[i]}/jsz" + (f"?{q}" if q else ""))

    def _healthy(self) -> bool:
        live = self.live()
        if len(live) * 2 <= self.n:
            return False
        for i in live:
            if _http(f"{self.monitor_urls[i]}/healthz").get("status") != "ok":
                return False
            if self.n > 1 and not (self.jsz(i).get("meta_cluster") or {}).get("leader"):
                return False  # JetStream's meta group has no leader yet: stream creation would fail
        return True

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Block until every live server is healthy and (clustered) sees a JetStream meta leader."""
        _wait(self._healthy, timeout or self.start_timeout, f"NATS cluster ({len(self.live())}/{self.n} live)", self.logs)

    def leader(self, stream: str | None = None, timeout: float = 10.0) -> int:
        """Index of the JetStream leader of ``stream`` (its raft group), or of the meta group if ``stream`` is None."""
        names = {self.server_name(i): i for i in range(self.n)}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in self.live():
                try:
                    if stream is None:
                        name = (self.jsz(i).get("meta_cluster") or {}).get("leader")
                    else:
                        name = None
                        for acc in self.jsz(i, accounts="true", streams="true").get("account_details") or []:
                            for st in acc.get("stream_detail") or []:
                                if st.get("name") == stream:
                                    name = (st.get("cluster") or {}).get("leader")
                except (OSError, ValueError, urllib.error.URLError):
                    continue
                if name in names and self.alive(names[name]):
                    return names[name]
            time.sleep(0.1)
        raise EdgeGRError(f"no JetStream leader for {stream or 'the meta group'} within {timeout:.0f} s",
                          hint="check that a majority of servers is running and the stream exists")
