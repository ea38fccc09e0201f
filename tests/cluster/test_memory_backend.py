"""Cluster mode on the in-process ``memory`` backend: the host above the seam, without a server.

The same ``ClusterHost`` that runs on ZooKeeper runs here: shards spread and move, claims carry
growing fencing tokens, an instance cut off from the store fences itself before its lease can
expire there, and ``ClusterAdmin`` steers the service. (The real-server suites prove each real
backend; this one proves the host depends on nothing but the seam.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from helpers import WorkerTracker, wait_until

from goworker_py import DiscoveryConfig, DiscoveryError, HealthStatus, Model, Worker, WorkerConfig
from goworker_py.cluster.admin import ClusterAdmin
from goworker_py.cluster.backends.memory import MemoryBackend, reset_stores

from .conftest import Ledger, check_ledger

pytestmark = pytest.mark.timeout(60)

T = 1.0


@pytest.fixture
def store() -> Iterator[str]:
    name = f"mem-{uuid.uuid4().hex[:8]}"
    yield name
    reset_stores()


def make(tracker: WorkerTracker, store: str, handler: type, total: int = 4, **kw: object) -> Worker:
    config = WorkerConfig(
        discovery=DiscoveryConfig(protocol="memory", hosts=store, session_timeout=T),
        shutdown_timeout=2.0,
    )
    worker = tracker.make(
        handler,
        config=config,
        cron=kw.pop("cron", "@every 100ms"),
        model=Model.CLUSTER,
        service_name="svc",
        sharding_total_count=total,
        **kw,
    )
    worker.run()
    return worker


def owners(workers: list[Worker]) -> dict[int, str]:
    found: dict[int, str] = {}
    for worker in workers:
        for shard in worker.shards:
            assert shard not in found, f"shard {shard} run by two workers"
            found[shard] = worker.host.instance.id
    return found


def test_shards_spread_move_and_carry_growing_tokens(workers: WorkerTracker, store: str) -> None:
    ledger = Ledger()
    first = make(workers, store, ledger.handler(duration=0.02))
    wait_until(lambda: len(owners([first])) == 4, 5.0, what="one instance owns all")
    wait_until(lambda: {r.shard for r in ledger.snapshot()} == {0, 1, 2, 3}, 5.0)
    second = make(workers, store, ledger.handler(duration=0.02))
    wait_until(
        lambda: sorted(len(w.shards) for w in (first, second)) == [2, 2], 5.0, what="2 and 2"
    )
    moved = set(second.shards)
    wait_until(
        lambda: (
            {r.shard for r in ledger.snapshot() if r.instance == second.host.instance.id} >= moved
        ),
        5.0,
        what="runs on the newcomer",
    )
    first.cancel()
    first.wait(5)
    wait_until(lambda: len(second.shards) == 4, 5.0, what="the survivor owns all")
    second.cancel()
    second.wait(5)
    records = ledger.snapshot()
    check_ledger(records)
    for shard in moved:
        tokens = [r.token or 0 for r in records if r.shard == shard]
        assert tokens == sorted(tokens) and tokens[0] < tokens[-1], tokens


def test_a_partitioned_instance_fences_itself_before_its_lease_expires(
    workers: WorkerTracker, store: str
) -> None:
    ledger = Ledger()
    victim = make(workers, store, ledger.handler(duration=5.0), total=2)
    other = make(workers, store, ledger.handler(duration=5.0), total=2)
    wait_until(lambda: len(owners([victim, other])) == 2, 5.0)
    wait_until(lambda: len(ledger.in_flight()) == 2, 5.0, what="runs in flight")
    backend = victim.host.backend
    assert isinstance(backend, MemoryBackend)
    cut = time.monotonic()
    backend.partition()
    wait_until(lambda: victim.health is HealthStatus.RED, 2 * T, what="the victim fences itself")
    fenced = time.monotonic()
    wait_until(lambda: len(other.shards) == 2, 5 * T, what="the other takes over")
    taken = time.monotonic()
    assert fenced - cut < 0.8 * T
    # (0.3 T by design; the test sees both moments by polling, a few ms late each)
    assert taken - fenced >= 0.15 * T, f"taken over {taken - fenced:.3f} s after the fence"
    backend.heal()
    wait_until(lambda: victim.health is HealthStatus.GREEN, 5 * T, what="a new lease")
    wait_until(lambda: sorted(len(w.shards) for w in (victim, other)) == [1, 1], 5 * T)
    for worker in (victim, other):
        worker.cancel()
        worker.wait(5)
    records = ledger.snapshot()
    check_ledger(records)
    assert any(r.failover for r in records), "the victim's cut run was not re-run"


def test_the_admin_steers_a_memory_service(workers: WorkerTracker, store: str) -> None:
    ledger = Ledger()
    worker = make(workers, store, ledger.handler(), total=2, cron="0 0 1 1 *")
    wait_until(lambda: len(worker.shards) == 2, 5.0)
    config = DiscoveryConfig.from_url(f"memory://{store}")
    with ClusterAdmin(config, "svc") as admin:
        status = admin.status()
        assert [m.instance.id for m in status.instances] == [worker.host.instance.id]
        assert {s.shard: s.owner for s in status.shards} == {0: worker.host.instance.id} | {
            1: worker.host.instance.id
        }
        admin.trigger()
        wait_until(lambda: len(ledger.snapshot()) == 2, 5.0, what="the triggered runs")
        admin.pause()
        wait_until(lambda: worker.paused, 5.0)
        admin.resume()
        wait_until(lambda: not worker.paused, 5.0)


def test_memory_needs_a_store_name() -> None:
    with pytest.raises(DiscoveryError, match="store name"):
        MemoryBackend(DiscoveryConfig(protocol="memory"), "svc")


def test_every_instance_of_a_service_fires_an_interval_at_the_same_instants(
    workers: WorkerTracker, store: str
) -> None:
    """``@every`` in cluster mode counts from the Unix epoch, not from when an instance started
    or claimed a shard: shards owned by instances started at different moments fire together
    (a downstream waiting for every upstream shard's fire time depends on it)."""
    ledger = Ledger()
    first = make(workers, store, ledger.handler(), cron="@every 700ms")
    wait_until(lambda: len(first.shards) == 4, 5.0)
    time.sleep(0.33)  # the fault: the second instance starts out of step with the first
    second = make(workers, store, ledger.handler(), cron="@every 700ms")
    wait_until(lambda: sorted(len(w.shards) for w in (first, second)) == [2, 2], 5.0)
    joined = time.time()
    wait_until(
        lambda: {r.shard for r in ledger.snapshot() if r.scheduled > joined + 1} == {0, 1, 2, 3},
        10.0,
        what="runs of every shard after the join",
    )
    for record in ledger.snapshot():
        periods = record.scheduled / 0.7
        assert periods == pytest.approx(round(periods), abs=1e-4), (
            f"shard {record.shard} fired at {record.scheduled:.3f}, off the 700 ms grid"
        )
