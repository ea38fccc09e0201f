"""The supervisor keeps a member right through odd faults (real ZooKeeper): its instance node
deleted under it, a ZooKeeper call failing in a pass; and an unchanged member writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from goworker_py import BackendUnavailable, DiscoveryConfig, set_discovery
from goworker_py.cluster.backends.zookeeper import ZooKeeperBackend

from .conftest import NAMESPACE, SERVICE, Cluster, Ledger, Observer, wait_until

pytestmark = pytest.mark.timeout(60)


def test_a_deleted_instance_node_re_registers_and_takes_shards_again(
    cluster: Cluster, observer: Observer, zk_client: Any
) -> None:
    ledger = Ledger()
    a = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
    b = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
    observer.wait_settled(4, 2, workers=[a, b])
    old_id, old_node = a.host.instance.id, a.host.backend.node
    zk_client.delete(f"/{NAMESPACE}/{SERVICE}/instances/{old_node}")
    wait_until(lambda: a.host.backend.node not in (None, old_node), 10, what="a registers again")
    owners = observer.wait_settled(4, 2, workers=[a, b])
    assert a.host.instance.id != old_id
    assert a.host.instance.id in owners.values(), "the re-registered instance owns shards"
    assert old_id not in owners.values()
    mark = len(ledger.snapshot())
    wait_until(
        lambda: any(r.instance == a.host.instance.id for r in ledger.snapshot()[mark:]),
        5,
        what="runs under the new registration",
    )


def test_a_member_whose_shards_do_not_change_writes_nothing_on_a_join(
    cluster: Cluster, observer: Observer
) -> None:
    owners = [cluster.make(total=2, cron="@every 1h") for _ in range(2)]
    observer.wait_settled(2, 2, workers=owners)
    writes: list[str] = []
    for worker in owners:
        client: Any = worker.host.backend.client
        original = client._call

        def counting(request: Any, async_object: Any, original: Any = original) -> Any:
            if type(request).__name__ in ("SetData", "Create", "Delete", "Transaction"):
                writes.append(type(request).__name__)
            return original(request, async_object)

        client._call = counting
    standby = cluster.make(total=2, cron="@every 1h")
    observer.wait_settled(2, 3, workers=[*owners, standby])
    wait_until(lambda: all(w.host.members() and len(w.host.members()) == 3 for w in owners), 5)
    assert writes == [], f"owners rewrote unchanged data on a standby's join: {writes}"


class FlakyDiscovery(ZooKeeperBackend):
    """Real ZooKeeper; members() times out the first few times it is asked after arming."""

    failures = 0

    def members(self) -> list[Any]:
        if type(self).failures > 0:
            type(self).failures -= 1
            raise BackendUnavailable("injected: members() timed out")
        return super().members()


def test_the_supervisor_survives_a_failing_pass(cluster: Cluster, observer: Observer) -> None:
    set_discovery("flaky-zk", lambda config, service: FlakyDiscovery(config, service))
    config = cluster.config()
    assert config.discovery is not None
    config.discovery = DiscoveryConfig(
        protocol="flaky-zk",
        hosts=config.discovery.hosts,
        session_timeout=config.discovery.session_timeout,
        connect_timeout=config.discovery.connect_timeout,
    )
    a = cluster.make(total=2, cron="@every 1h", config=config)
    observer.wait_settled(2, 1, workers=[a])
    FlakyDiscovery.failures = 3
    b = cluster.make(total=2, cron="@every 1h")  # a's next passes fail three times
    observer.wait_settled(2, 2, workers=[a, b], timeout=15)
    assert FlakyDiscovery.failures == 0
    assert a.state.name == "RUNNING"
