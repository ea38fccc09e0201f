"""Bad cluster input gets a specific, clear error at ``run()`` — never a hang (SPEC 7)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

from goworker_py import (
    ConfigError,
    DiscoveryConfig,
    DiscoveryError,
    GoWorkerError,
    InvalidParamsError,
    Model,
    Worker,
    WorkerConfig,
    WorkerState,
    ZooKeeperUnavailable,
)
from goworker_py.cluster import discovery as registry
from goworker_py.cluster.discovery import get_discovery, set_discovery
from goworker_py.testing import free_ports

from .conftest import Cluster, Idle, Observer, wait_until

pytestmark = pytest.mark.timeout(60)


def cluster_worker(config: WorkerConfig | None, **kwargs: Any) -> Worker:
    kwargs.setdefault("service_name", "svc")
    kwargs.setdefault("sharding_total_count", 2)
    return Worker(
        Idle,
        config=config,
        cron="@every 1s",
        model=Model.CLUSTER,
        handle_signals=False,
        **kwargs,
    )


def test_a_zookeeper_that_does_not_answer_fails_after_the_connect_timeout() -> None:
    """Something listens (a full backlog that never answers): the connect timeout decides."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepted by the kernel, never answered
    hosts = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        worker = cluster_worker(
            WorkerConfig(discovery=DiscoveryConfig(hosts=hosts, connect_timeout=1.0))
        )
        threads = threading.active_count()
        began = time.monotonic()
        with pytest.raises(ZooKeeperUnavailable) as raised:
            worker.run()
        took = time.monotonic() - began
        assert 0.5 <= took < 5.0, f"took {took:.2f} s with connect_timeout=1"
        message = str(raised.value)
        assert hosts in message and "connect_timeout" in message
        assert worker.state is WorkerState.INITIALIZED
        with pytest.raises(GoWorkerError):
            worker.wait(0.1)  # never started
        wait_until(lambda: threading.active_count() <= threads, 5.0, what="kazoo threads end")
    finally:
        silent.close()


def test_a_zookeeper_address_that_refuses_connections_fails_at_once() -> None:
    port = free_ports(1)[0]  # nobody listens there
    hosts = f"127.0.0.1:{port}"
    worker = cluster_worker(
        WorkerConfig(discovery=DiscoveryConfig(hosts=hosts, connect_timeout=10.0))
    )
    began = time.monotonic()
    with pytest.raises(ZooKeeperUnavailable) as raised:
        worker.run()
    assert time.monotonic() - began < 5.0, "a refused connection waited for the timeout"
    message = str(raised.value)
    assert hosts in message and "refused the connection" in message
    assert worker.state is WorkerState.INITIALIZED


@pytest.fixture
def owned_by_alice(zk_hosts: str) -> Iterator[None]:
    """At teardown, delete what alice's ACLs keep the fixture from deleting."""
    yield
    client = KazooClient(hosts=zk_hosts, auth_data=[("digest", "alice:secret")])
    client.start(15)
    try:
        client.delete("/goworker", recursive=True)
    finally:
        client.stop()
        client.close()


def test_wrong_credentials_are_a_discovery_error(
    owned_by_alice: None, cluster: Cluster, observer: Observer
) -> None:
    alice = cluster.config(auth_user="alice", auth_password="secret")
    first = cluster.make(config=alice, total=2)
    observer_denied = False
    try:
        observer.instances()
    except Exception as exc:  # noqa: BLE001 - the observer has no credentials
        observer_denied = "NoAuth" in type(exc).__name__
    assert observer_denied, "alice's nodes are readable without credentials"
    cluster.stop(first)
    for config in [
        cluster.config(auth_user="bob", auth_password="secret"),
        cluster.config(auth_user="alice", auth_password="wrong"),
        cluster.config(),
    ]:
        worker = cluster.make(config=config, total=2, start=False)
        began = time.monotonic()
        with pytest.raises(DiscoveryError) as raised:
            worker.run()
        assert time.monotonic() - began < 5.0
        assert "auth" in str(raised.value), raised.value
        assert worker.state is WorkerState.INITIALIZED
    again = cluster.make(config=alice, total=2)
    wait_until(lambda: again.shards == (0, 1), 5.0, what="alice runs again")


