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

import contextlib
import json
import os
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from goworker_py.testing.certificates import CA_FILE, CERT_FILE, KEY_FILE, make_test_certificates
from goworker_py.testing.errors import EtcdNotFound, EtcdStartError, ZooKeeperError
from goworker_py.testing.install import apt_install
from goworker_py.testing.network import free_ports
from goworker_py.testing.process import ServerCluster, ServerProcess

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
    apt_install("etcd-server")


class EtcdServer(ServerProcess):
    """One etcd process for tests. ``stop()`` keeps the data dir (``start()`` resumes it, with
    its leases and revisions); ``close()`` also removes it. Use as a context manager, or call
    :meth:`close`."""

    kind = "etcd"
    _dir_prefix = "goworker-etcd-"
    _log_name = "etcd.log"
    _start_error = EtcdStartError

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
        # Both ports now: a cluster's members name each other's peer ports before any starts.
        if client_port is None or peer_port is None:
            client_port, peer_port = free_ports(2)
        super().__init__(port=client_port, start_timeout=start_timeout)
        self.name = name
        #: Serve clients over TLS, with a certificate of a test CA (:attr:`ca_file`).
        self.tls = tls
        self.peer_port = peer_port
        self._binary = binary
        self._initial_cluster = _initial_cluster or f"{name}={self.peer_url}"

    # -- identity --------------------------------------------------------------------------------

    @property
    def client_port(self) -> int:
        """The port clients connect to (:attr:`port`)."""
        return self.port

    @property
    def url(self) -> str:
        """The client URL, ``http://127.0.0.1:<client port>`` (``https`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.hosts}"

    @property
    def ca_file(self) -> str:
        """With TLS: the test CA's certificate, what clients trust (``DiscoveryConfig.ca``)."""
        if self._workdir is None or not self.tls:
            raise ZooKeeperError(f"{self!r} has no CA (not started, or without TLS)")
        return str(self._workdir / CA_FILE)

    @property
    def peer_url(self) -> str:
        """The URL the members of a cluster reach this one at."""
        return f"http://127.0.0.1:{self.peer_port}"

    def _identity(self) -> str:
        return f"{self.name} {self.hosts}"

    # -- what is etcd's own ----------------------------------------------------------------------

    def _find_program(self) -> None:
        if self._binary is None:
            self._binary = find_etcd()

    def _prepare(self, workdir: Path) -> None:
        if self.tls:
            make_test_certificates(workdir, missing=EtcdNotFound, failed=EtcdStartError)

    def _command(self) -> list[str]:
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
                f"--cert-file={self._workdir / CERT_FILE}",
                f"--key-file={self._workdir / KEY_FILE}",
            ]
        return cmd

    def _serves(self) -> bool:
        """``/health`` says healthy: a leader is there and a read goes through (also with
        authentication enabled)."""
        return self.healthy()

    def healthy(self) -> bool:
        """True when ``GET /health`` answers ``{"health": "true"}`` within a second."""
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=1.0, context=self._ssl_context()
            ) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

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


class EtcdCluster(ServerCluster[EtcdServer]):
    """``size`` etcd members forming one cluster (for losing a member, or the leader)."""

    def __init__(self, size: int = 3, *, binary: str | None = None) -> None:
        ports = free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(
            f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names)
        )
        super().__init__(
            EtcdServer(
                name=name,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                binary=binary,
                _initial_cluster=initial,
            )
            for i, name in enumerate(names)
        )

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
