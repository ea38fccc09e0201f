"""The etcd v3 backend, beyond the conformance suite (``test_conformance.py``): the registry,
bad input, auth, TLS, compaction, watches resumed after a cut, a 3-member cluster losing its
leader — against real etcd servers."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import replace

import pytest
from helpers import wait_until

from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
)
from goworker_py.cluster.discovery import get_discovery
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import (
    AccessDenied,
    BackendError,
    BackendMissing,
    DiscoveryError,
)
from goworker_py.instance import WorkerInstance
from goworker_py.testing.errors import ZooKeeperError
from goworker_py.testing.etcd import EtcdCluster, EtcdServer
from goworker_py.testing.network import free_ports

from .conftest import Changes, record

pytestmark = pytest.mark.timeout(60)


def etcd_config(
    server: EtcdServer | EtcdCluster, namespace: str, **overrides: object
) -> DiscoveryConfig:
    settings: dict[str, object] = {
        "protocol": "etcdv3",
        "hosts": server.hosts,
        "namespace": namespace,
        "session_timeout": 2.0,
        "connect_timeout": 3.0,
        **overrides,
    }
    return DiscoveryConfig(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["etcdv3", "etcd"])
def test_the_registry_builds_the_etcd_backend(protocol: str) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    backend = get_discovery(DiscoveryConfig(protocol=protocol, hosts="127.0.0.1:2379"), "svc")
    assert isinstance(backend, EtcdBackend)


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [
        m for m in sys.modules if m.startswith(("etcd3gw", "goworker_py.cluster.backends"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "etcd3gw", None)  # import etcd3gw now fails
    with pytest.raises(BackendMissing, match=r"pip install 'goworker-py\[etcd\]'"):
        get_discovery(DiscoveryConfig(protocol="etcd", hosts="127.0.0.1:2379"), "svc")


@pytest.mark.parametrize(
    ("hosts", "service", "message"),
    [
        ("h", "svc", "'h' is not host:port"),
        ("127.0.0.1:2379", "a/b", "without '/'"),
        ("127.0.0.1:2379", "", "non-empty"),
    ],
)
def test_bad_input_is_a_discovery_error(hosts: str, service: str, message: str) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    with pytest.raises(DiscoveryError, match=message):
        EtcdBackend(DiscoveryConfig(protocol="etcdv3", hosts=hosts), service)


def test_credentials_are_checked(etcd_private: EtcdServer) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    etcd_private.enable_auth("s3cret")
    wrong = EtcdBackend(
        etcd_config(etcd_private, "ns", auth_user="root", auth_password="nope"), "svc"
    )
    with pytest.raises(AccessDenied, match="wrong user name or password"):
        wrong.connect()
    anonymous = EtcdBackend(etcd_config(etcd_private, "ns"), "svc")
    with pytest.raises(AccessDenied, match="set auth_user and auth_password"):
        anonymous.connect()
    right = EtcdBackend(
        etcd_config(etcd_private, "ns", auth_user="root", auth_password="s3cret"), "svc"
    )
    right.connect()
    try:
        right.register(WorkerInstance.create("svc"))
        claim = right.claim(0, "me")
        assert claim is not None and right.begin_run(claim, record(claim, right))
    finally:
        right.close()


def test_a_compacted_history_is_read_again(etcd_private: EtcdServer) -> None:
    from reliability.proxy import TcpProxy

    from goworker_py.cluster.backends.etcd import EtcdBackend

    with TcpProxy("127.0.0.1", etcd_private.client_port) as proxy:
        changes = Changes()
        watcher = EtcdBackend(etcd_config(proxy, "ns"), "svc")  # type: ignore[arg-type]
        writer = EtcdBackend(etcd_config(etcd_private, "ns"), "svc")
        try:
            watcher.connect(changes)
            writer.connect()
            proxy.blackhole()
            mark = changes.mark()
            writer.write_settings({"a": 1}, create_only=True)
            writer.write_settings({"a": 2}, create_only=False)
            etcd_private.compact()  # the watcher's next revision is gone
            proxy.reset()
            proxy.heal()
            changes.wait_for(Change.SETTINGS, mark, timeout=10.0)
            assert {Change.MEMBERS, Change.CLAIMS, Change.CONTROL} <= set(changes.events[mark:])
        finally:
            watcher.close()
            writer.close()


def test_a_watch_resumes_from_the_last_revision_after_a_cut(etcd_private: EtcdServer) -> None:
    from reliability.proxy import TcpProxy

    from goworker_py.cluster.backends.etcd import EtcdBackend

    with TcpProxy("127.0.0.1", etcd_private.client_port) as proxy:
        changes = Changes()
        watcher = EtcdBackend(etcd_config(proxy, "ns"), "svc")  # type: ignore[arg-type]
        writer = EtcdBackend(etcd_config(etcd_private, "ns"), "svc")
        try:
            watcher.connect(changes)
            writer.connect()
            proxy.blackhole()
            mark = changes.mark()
            writer.write_settings({"a": 1}, create_only=True)
            writer.update_control(lambda s: replace(s, trigger=1))
            proxy.reset()
            proxy.heal()
            changes.wait_for(Change.SETTINGS, mark, timeout=10.0)
            changes.wait_for(Change.CONTROL, mark, timeout=10.0)
            # Delivered by a stream opened after the writes, from the revision before them.
            assert Change.MEMBERS not in changes.events[mark:]  # no re-read was needed
        finally:
            watcher.close()
            writer.close()


@pytest.mark.timeout(90)
def test_a_cluster_losing_its_leader_keeps_the_lease_and_the_claims(
    etcd_cluster: EtcdCluster,
) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    backend = EtcdBackend(etcd_config(etcd_cluster, "leader-loss", session_timeout=3.0), "svc")
    backend.connect()
    try:
        backend.register(WorkerInstance.create("svc"))
        claim = backend.claim(0, "a")
        assert claim is not None
        lease = backend.lease_id
        leader = etcd_cluster.leader()
        leader.kill()
        try:
            wait_until(lambda: _has_leader(etcd_cluster), 10.0, what="a new leader")
            backend.round_trip(3.0)
            assert backend.lease_id == lease and backend.state is ConnectionState.CONNECTED
            assert backend.begin_run(claim, record(claim, backend))
            assert backend.registered()
        finally:
            leader.start()
    finally:
        backend.close()


def _has_leader(cluster: EtcdCluster) -> bool:
    try:
        cluster.leader()
    except ZooKeeperError:  # none yet
        return False
    return True


@pytest.mark.timeout(90)
def test_an_auth_token_lost_in_a_restart_is_renewed(etcd_private: EtcdServer) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    etcd_private.enable_auth("s3cret")
    config = etcd_config(etcd_private, "ns", auth_user="root", auth_password="s3cret")
    changes = Changes()
    watcher, writer = EtcdBackend(config, "svc"), EtcdBackend(config, "svc")
    try:
        watcher.connect(changes)
        writer.connect()
        lease = watcher.lease_id
        etcd_private.restart()  # etcd's simple tokens live in memory: every token is invalid now
        mark = changes.mark()
        writer.write_settings({"a": 1}, create_only=True)
        changes.wait_for(Change.SETTINGS, mark, timeout=10.0)
        watcher.round_trip(2.0)
        assert watcher.lease_id == lease
        watcher.register(WorkerInstance.create("svc"))
        assert [m.lease for m in writer.members()] == [lease]
    finally:
        watcher.close()
        writer.close()


def test_a_dead_host_is_skipped_for_the_next(etcd_server: EtcdServer, etcd_namespace: str) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    (dead,) = free_ports(1)
    hosts = f"127.0.0.1:{dead},{etcd_server.hosts}"
    backend = EtcdBackend(etcd_config(etcd_server, etcd_namespace, hosts=hosts), "svc")
    backend.connect()
    try:
        assert backend.register(WorkerInstance.create("svc")).rank > 0
        backend.round_trip(1.0)
    finally:
        backend.close()


def test_close_ends_every_thread(etcd_server: EtcdServer, etcd_namespace: str) -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    before = set(threading.enumerate())
    backend = EtcdBackend(etcd_config(etcd_server, etcd_namespace), "svc")
    backend.connect()
    backend.watch_runs("other", 0, lambda record: True)
    started = [
        t for t in threading.enumerate() if t not in before and t.name.startswith("goworker")
    ]
    assert len(started) >= 4  # keep-alive, callbacks, two watches
    backend.close()
    wait_until(lambda: not any(t.is_alive() for t in started), 3.0, what="threads ended")


def test_tls_with_the_servers_ca_and_a_clear_error_without() -> None:
    from goworker_py.cluster.backends.etcd import EtcdBackend

    with EtcdServer(tls=True) as server:
        trusted = EtcdBackend(etcd_config(server, "ns", use_ssl=True, ca=server.ca_file), "svc")
        trusted.connect()
        try:
            trusted.register(WorkerInstance.create("svc"))
            assert trusted.claim(0, "me") is not None
        finally:
            trusted.close()
        untrusted = EtcdBackend(etcd_config(server, "ns", use_ssl=True), "svc")
        began = time.monotonic()
        with pytest.raises(BackendError, match="TLS handshake"):
            untrusted.connect()
        assert time.monotonic() - began < 1.0  # at once: no retry fixes a certificate