def test_unknown_protocol_is_a_discovery_error() -> None:
    config = WorkerConfig(discovery=DiscoveryConfig(protocol="consul", hosts="localhost:8500"))
    with pytest.raises(DiscoveryError) as raised:
        cluster_worker(config).run()
    assert "consul" in str(raised.value) and "set_discovery" in str(raised.value)


@pytest.mark.parametrize(
    "config",
    [None, WorkerConfig(), WorkerConfig(discovery=DiscoveryConfig(hosts=""))],
    ids=["no-config", "no-discovery", "empty-hosts"],
)
def test_cluster_without_discovery_settings_is_a_discovery_error(
    config: WorkerConfig | None,
) -> None:
    worker = cluster_worker(config)
    with pytest.raises(DiscoveryError) as raised:
        worker.run()
    assert "hosts" in str(raised.value)
    assert worker.state is WorkerState.INITIALIZED


@pytest.mark.parametrize("name", ["session_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1.0, True, "10"])
def test_bad_discovery_timeouts_are_discovery_errors(name: str, value: Any) -> None:
    discovery = DiscoveryConfig(hosts="127.0.0.1:1")
    setattr(discovery, name, value)
    with pytest.raises(DiscoveryError) as raised:
        cluster_worker(WorkerConfig(discovery=discovery)).run()
    assert name in str(raised.value)


def test_cluster_without_service_name_is_a_config_error() -> None:
    config = WorkerConfig(discovery=DiscoveryConfig(hosts="127.0.0.1:1"))
    with pytest.raises(ConfigError) as raised:
        cluster_worker(config, service_name=None).run()
    assert "service_name" in str(raised.value)


@pytest.mark.parametrize("total", [0, -3, True, 2.0, "4", None])
def test_sharding_total_count_below_one_is_a_config_error(total: Any) -> None:
    config = WorkerConfig(discovery=DiscoveryConfig(hosts="127.0.0.1:1"))
    with pytest.raises(ConfigError) as raised:
        cluster_worker(config, sharding_total_count=total).run()
    assert "sharding_total_count" in str(raised.value)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ("0=a,b", "'b'"),
        ("x=1", "'x'"),
        ("0=a,0=b", "appears twice"),
        ("0=a,5=z", "5"),
        ("-1=a", "'-1'"),
    ],
)
def test_malformed_params_are_invalid_params_errors(params: str, named: str) -> None:
    config = WorkerConfig(discovery=DiscoveryConfig(hosts="127.0.0.1:1"))
    with pytest.raises(InvalidParamsError) as raised:
        cluster_worker(config, sharding_total_count=2, params=params).run()
    assert named in str(raised.value)


class FakeDiscovery:
    """Just enough of a discovery backend to show the registry's factory is what runs."""

    protocol = "fake"

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        self.config = config
        self.service = service
        self.connects = 0

    def connect(self, on_change: Any = None) -> None:
        self.connects += 1
        raise ZooKeeperUnavailable(f"fake backend at {self.config.hosts} is down")

    def close(self) -> None:
        pass


def test_set_discovery_registers_a_factory_that_get_discovery_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_factories", dict(registry._factories))
    made: list[FakeDiscovery] = []

    def factory(config: DiscoveryConfig, service: str) -> Any:
        made.append(FakeDiscovery(config, service))
        return made[-1]

    set_discovery("fake", factory)
    config = DiscoveryConfig(protocol="fake", hosts="fake:1")
    backend = get_discovery(config, "svc")
    assert backend is made[-1] and made[-1].config is config and made[-1].service == "svc"
    # A worker uses it too.
    with pytest.raises(ZooKeeperUnavailable, match="fake backend"):
        cluster_worker(WorkerConfig(discovery=config)).run()
    assert len(made) == 2 and made[-1].connects == 1
    # The built-in one is still there, and bad registrations are refused.
    assert type(get_discovery(DiscoveryConfig(hosts="127.0.0.1:1"), "svc")).__name__ == (
        "ZooKeeperBackend"
    )
    with pytest.raises(DiscoveryError):
        set_discovery("", factory)
    with pytest.raises(DiscoveryError):
        set_discovery("other", "not callable")  # type: ignore[arg-type]
