"""The coordination servers the cluster benchmarks measure against, one :class:`Target` each.

A :class:`Target` is what a cluster benchmark needs of a backend, whichever it is:

- ``name`` (``"zookeeper"``, ``"etcd"``, ``"redis"``) and ``label`` (how figures name it);
- ``discovery``: what a worker is given — ZooKeeper's hosts (as before), or a discovery URL
  (``etcd://127.0.0.1:p``, ``redis://127.0.0.1:p/0``); :func:`discovery_config` turns either
  into a :class:`~goworker_py.config.DiscoveryConfig`;
- :meth:`Target.counter`: the server's own count of the requests it received, as deltas of a
  :meth:`~RequestCounter.snapshot` (``requests``, ``writes``, ``reads``):

  - ZooKeeper: ``mntr`` ``zk_packets_received`` (pings included, the ``mntr`` queries
    excluded), writes ``zk_cnt_updatelatency``, reads ``zk_cnt_readlatency``;
  - etcd (its data on tmpfs: :func:`etcd_server`): ``/metrics`` — requests are the gRPC
    messages received (``grpc_server_msg_received_total``, every method: a unary request, a
    lease keep-alive and a watch's create request are one message each; the HTTP gateway
    forwards each of its requests as one), writes the Raft proposals committed
    (``etcd_server_proposals_committed_total``: a transaction that may write is one), reads the
    ``Range`` requests. ``/metrics`` itself is no gRPC request;
  - Redis: ``INFO commandstats`` — Redis counts the commands a Lua script runs as well as the
    script's own call; requests are the calls of script commands (``EVALSHA``, ...) plus every
    command the backend's scripts never run (so a client's ``GET`` of the settings or control
    state, which scripts also run, is not counted), the ``INFO`` queries excluded; writes are the
    script calls (each one atomic step; the commands inside are ``commands``);
- :meth:`Target.config` and :meth:`Target.describe`.

:func:`target` starts a private server for a name (``zookeeper`` honours ``ZK_HOSTS``, as
before), :func:`started` the same or None when that server is missing, :func:`each_server` a
measurement on each backend's in turn; :func:`figure_name` names a per-backend figure
(ZooKeeper's keep their old names).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from _common import Report, calibrate

#: The backends the cluster benchmarks compare, in the order of the side-by-side table.
BACKENDS = ("zookeeper", "etcd", "redis")
LABELS = {"zookeeper": "ZooKeeper", "etcd": "etcd", "redis": "Redis"}


def figure_name(backend: str, name: str, zookeeper: str | None = None) -> str:
    """A figure's name on ``backend``: ZooKeeper's keeps its old name (``zookeeper`` if given,
    else ``name``); the others add the backend, ``"<name> [etcd]"``."""
    if backend == "zookeeper":
        return name if zookeeper is None else zookeeper
    return f"{name} [{LABELS[backend]}]"


def discovery_config(discovery: str, session_timeout: float, connect_timeout: float = 5.0) -> Any:
    """A ``DiscoveryConfig`` from a discovery URL, or from plain ZooKeeper hosts."""
    from goworker_py import DiscoveryConfig

    timeouts = {"session_timeout": session_timeout, "connect_timeout": connect_timeout}
    if "://" in discovery:
        return DiscoveryConfig.from_url(discovery, **timeouts)
    return DiscoveryConfig(hosts=discovery, **timeouts)


class RequestCounter(Protocol):
    def read(self) -> int: ...

    def snapshot(self) -> dict[str, int]: ...


@dataclass
class Target:
    """A coordination server a benchmark talks to (see the module docstring)."""

    name: str
    discovery: str
    server: Any
    #: ZooKeeper's tick in ms (0 for the others).
    tick_time: int = 0
    external: bool = False

    @property
    def label(self) -> str:
        return LABELS[self.name]

    @property
    def hosts(self) -> str:
        """ZooKeeper's hosts (kept for the ZooKeeper-only benchmarks)."""
        return self.discovery

    def config(self, session_timeout: float = 10.0, connect_timeout: float = 5.0) -> Any:
        return discovery_config(self.discovery, session_timeout, connect_timeout)

    def mntr(self) -> dict[str, Any]:
        """ZooKeeper's ``mntr`` (ZooKeeper only)."""
        return dict(self.server.mntr())

    def counter(self) -> RequestCounter:
        if self.name == "zookeeper":
            return PacketCounter(self)
        if self.name == "etcd":
            return EtcdCounter(self.server.url)
        return RedisCounter(self.server.port)

    def describe(self) -> str:
        if self.name == "zookeeper":
            kind = "external (ZK_HOSTS)" if self.external else "private"
            return f"{kind} ZooKeeper {self.discovery}, tick {self.tick_time} ms"
        return f"private {self.label} {self.discovery}"


