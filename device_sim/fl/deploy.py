"""A real Flower deployment on loopback: one SuperLink, N SuperNodes, ``flwr run``.

:class:`LocalFederation` is a context manager that starts ``flower-superlink`` (deployment
mode, not ``--simulation``) and ``num_supernodes`` ``flower-supernode`` processes on free
127.0.0.1 ports, each with its own isolated ``FLWR_HOME``, and runs Flower apps on them
with ``flwr run <app_dir> <connection> --stream``. Everything is torn down on exit, also
on failure: process groups are killed, and so are the detached ``flower-superexec``
helpers Flower starts in their own sessions (found as descendants, and by a per-harness
environment tag). Any failure raises :class:`FederationError` with the logs' tails.

Nothing is downloaded: runtime dependency installation is disabled
(``--disable-runtime-dependency-installation`` on the SuperLink, the SuperNodes' default,
and ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``), and an *install guard* shadows
``python -m uv`` and the ``uv``/``pip`` executables for every process started here: a call
is recorded (:attr:`DeploymentResult.install_attempts`) and fails instead of installing.
The SuperNodes run the ClientApp from this environment (``device_sim`` from this checkout,
put first on ``PYTHONPATH``); the FAB built from ``app_dir`` only carries its config.

Transport security: TLS by default. Without ``tls=`` the harness makes a private CA and a
server certificate for ``127.0.0.1`` / ``localhost`` (:func:`make_loopback_certificates`,
keys ``0600``) in its work directory; the SuperLink serves every API over HTTPS with it
(``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``), the SuperNodes verify it
(``--root-certificates``; their own ClientAppIo API gets the same certificate) and so does
``flwr run`` (``root-certificates`` in the connection config). A real deployment passes its
own :class:`TLSFiles`. Plain HTTP (``--insecure`` everywhere) only with
``insecure_dev=True``, which prints a warning.

Flower 1.42 notes: every SuperLink API (Fleet, Control, ServerAppIo) is one HTTP port
(``--host/--port``); a SuperNode's ClientAppIo API is its own ``--port``; both spawn
``flower-superexec`` *by name*, so the venv's ``bin`` must be on ``PATH``.

Example (~15 s; the probe app's global arrays after one round are known)::

    >>> from device_sim.fl.deploy_app import expected_probe_value
    >>> with LocalFederation(num_supernodes=2) as fed:                        # doctest: +SKIP
    ...     res = fed.run(PROBE_APP_DIR, run_config={"result-path": "r.json"})
    ...     fed.tls.ca_cert.name                                     # the harness's own CA
    'ca.pem'
    >>> res.status                                                             # doctest: +SKIP
    'finished:completed'
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sim.fl.errors import FederationError

__all__ = [
    "LocalFederation",
    "DeploymentResult",
    "TLSFiles",
    "make_loopback_certificates",
    "FederationError",
    "PROBE_APP_DIR",
    "free_ports",
    "install_guard_env",
    "run_config_args",
]

#: The probe Flower app (``device_sim.fl.deploy_app``): a FedAvg round with a known result.
PROBE_APP_DIR = Path(__file__).resolve().parent / "apps" / "probe"
PERSONALIZE_APP_DIR = Path(__file__).resolve().parent / "apps" / "personalize"  # the real LoRA apps (deploy_app.personalize_*)

_CONNECTION = "edge-gr-local"  # the SuperLink connection name in the isolated FLWR_HOME
_TAG_VAR = "EDGE_GR_FL_DEPLOY_TAG"  # marks every process this harness starts
_INSTALL_LOG_MARKERS = ("Installing application dependencies", "uv sync")


@dataclass(frozen=True)
class DeploymentResult:
    """One ``flwr run`` on a :class:`LocalFederation`."""

    run_id: int  # the SuperLink's run id
    status: str  # `flwr ls` status, "finished:completed" on success
    seconds: float  # wall time of `flwr run --stream`
    output: str  # what `flwr run --stream` printed (the ServerApp's log)
    install_attempts: tuple[str, ...] = field(default=())  # guarded uv/pip calls (must be empty)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for the SuperLink's HTTPS: the CA that signed it, its certificate and key.

    For :class:`LocalFederation` the certificate must be valid for ``127.0.0.1`` (a SAN IP
    entry): the SuperNodes, ``flwr run`` and Flower's SuperExec helpers connect there.
    """

    ca_cert: Path  # PEM CA certificate (what clients trust)
    server_cert: Path  # PEM server certificate (chain) signed by ca_cert
    server_key: Path  # PEM private key of server_cert (keep it 0600)

    def check(self) -> TLSFiles:
        """The same files as absolute paths; :class:`FederationError` if one is missing."""
        out = TLSFiles(*(Path(p).expanduser().resolve() for p in (self.ca_cert, self.server_cert, self.server_key)))
        for name, p in zip(("ca_cert", "server_cert", "server_key"), (out.ca_cert, out.server_cert, out.server_key)):
            if not p.is_file():
                raise FederationError(f"TLS {name} {p} is not a file",
                                      hint="pass existing PEM files, or tls=None to generate loopback certificates")
        return out


