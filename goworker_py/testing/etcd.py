"""Real etcd servers for tests: one (:class:`EtcdServer`) or a 3-member cluster
(:class:`EtcdCluster`), with the faults of production.

Each server is Debian's ``/usr/bin/etcd`` (package ``etcd-server``, 3.4; or ``ETCD_BINARY``) in a
child process on free loopback client and peer ports, with a temp data dir and a log file:

- :meth:`EtcdServer.kill` / :meth:`~EtcdServer.stop` / :meth:`~EtcdServer.restart` take it down;
  a restart keeps the ports and the data dir, so leases and revisions survive (etcd restores
  leases with a fresh TTL).
- :meth:`EtcdServer.pause` sends ``SIGSTOP``: connections stay open but nothing answers — a
  partition, as clients see it. :meth:`~EtcdServer.resume` sends ``SIGCONT``.

Heartbeats are 50 ms and elections 500 ms, so etcd's minimum lease TTL is one second and a
cluster elects a new leader in about a second. :meth:`EtcdServer.request` posts JSON to the
gateway with the standard library (no client library needed): enable auth, revoke a lease,
compact the history. Every process started here is killed, and its temp dir removed, by
``close()`` and at interpreter exit for anything left open.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from goworker_py.testing.errors import EtcdNotFound, EtcdStartError, ZooKeeperError
from goworker_py.testing.network import free_ports
from goworker_py.testing.zookeeper import _die_with_parent_prefix, _wait_for_threads

ETCD_INSTALL_HINT = (
    "etcd is needed to run the etcd backend tests. Provide one of:\n"
    "  1. Debian/Ubuntu, as root: apt-get install -y etcd-server\n"
    "     (or: python -m goworker_py.testing ensure-etcd)\n"
    "  2. an etcd 3.4+ release binary (https://github.com/etcd-io/etcd/releases), with\n"
    "     ETCD_BINARY=/path/to/etcd"
)
DEBIAN_ETCD = Path("/usr/bin/etcd")
HEARTBEAT_MS = 50
ELECTION_MS = 500

_LIVE: set[EtcdServer] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.close()


def find_etcd(environ: Mapping[str, str] | None = None) -> str:
    """The etcd binary: ``ETCD_BINARY``, else ``etcd`` on the ``PATH``, else Debian's; or raise
    :class:`EtcdNotFound` saying what to install."""
    env = os.environ if environ is None else environ
    if explicit := env.get("ETCD_BINARY", "").strip():
        if not os.access(explicit, os.X_OK):
            raise EtcdNotFound(f"ETCD_BINARY={explicit} is not an executable.\n{ETCD_INSTALL_HINT}")
        return explicit
    found = shutil.which("etcd", path=env.get("PATH"))
    if found:
        return found
    if DEBIAN_ETCD.is_file() and os.access(DEBIAN_ETCD, os.X_OK):
        return str(DEBIAN_ETCD)
    raise EtcdNotFound(f"No etcd binary found.\n{ETCD_INSTALL_HINT}")


def apt_install_etcd() -> None:
    """``apt-get update`` then ``apt-get install -y etcd-server`` (raises on failure)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "etcd-server"], check=True, env=env)