#: The ZooKeeper benchmarks' name for a target.
ZkTarget = Target


@contextlib.contextmanager
def zookeeper(tick_time: int = 100) -> Iterator[Target]:
    """A private ZooKeeper server (closed on exit), or the one ``ZK_HOSTS`` names."""
    hosts = os.environ.get("ZK_HOSTS", "").strip()
    if hosts:
        from goworker_py.testing import ExternalZooKeeper

        external = ExternalZooKeeper(hosts)
        tick = int(os.environ.get("ZK_TICK_MS", "2000"))
        yield Target("zookeeper", hosts, external, tick, True)
        return
    from goworker_py.testing import ZooKeeperServer

    server = ZooKeeperServer(tick_time=tick_time)
    try:
        server.start()
        yield Target("zookeeper", server.hosts, server, tick_time)
    finally:
        server.close()


#: Where etcd keeps its data in the benchmarks (tmpfs), when there is one.
SHM = "/dev/shm"


def etcd_server() -> Any:
    """An ``EtcdServer`` whose data dir is on tmpfs (``/dev/shm``) where there is one.

    etcd syncs its write-ahead log to disk before it answers a write (about 5 ms on these
    machines' disks, far more than the request itself); the benchmarks' ZooKeeper runs with
    ``forceSync=no`` and their Redis without persistence: on tmpfs no etcd write waits for a
    disk either, so the three are compared on their protocols, not on the disk.
    """
    from goworker_py.testing.etcd import EtcdServer

    class TmpfsEtcdServer(EtcdServer):
        _shm: str | None = None

        def _prepare(self, workdir: Path) -> None:
            super()._prepare(workdir)
            if os.path.isdir(SHM) and os.access(SHM, os.W_OK):
                self._shm = tempfile.mkdtemp(prefix="goworker-etcd-bench-", dir=SHM)
                os.symlink(self._shm, workdir / "data")

        def close(self) -> None:
            super().close()
            if self._shm is not None:
                shutil.rmtree(self._shm, ignore_errors=True)
                self._shm = None

    return TmpfsEtcdServer()


@contextlib.contextmanager
def etcd() -> Iterator[Target]:
    """A private etcd server (Debian's ``etcd-server``; 50 ms heartbeats; its data on tmpfs:
    :func:`etcd_server`), closed on exit."""
    with etcd_server() as server:
        yield Target("etcd", f"etcd://{server.hosts}", server)


@contextlib.contextmanager
def redis() -> Iterator[Target]:
    """A private ``redis-server`` (no persistence, no keyspace notifications), closed on exit."""
    from goworker_py.testing.redis import RedisServer

    with RedisServer() as server:
        yield Target("redis", server.url(), server)


def target(name: str, tick_time: int = 100) -> contextlib.AbstractContextManager[Target]:
    """The private server of backend ``name`` (one of :data:`BACKENDS`)."""
    if name == "zookeeper":
        return zookeeper(tick_time)
    if name == "etcd":
        return etcd()
    if name == "redis":
        return redis()
    raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")