def make_loopback_certificates(directory: str | Path, *, days: int = 7) -> TLSFiles:
    """A fresh private CA and a server certificate for ``127.0.0.1`` / ``localhost``.

    Written to ``directory`` as ``ca.pem``, ``server.pem`` and ``server.key`` (keys
    ``0600``; the CA key ``ca.key`` is kept only so the files are self-describing).
    ECDSA P-256, valid ``days`` days, ``serverAuth`` only: for loopback tests, never
    for a real deployment (pass your own :class:`TLSFiles` there).

    >>> import tempfile, stat
    >>> tls = make_loopback_certificates(tempfile.mkdtemp())
    >>> from cryptography import x509
    >>> cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    >>> san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    >>> [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], san.get_values_for_type(x509.DNSName)
    (['127.0.0.1'], ['localhost'])
    >>> oct(stat.S_IMODE(tls.server_key.stat().st_mode))
    '0o600'
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edge-gr loopback CA {uuid.uuid4().hex[:8]}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k: Any) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    _write_private(d / "ca.key", pem_key(ca_key))
    _write_private(d / "server.key", pem_key(key))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return TLSFiles(ca_cert=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by this user only (0600 from creation on)."""
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (the OS picks them).

    >>> ports = free_ports(3)
    >>> len(set(ports)) == 3 and all(1024 < p < 65536 for p in ports)
    True
    """
    from server.shard.engines import free_ports as _free  # one implementation (the engines' launcher)

    return _free(n, host)


def run_config_args(run_config: dict[str, Any]) -> list[str]:
    """``flwr run --run-config`` arguments, one per key, values as TOML.

    >>> run_config_args({"result-path": "out/a b.json", "min-nodes": 2, "lr": 0.5, "dp": True})
    ['--run-config', 'result-path="out/a b.json"', '--run-config', 'min-nodes=2', '--run-config', 'lr=0.5', '--run-config', 'dp=true']
    """
    args = []
    for key, value in run_config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, str):
            text = json.dumps(value)  # a TOML basic string for ordinary text
        else:
            raise FederationError(f"run config {key!r} has unsupported type {type(value).__name__}",
                                  hint="use bool, int, float or str values")
        args += ["--run-config", f"{key}={text}"]
    return args


def install_guard_env(guard_dir: str | Path, env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` in which dependency installation fails and is recorded.

    ``uv``, ``pip`` and ``pip3`` on ``PATH`` and ``python -m uv`` (Flower's runtime
    installer runs ``sys.executable -m uv sync``) resolve to stubs that append the
    command to ``guard_dir/attempts.log`` and exit 1.

    >>> import subprocess, sys, tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> env = install_guard_env(d, dict(os.environ))
    >>> subprocess.run([sys.executable, "-m", "uv", "sync"], env=env).returncode
    1
    >>> subprocess.run("pip install torch", shell=True, env=env).returncode
    1
    >>> (d / "attempts.log").read_text().splitlines()
    ['python -m uv sync', 'pip install torch']
    """
    guard = Path(guard_dir).resolve()
    record = guard / "attempts.log"
    (guard / "bin").mkdir(parents=True, exist_ok=True)
    (guard / "py" / "uv").mkdir(parents=True, exist_ok=True)
    for tool in ("uv", "pip", "pip3"):
        script = guard / "bin" / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{record}"\nexit 1\n')
        script.chmod(0o755)
    (guard / "py" / "uv" / "__init__.py").write_text("")
    (guard / "py" / "uv" / "__main__.py").write_text(
        "import sys\n"
        f"open({str(record)!r}, 'a').write('python -m uv ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        "sys.exit(1)\n")
    out = dict(env)
    out["PATH"] = os.pathsep.join(p for p in [str(guard / "bin"), env.get("PATH", "")] if p)
    out["PYTHONPATH"] = os.pathsep.join(p for p in [str(guard / "py"), env.get("PYTHONPATH", "")] if p)
    return out


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


class LocalFederation:
    """A SuperLink and ``num_supernodes`` SuperNodes on loopback (context manager).

    Args:
        num_supernodes: SuperNodes to start (>= 2 for a real federation); SuperNode ``i``
            gets ``--node-config "partition-id=i num-partitions=N"``.
        workdir: where FLWR_HOMEs, logs and the install guard live (default: a fresh
            temporary directory, removed on exit; a given one is kept).
        startup_timeout: seconds for the SuperLink to listen and all SuperNodes to
            register.
        node_config: extra ``key=value`` node config for every SuperNode.
        tls: the SuperLink's certificate files (:class:`TLSFiles`, for a real
            certificate); default: a loopback CA and certificate generated in ``workdir``.
        insecure_dev: plain HTTP everywhere (Flower's ``--insecure``), for development
            only: prints a warning, and refuses ``tls``.

    >>> fed = LocalFederation(num_supernodes=2)
    >>> fed.num_supernodes, fed.superlink_address is None, fed.tls  # nothing starts before `with`
    (2, True, None)
    """

    def __init__(self, num_supernodes: int = 2, *, workdir: str | Path | None = None,
                 startup_timeout: float = 60.0, node_config: dict[str, Any] | None = None,
                 tls: TLSFiles | None = None, insecure_dev: bool = False):
        if num_supernodes < 1:
            raise FederationError(f"num_supernodes must be >= 1, got {num_supernodes}", hint="pass e.g. 2")
        if insecure_dev and tls is not None:
            raise FederationError("both tls= and insecure_dev=True were given",
                                  hint="drop insecure_dev to use the certificates, or drop tls for plain HTTP (development)")
        self.insecure_dev = insecure_dev
        self._given_tls = tls.check() if tls is not None else None
        self.tls: TLSFiles | None = None  # the certificates in use (set on start; None if insecure_dev)
        self.num_supernodes = num_supernodes
        self.startup_timeout = startup_timeout
        self.node_config = dict(node_config or {})
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self.superlink_address: str | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        self._files: list[Any] = []  # open log files
        self._tag = uuid.uuid4().hex
        self._env: dict[str, str] = {}
        self._bin = Path(sys.executable).parent  # flower-superlink, flwr, flower-superexec

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalFederation:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        for tool in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr"):
            if not (self._bin / tool).exists():
                raise FederationError(f"{tool} not found next to {sys.executable}",
                                      hint="run from the edge-gr venv, which has flwr==1.42.0 installed")
        self.workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="edge_gr_fl_deploy_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._env = self._make_env()
        if self.insecure_dev:
            print("edge-gr: WARNING: LocalFederation(insecure_dev=True): the SuperLink, SuperNodes and `flwr run` "
                  "talk plain HTTP (Flower --insecure): model updates and control calls are unencrypted and "
                  "unauthenticated. Development only; drop insecure_dev to use TLS.", file=sys.stderr, flush=True)
            self.tls = None
        else:
            self.tls = self._given_tls or make_loopback_certificates(self.workdir / "tls")
        link_port, *node_ports = free_ports(1 + self.num_supernodes)
        self.superlink_address = f"127.0.0.1:{link_port}"

        self._write_cli_config()
        self._spawn("superlink", [
            "flower-superlink", *self._server_tls_args(), "--disable-runtime-dependency-installation",
            "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(link_port),
        ])
        self._wait(lambda: _listening(link_port), "the SuperLink to listen on " + self.superlink_address)
        for i, port in enumerate(node_ports):
            cfg = {"partition-id": i, "num-partitions": self.num_supernodes, **self.node_config}
            self._spawn(f"supernode-{i}", [
                "flower-supernode", *self._client_tls_args(), *self._server_tls_args(dev_flag=False),
                "--superlink", self.superlink_address, "--host", "127.0.0.1", "--port", str(port),
                "--node-config", " ".join(f"{k}={_node_value(v)}" for k, v in cfg.items()),
            ])
        self._wait(lambda: self.log("superlink").count("Activated node_id") >= self.num_supernodes,
                   f"{self.num_supernodes} SuperNodes to register with the SuperLink")

    def close(self) -> None:
        """Kill every process started here (and their detached helpers); idempotent."""
        victims: dict[int, Any] = {}
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil ships with ray/flwr[simulation]
            psutil = None
        if psutil is not None:
            for proc in self._procs.values():
                try:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        victims[child.pid] = child
                except psutil.NoSuchProcess:
                    pass
        for proc in self._procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)  # each was started in its own session
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in self._procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if psutil is not None:
            victims.update(_tagged_processes(psutil, self._tag))
            for p in victims.values():
                try:
                    p.terminate()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(list(victims.values()), timeout=5)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        for f in self._files:
            f.close()
        self._files = []
        if self._given_workdir is None and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def pids(self) -> list[int]:
        """PIDs of the SuperLink and SuperNode processes (for checks after exit)."""
        return [p.pid for p in self._procs.values()]

    # ------------------------------------------------------------------ running apps

    def run(self, app_dir: str | Path = PROBE_APP_DIR, *, run_config: dict[str, Any] | None = None,
            timeout: float = 120.0) -> DeploymentResult:
        """``flwr run app_dir --stream`` on this federation; raise unless it completes.

        Raises :class:`FederationError` (with the tails of the run's output and of every
        process log) if ``flwr run`` fails or exceeds ``timeout`` seconds, if the run does
        not end as ``finished:completed``, or if anything tried to install dependencies.
        """
        if self.superlink_address is None:
            raise FederationError("the federation is not running", hint="use `with LocalFederation(...) as fed:`")
        app = Path(app_dir).resolve()
        if not (app / "pyproject.toml").is_file():
            raise FederationError(f"{app} has no pyproject.toml", hint="pass a Flower app directory")
        cmd = [str(self._bin / "flwr"), "run", str(app), _CONNECTION, "--stream", *run_config_args(run_config or {})]
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, env=self._env, cwd=self.workdir, capture_output=True, text=True,
                                  timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            raise FederationError(f"`flwr run` did not finish within {timeout:.0f} s\n{self._report(out)}",
                                  hint="raise timeout, or read the logs above for a stuck ServerApp/ClientApp") from None
        seconds = time.monotonic() - start
        out = done.stdout + done.stderr
        m = re.search(r"Successfully started run (\d+)", out)
        if done.returncode != 0 or m is None:
            raise FederationError(f"`flwr run` failed (exit {done.returncode})\n{self._report(out)}",
                                  hint="check the app's pyproject.toml and the SuperLink log above")
        run_id = int(m.group(1))
        status = self._status(run_id)
        attempts = self.install_attempts()
        if attempts:
            raise FederationError(f"a dependency installation was attempted: {attempts}\n{self._report(out)}",
                                  hint="keep runtime dependency installation disabled")
        if status != "finished:completed":
            raise FederationError(f"run {run_id} ended as {status!r}\n{self._report(out)}",
                                  hint="read the ServerApp/ClientApp errors above")
        return DeploymentResult(run_id=run_id, status=status, seconds=seconds, output=out,
                                install_attempts=attempts)

    def log(self, name: str) -> str:
        """The log so far of process ``name`` ("superlink", "supernode-0", ...)."""
        path = self._logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def install_attempts(self) -> tuple[str, ...]:
        """Dependency installations tried by any process here (guard records + log lines)."""
        found: list[str] = []
        if self.workdir is not None and (self.workdir / "guard" / "attempts.log").exists():
            found += (self.workdir / "guard" / "attempts.log").read_text().splitlines()
        for name in self._logs:
            found += [f"{name}: {line.strip()}" for line in self.log(name).splitlines()
                      if any(mark in line for mark in _INSTALL_LOG_MARKERS)]
        return tuple(found)

    # ------------------------------------------------------------------ internals

    def _make_env(self) -> dict[str, str]:
        assert self.workdir is not None
        root = Path(__file__).resolve().parents[2]  # this checkout (shadows an editable install)
        base = dict(os.environ)
        base["PATH"] = os.pathsep.join(p for p in [str(self._bin), base.get("PATH", "")] if p)
        base["PYTHONPATH"] = os.pathsep.join(p for p in [str(root), base.get("PYTHONPATH", "")] if p)
        env = install_guard_env(self.workdir / "guard", base)  # guard stubs go first
        env.update({
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            _TAG_VAR: self._tag,
        })
        return env

    def _server_tls_args(self, *, dev_flag: bool = True) -> list[str]:
        """A server's TLS flags (SuperLink; SuperNode ClientAppIo with ``dev_flag=False``)."""
        if self.tls is None:
            return ["--insecure"] if dev_flag else []
        return ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                "--ssl-keyfile", str(self.tls.server_key)]

    def _client_tls_args(self) -> list[str]:
        """A SuperNode's flags for its connection to the SuperLink."""
        return ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca_cert)]

    def _write_cli_config(self) -> None:
        assert self.workdir is not None
        home = self.workdir / "cli-home"
        home.mkdir(parents=True, exist_ok=True)
        trust = "insecure = true\n" if self.tls is None else f"root-certificates = {json.dumps(str(self.tls.ca_cert))}\n"
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{_CONNECTION}"\n\n'
            f'[superlink.{_CONNECTION}]\naddress = "{self.superlink_address}"\n{trust}')
        self._env["FLWR_HOME"] = str(home)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        assert self.workdir is not None
        home = self.workdir / f"{name}-home"  # own FLWR_HOME: FAB installs don't race
        home.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        f = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self._files.append(f)
        self._logs[name] = log_path
        self._procs[name] = subprocess.Popen(
            [str(self._bin / cmd[0]), *cmd[1:]], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**self._env, "FLWR_HOME": str(home)}, cwd=self.workdir, start_new_session=True)

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not ready():
            dead = [n for n, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise FederationError(f"{', '.join(dead)} exited while waiting for {what}\n{self._report('')}",
                                      hint="read the process logs above (port in use? flwr version?)")
            if time.monotonic() > deadline:
                raise FederationError(f"timed out after {self.startup_timeout:.0f} s waiting for {what}\n"
                                      f"{self._report('')}", hint="raise startup_timeout or read the logs above")
            time.sleep(0.2)

    def _status(self, run_id: int) -> str:
        cmd = [str(self._bin / "flwr"), "ls", _CONNECTION, "--run-id", str(run_id), "--format", "json"]
        done = subprocess.run(cmd, env=self._env, cwd=self.workdir, capture_output=True, text=True, timeout=60)
        try:
            payload = json.loads(done.stdout[done.stdout.index("{"):])
            return str(payload["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            raise FederationError(f"cannot read the status of run {run_id}: {done.stdout[-500:]}{done.stderr[-500:]}",
                                  hint="check that the SuperLink is still running") from None

    def _report(self, run_output: str) -> str:
        parts = [f"--- flwr run (tail) ---\n{_tail(run_output)}"] if run_output else []
        parts += [f"--- {name}.log (tail) ---\n{_tail(self.log(name))}" for name in self._logs]
        return "\n".join(parts)


def _node_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tagged_processes(psutil: Any, tag: str) -> dict[int, Any]:
    """Processes of this user whose environment carries this harness's tag (orphans
    of detached helpers included)."""
    found = {}
    me = os.getuid()
    for p in psutil.process_iter(["pid", "uids"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != me or p.pid == os.getpid():
                continue
            if p.environ().get(_TAG_VAR) == tag:
                found[p.pid] = p
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
