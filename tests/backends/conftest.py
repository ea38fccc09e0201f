"""Coordination backends under test, each on a real server (the conformance suite's fixtures).

``backend_factory`` is parametrised by :data:`BACKENDS`: a test written against it runs on every
backend. It yields a :class:`BackendKit` on the shared server, in a fresh namespace;
``private_backend_factory`` one on a server of the test's own, which the test may pause, stop
or restart (``kit.server``). ``kit.make(...)`` returns a connected backend, closed after the
test. A backend kind joins the suite by adding a ``_<name>_kit`` maker below.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from goworker_py.cluster.backend import Change, CoordinationBackend, RunRecord, ShardClaim
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendError
from goworker_py.instance import WorkerInstance

#: Backend kinds every conformance test runs on; the server-backed ones also run the tests of a
#: server of their own (pause, restart: ``private_backend_factory``).
SERVER_BACKENDS = ["zookeeper", "etcd", "redis"]
BACKENDS = [*SERVER_BACKENDS, "memory"]


class Changes:
    """Records the :class:`Change` events a backend delivers; tests wait on them."""

    def __init__(self) -> None:
        self.events: list[Change] = []
        self._cond = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self._cond:
            self.events.append(change)
            self._cond.notify_all()

    def mark(self) -> int:
        """The position to wait from (events before it do not count)."""
        with self._cond:
            return len(self.events)

    def wait_for(self, change: Change, since: int = 0, timeout: float = 5.0) -> None:
        """Block until ``change`` arrived after position ``since``; fail the test otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: change in self.events[since:], timeout):
                raise AssertionError(f"no {change} within {timeout} s (got {self.events[since:]})")


@dataclass
class BackendKit:
    """One backend kind on one server: connected backends, and the server to break."""

    name: str
    hosts: str
    namespace: str
    server: Any
    build: Callable[[DiscoveryConfig, str], CoordinationBackend]
    #: Expire a backend's lease on the server side (what the server does once it stops hearing).
    expire: Callable[[CoordinationBackend], None]
    protocol: str
    made: list[CoordinationBackend] = field(default_factory=list)

    def config(self, **overrides: Any) -> DiscoveryConfig:
        settings: dict[str, Any] = {
            "protocol": self.protocol,
            "hosts": self.hosts,
            "namespace": self.namespace,
            "session_timeout": 2.0,
            "connect_timeout": 3.0,
            **overrides,
        }
        return DiscoveryConfig(**settings)

    def make(
        self,
        service: str = "svc",
        *,
        on_change: Callable[[Change], None] | None = None,
        connect: bool = True,
        **overrides: Any,
    ) -> CoordinationBackend:
        """A backend (connected unless ``connect=False``); closed after the test."""
        backend = self.build(self.config(**overrides), service)
        self.made.append(backend)
        if connect:
            backend.connect(on_change)
        return backend

    def close(self) -> None:
        for backend in self.made:
            with contextlib.suppress(BackendError):
                backend.close()


def record(claim: ShardClaim, backend: CoordinationBackend, run_id: str = "r1") -> RunRecord:
    """A ``running`` record of ``claim``'s run ``run_id``."""
    return RunRecord(
        shard=claim.shard,
        owner=claim.owner,
        lease=backend.lease_id,
        run_id=run_id,
        fire_time=1_800_000_000.0,
        token=claim.token,
    )


def registered(kit: BackendKit, service: str = "svc", **settings: Any) -> CoordinationBackend:
    """A connected backend of ``kit`` whose instance is registered."""
    backend = kit.make(service, **settings)
    backend.register(WorkerInstance.create(service))
    return backend


def _etcd_kit(request: pytest.FixtureRequest, private: bool) -> BackendKit:
    from goworker_py.cluster.backends.etcd import EtcdBackend
    from goworker_py.testing.etcd import EtcdServer

    if private:
        server: EtcdServer = request.getfixturevalue("etcd_private")
        namespace = f"t-{uuid.uuid4().hex[:8]}"
    else:
        server = request.getfixturevalue("etcd_server")
        namespace = request.getfixturevalue("etcd_namespace")

    def expire(backend: CoordinationBackend) -> None:
        server.revoke_lease(backend.lease_id)

    return BackendKit(
        name="etcd",
        hosts=server.hosts,
        namespace=namespace,
        server=server,
        build=EtcdBackend,
        expire=expire,
        protocol="etcdv3",
    )