@contextlib.contextmanager
def started(name: str, tick_time: int = 100) -> Iterator[Target | None]:
    """:func:`target`, or None (the reason printed) when its server is not installed or does
    not come up: a benchmark then measures the other backends (its figures show "n/a")."""
    from goworker_py.testing.errors import ZooKeeperError

    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(target(name, tick_time))
    except (ZooKeeperError, OSError) as exc:
        print(f"  {LABELS[name]} not measured: {exc}", flush=True)
        yield None
        return
    with stack:
        print(server.describe(), flush=True)
        yield server


def each_server(
    report: Report,
    backends: Iterable[str],
    measure: Callable[[Target], None],
    tick_time: int = 100,
) -> None:
    """``measure(server)`` on a private server of each of ``backends`` in turn, stopped after it
    (a server that is missing or does not come up is skipped: :func:`started`). The first server
    that starts calibrates the machine for ``report`` (with round trips when it is ZooKeeper)."""
    for backend in backends:
        with started(backend, tick_time=tick_time) as server:
            if server is None:
                continue
            if report.calibration is None:
                zk_hosts = server.discovery if backend == "zookeeper" else None
                report.calibration = calibrate(quick=True, zk_hosts=zk_hosts)
            measure(server)


# -- request counters ---------------------------------------------------------------------------


class PacketCounter:
    """ZooKeeper requests received by the server, from ``mntr`` deltas.

    Every ``mntr`` query is itself counted as one packet by the server: :meth:`read` subtracts
    the queries made through this counter, so a delta counts client requests (pings included).
    """

    def __init__(self, zk: Target) -> None:
        self.zk = zk
        self._queries = 0

    def read(self) -> int:
        return self.snapshot()["requests"]

    def snapshot(self) -> dict[str, int]:
        """One ``mntr`` query: ``requests`` (as :meth:`read`), ``writes`` and ``reads``.

        ``writes`` and ``reads`` are the server's counts of update and read requests
        (``zk_cnt_updatelatency``, ``zk_cnt_readlatency``): pings and ``mntr`` are neither.
        """
        mntr = self.zk.mntr()
        self._queries += 1
        return {
            "requests": int(mntr["zk_packets_received"]) - self._queries,
            "writes": int(mntr.get("zk_cnt_updatelatency", 0)),
            "reads": int(mntr.get("zk_cnt_readlatency", 0)),
        }


_METRIC = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$")


class EtcdCounter:
    """etcd's requests from its ``/metrics`` (see the module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> int:
        return self.snapshot()["requests"]

    def snapshot(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        requests = writes = reads = 0.0
        for line in text.splitlines():
            match = _METRIC.match(line)
            if match is None:
                continue
            metric, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
            if metric == "grpc_server_msg_received_total":
                requests += value
                if 'grpc_method="Range"' in labels:
                    reads += value
            elif metric == "etcd_server_proposals_committed_total":
                writes += value
        return {"requests": int(requests), "writes": int(writes), "reads": int(reads)}


#: Redis commands that run a script.
_SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


@functools.cache
def redis_script_commands() -> frozenset[str]:
    """The commands the Redis backend's Lua scripts run (``redis.call('X', ...)``)."""
    from goworker_py.cluster.backends.redis.scripts import SCRIPTS

    found: set[str] = set()
    for lua in SCRIPTS.values():
        found |= {m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)", lua)}
    return frozenset(found)


class RedisCounter:
    """Redis requests from ``INFO commandstats`` deltas (see the module docstring)."""

    def __init__(self, port: int) -> None:
        import redis as redis_py

        self.client = redis_py.Redis(port=port, socket_timeout=10)
        self._queries = 0

    def read(self) -> int:
        return self.snapshot()["requests"]

    def snapshot(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        self._queries += 1
        nested = redis_script_commands()
        requests = scripts = commands = 0
        for key, entry in stats.items():
            command, calls = key.removeprefix("cmdstat_"), int(entry["calls"])
            commands += calls
            if command in _SCRIPT_COMMANDS:
                scripts += calls
            if command not in nested:
                requests += calls
        return {
            "requests": requests - self._queries,
            "writes": scripts,
            "reads": 0,
            "commands": commands - self._queries,
        }