def _make_certificates(directory: Path) -> None:
    """A test CA (``ca.pem``) and a server certificate for 127.0.0.1 signed by it
    (``server.pem``, ``server-key.pem``), with the ``openssl`` command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EtcdNotFound("etcd over TLS needs the `openssl` command (apt-get install openssl)")
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = ["-subj", "/CN=goworker test CA", "-keyout", "ca-key.pem", "-out", "ca.pem"]
    server = ["-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem", "-out", "server.csr"]
    sign = ["-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial"]
    steps = [
        [openssl, "req", "-x509", *key, "-days", "2", *ca],
        [openssl, "req", *key, *server],
        [openssl, "x509", "-req", *sign, "-days", "2", "-extfile", "san.cnf", "-out", "server.pem"],
    ]
    for step in steps:
        subprocess.run(step, cwd=directory, check=True, capture_output=True)


class EtcdServer:
    """One etcd process for tests. ``stop()`` keeps the data dir (``start()`` resumes it);
    ``close()`` also removes it. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        *,
        name: str = "goworker",
        client_port: int | None = None,
        peer_port: int | None = None,
        binary: str | None = None,
        start_timeout: float = 30.0,
        tls: bool = False,
        _initial_cluster: str | None = None,
    ) -> None:
        self.name = name
        #: Serve clients over TLS, with a certificate of a test CA (:attr:`ca_file`).
        self.tls = tls
        self.start_timeout = start_timeout
        self.last_start_seconds: float | None = None
        self._binary = binary
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        self.client_port = client_port
        self.peer_port = peer_port
        self._initial_cluster = _initial_cluster or f"{name}={self.peer_url}"
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._final_log = ""
        self._lock = threading.RLock()

    # -- identity --------------------------------------------------------------------------------

    @property
    def hosts(self) -> str:
        """``"127.0.0.1:<client port>"``: what ``DiscoveryConfig(hosts=...)`` takes."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client port>`` (``https`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.hosts}"

    @property
    def ca_file(self) -> str:
        """With TLS: the test CA's certificate, what clients trust (``DiscoveryConfig.ca``)."""
        if self._workdir is None or not self.tls:
            raise ZooKeeperError(f"{self!r} has no CA (not started, or without TLS)")
        return str(self._workdir / "ca.pem")

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def data_dir(self) -> Path | None:
        """The temp dir (``None`` before the first start and after ``close()``)."""
        return self._workdir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def is_running(self) -> bool:
        """True while the process is alive (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<EtcdServer {self.name} {self.hosts} {state}>"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> EtcdServer:
        """Start the process (no-op if running); with ``wait``, until it serves requests."""
        with self._lock:
            if self.is_running:
                return self
            if self._binary is None:
                self._binary = find_etcd()
            if self._workdir is None:
                self._workdir = Path(tempfile.mkdtemp(prefix="goworker-etcd-"))
                if self.tls:
                    _make_certificates(self._workdir)
            with _LIVE_LOCK:
                _LIVE.add(self)
            began = time.monotonic()
            self._spawn()
            if wait:
                self.wait_until_serving()
                self.last_start_seconds = time.monotonic() - began
            return self

    def _spawn(self) -> None:
        assert self._workdir is not None and self._binary is not None
        cmd = [
            self._binary,
            f"--name={self.name}",
            f"--data-dir={self._workdir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self._initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=goworker-test",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        if self.tls:
            cmd += [
                f"--cert-file={self._workdir / 'server.pem'}",
                f"--key-file={self._workdir / 'server-key.pem'}",
            ]
        # Dies with us even on SIGKILL (see testing.zookeeper); only from the main thread.
        if threading.current_thread() is threading.main_thread():
            cmd = [*_die_with_parent_prefix(), *cmd]
        with open(self.log_path, "ab") as log:
            log.write(f"---- goworker_py.testing: starting etcd {self.hosts} ----\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._paused = False

    def wait_until_serving(self, timeout: float | None = None) -> None:
        """Block until ``/health`` says healthy: a leader is there and a read goes through (also
        with authentication enabled)."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            if not self.is_running:
                raise EtcdStartError(
                    f"etcd {self.name} on {self.hosts} exited during start-up:\n{self.log_tail(60)}"
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise EtcdStartError(
                    f"etcd {self.name} on {self.hosts} not serving after {limit}s:\n"
                    f"{self.log_tail(60)}"
                )
            time.sleep(0.02)

    def healthy(self) -> bool:
        """True when ``GET /health`` answers ``{"health": "true"}`` within a second."""
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1.0, context=self._ssl_context()
            ) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """``SIGTERM`` (``SIGKILL`` after ``timeout``); keeps the data dir."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._paused = False

    def kill(self) -> None:
        """``SIGKILL`` (a crash); keeps the data dir."""
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            self._paused = False

    def restart(self, down_for: float = 0.0, *, kill: bool = False) -> None:
        """Stop (or kill), stay down ``down_for`` seconds, start on the same ports and data."""
        with self._lock:
            self.kill() if kill else self.stop()
            time.sleep(down_for)
            self.start()

    def pause(self) -> None:
        """``SIGSTOP``: connections stay open, nothing answers (returns once every thread is
        stopped)."""
        with self._lock:
            if self._proc is None or not self.is_running:
                raise ZooKeeperError(f"{self!r} is not running: nothing to pause")
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True
            _wait_for_threads(self._proc.pid, stopped=True)

    def resume(self) -> None:
        """``SIGCONT``."""
        with self._lock:
            if self._proc is not None and self.is_running:
                self._proc.send_signal(signal.SIGCONT)
                _wait_for_threads(self._proc.pid, stopped=False)
            self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """:meth:`pause` on entry, :meth:`resume` on exit."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        """Kill the process and delete the temp dir (the log is kept in memory)."""
        with self._lock:
            self.kill()
            self._proc = None
            if self._workdir is not None:
                self._final_log = self.log_text()
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def __enter__(self) -> EtcdServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the gateway -----------------------------------------------------------------------------

    def request(
        self,
        path: str,
        body: dict[str, Any],
        *,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; the JSON reply (``urllib.error.HTTPError`` when
        etcd refuses). Keys and values in ``body`` are base64, as the gateway takes them."""
        request = urllib.request.Request(
            f"{self.url}/v3/{path}",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                **({"Authorization": token} if token else {}),
            },
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=timeout, context=self._ssl_context()) as reply:
            data: dict[str, Any] = json.loads(reply.read() or b"{}")
        return data

    def _ssl_context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_file) if self.tls else None

    def enable_auth(self, root_password: str) -> None:
        """Create the ``root`` user with ``root_password``, grant it the root role, enable
        authentication: from then on every request needs a user."""
        self.request("auth/user/add", {"name": "root", "password": root_password})
        self.request("auth/user/grant", {"user": "root", "role": "root"})
        self.request("auth/enable", {})

    def revoke_lease(self, lease_id: str) -> None:
        """Revoke the lease with hex id ``lease_id`` (what expiry does, without the wait)."""
        self.request("lease/revoke", {"ID": str(int(lease_id, 16))})

    def compact(self) -> int:
        """Compact the history up to the current revision; returns that revision."""
        header = self.request("kv/range", {"key": "AA=="}).get("header", {})
        revision = int(header.get("revision", 0))
        self.request("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    # -- logs ------------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self._workdir is None:
            raise ZooKeeperError(f"{self!r} has no log file (not started, or closed)")
        return self._workdir / "etcd.log"

    def log_text(self) -> str:
        if self._workdir is None:
            return self._final_log
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def dump_log(self, lines: int = 200, file: TextIO | None = None) -> None:
        """Print the log tail (to stderr by default)."""
        out = sys.stderr if file is None else file
        print(f"---- etcd {self.name} {self.hosts}: last {lines} log lines ----", file=out)
        print(self.log_tail(lines), file=out)


class EtcdCluster:
    """``size`` etcd members forming one cluster (for losing a member, or the leader)."""

    def __init__(self, size: int = 3, *, binary: str | None = None) -> None:
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(
            f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        self.servers = [
            EtcdServer(
                name=name,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                binary=binary,
                _initial_cluster=initial,
            )
            for i, name in enumerate(names)
        ]

    @property
    def hosts(self) -> str:
        """Every member's client address, comma-separated."""
        return ",".join(server.hosts for server in self.servers)

    def start(self) -> EtcdCluster:
        """Start every member, then wait until the cluster serves (it needs a quorum)."""
        try:
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_until_serving()
        except BaseException:
            self.close()
            raise
        return self

    def leader(self) -> EtcdServer:
        """The member that currently leads (raises if none answers as leader)."""
        for server in self.servers:
            if not server.is_running or server.is_paused:
                continue
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                status = server.request("maintenance/status", {}, timeout=1.0)
                if status.get("leader") == status.get("header", {}).get("member_id"):
                    return server
        raise ZooKeeperError(f"no member of {self.hosts} leads")

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