def _zookeeper_kit(request: pytest.FixtureRequest, private: bool) -> BackendKit:
    from goworker_py.cluster.backends.zookeeper import ZooKeeperBackend
    from goworker_py.testing import ZooKeeperServer, expire_session

    fixture = "zookeeper_private" if private else "zookeeper"
    server: ZooKeeperServer = request.getfixturevalue(fixture)

    def expire(backend: CoordinationBackend) -> None:
        assert isinstance(backend, ZooKeeperBackend)
        expire_session(backend.client, server.hosts)

    return BackendKit(
        name="zookeeper",
        hosts=server.hosts,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        server=server,
        build=ZooKeeperBackend,
        expire=expire,
        protocol="zookeeper",
    )


def _redis_kit(request: pytest.FixtureRequest, private: bool) -> BackendKit:
    import redis

    from goworker_py.cluster.backends.redis import RedisBackend
    from goworker_py.testing.redis import RedisServer

    fixture = "redis_private" if private else "redis_server"
    server: RedisServer = request.getfixturevalue(fixture)

    def expire(backend: CoordinationBackend) -> None:
        """What Redis does when the lease's time to live runs out: its keys go."""
        assert isinstance(backend, RedisBackend)
        prefix, lease = backend.prefix, backend.lease_id
        with redis.Redis(host="127.0.0.1", port=server.port) as raw:
            held = raw.hkeys(f"{prefix}lease:{lease}")
            claims = [f"{prefix}claim:{f.decode()[1:]}" for f in held if f.startswith(b"c")]
            for key in [f"{prefix}lease:{lease}", f"{prefix}member:{lease}", *claims]:
                raw.pexpire(key, 1)

    return BackendKit(
        name="redis",
        hosts=server.hosts,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        server=server,
        build=RedisBackend,
        expire=expire,
        protocol="redis",
    )


def _memory_kit(request: pytest.FixtureRequest, private: bool) -> BackendKit:
    from goworker_py.cluster.backends.memory import MemoryBackend, reset_stores

    assert not private, "the memory backend has no server of its own to break"
    request.addfinalizer(reset_stores)
    name = f"mem-{uuid.uuid4().hex[:8]}"

    def expire(backend: CoordinationBackend) -> None:
        assert isinstance(backend, MemoryBackend)
        backend.store.revoke(backend.lease_id)

    return BackendKit(
        name="memory",
        hosts=name,
        namespace=name,
        server=None,
        build=MemoryBackend,
        expire=expire,
        protocol="memory",
    )


_KITS: dict[str, Callable[[pytest.FixtureRequest, bool], BackendKit]] = {
    "etcd": _etcd_kit,
    "zookeeper": _zookeeper_kit,
    "redis": _redis_kit,
    "memory": _memory_kit,
}


@pytest.fixture(params=BACKENDS)
def backend_factory(request: pytest.FixtureRequest) -> Iterator[BackendKit]:
    """Backends of each kind on the shared server, in a namespace of this test's own."""
    kit = _KITS[request.param](request, False)
    yield kit
    kit.close()


@pytest.fixture(params=SERVER_BACKENDS)
def server_backend_factory(request: pytest.FixtureRequest) -> Iterator[BackendKit]:
    """Backends of the kinds that have a server, on the shared one."""
    kit = _KITS[request.param](request, False)
    yield kit
    kit.close()


@pytest.fixture(params=SERVER_BACKENDS)
def private_backend_factory(request: pytest.FixtureRequest) -> Iterator[BackendKit]:
    """Backends of each kind on a server of this test's own (``kit.server``: pause, restart)."""
    kit = _KITS[request.param](request, True)
    yield kit
    kit.close()


# -- Cluster-mode workers on each server backend (test_workers.py) ------------------------------
# (One block, kept apart: fixtures of other worker-level suites go in blocks of their own.)

from cluster.conftest import groups  # noqa: E402, F401 (the fixture, for depends_on tests)
from helpers import WorkerTracker  # noqa: E402

from .workers import BackendCluster  # noqa: E402


@pytest.fixture
def worker_cluster(server_backend_factory: BackendKit) -> Iterator[BackendCluster]:
    """Cluster-mode workers on each server backend's shared server, in this test's namespace;
    every worker is cancelled and every observer closed after the test."""
    tracker = WorkerTracker()
    cluster = BackendCluster(server_backend_factory, tracker)
    try:
        yield cluster
    finally:
        tracker.close()
        cluster.close()


# -- end of the worker_cluster block ---------------------------------------------------------------
