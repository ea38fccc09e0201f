"""Failures against a real ZooKeeper: forced session expiry, server restarts."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from goworker_py import DiscoveryConfig, HealthStatus, Worker, WorkerInstance
from goworker_py.cluster.backend import ConnectionState, RunState
from goworker_py.cluster.backend import RunRecord as Record
from goworker_py.cluster.backends.zookeeper import ZooKeeperBackend
from goworker_py.testing import ZooKeeperServer, expire_session, observer_client

from .conftest import Cluster, Ledger, Observer, RunRecord, Sampler, check_ledger, wait_until

pytestmark = pytest.mark.timeout(60)


def record_health(worker: Worker) -> list[tuple[float, HealthStatus]]:
    """Every health change of ``worker`` from now on, with its time."""
    host = worker.host
    changes: list[tuple[float, HealthStatus]] = []
    original = host._set_health

    def recording(health: HealthStatus) -> None:
        if health is not host._health:
            changes.append((time.monotonic(), health))
        original(health)

    host._set_health = recording
    return changes


def test_forced_session_expiry_re_registers_without_double_owners(
    cluster: Cluster, observer: Observer
) -> None:
    """R9: the victim goes RED, re-registers as a new member and owns shards again.

    Every shard is always inside a (2 s) run, so the expiry interrupts the victim's runs. The
    server ends the session at once, before the victim can know, so the only overlap allowed
    is such an interrupted run of the old session, cancelled as soon as the loss is seen,
    against a new owner holding a larger fencing token; those runs are re-run as failovers.
    """
    ledger = Ledger()
    handler = ledger.handler(duration=2.0)
    workers = [cluster.make(handler, total=6, cron="@every 100ms") for _ in range(2)]
    observer.wait_settled(6, 2, workers=workers)
    victim, other = workers
    old_id, old_session = victim.host.instance.id, victim.host.backend.session_id
    health = record_health(victim)

    def running(pairs: set[tuple[int, str]]) -> bool:
        return pairs <= set(ledger.in_flight())

    owners = observer.owners()
    wait_until(lambda: running(set(owners.items())), 5.0, what="every shard in a run")
    with Sampler(observer) as sampler:
        expiring = time.monotonic()
        expire_session(victim.host.backend.client)
        lost = time.monotonic()
        wait_until(
            lambda: (
                victim.host.backend.session_id not in (0, old_session)
                and victim.health is HealthStatus.GREEN
            ),
            10.0,
            what="a new session, healthy again",
        )
        owners = observer.wait_settled(6, 2, workers=workers)
        settled = time.monotonic() - lost
    new_id = victim.host.instance.id
    assert new_id != old_id, "the re-registered instance must be a new member"
    assert list(observer.instances()) == [other.host.instance.id, new_id]
    assert sorted(s for s, o in owners.items() if o == new_id) == list(victim.shards)
    assert len(victim.shards) == 3
    states = [h for _, h in health]
    assert HealthStatus.RED in states and states[-1] is HealthStatus.GREEN, states
    # Every sample: one claim per shard, held by a member seen around that sample; never by
    # the old session once it was lost.
    for sample in sampler.samples:
        for claim in sample.claims.values():
            assert claim.owner in sample.instances, f"claim of a non-member: {sample}"
            assert not (claim.session == old_session and sample.at > lost)
    assert len(sampler.samples) > 10
    wait_until(lambda: running(set(owners.items())), 5.0, what="runs on the new owners")
    stopping = time.monotonic()
    for worker in workers:
        cluster.stop(worker)
    records = ledger.snapshot()

    def interrupted(earlier: RunRecord, later: RunRecord) -> bool:
        return (
            earlier.instance == old_id
            and expiring <= earlier.end <= lost + 0.5
            and (later.token or 0) > (earlier.token or 0)
        )

    check_ledger(records, excuse=interrupted)
    cut = [r for r in records if r.instance == old_id and r.end >= expiring]
    assert len(cut) == 3 and all(r.end - r.start < 1.9 for r in cut), "runs not cancelled"
    # (Stopping the first worker at the end cuts its runs short too: the other one re-runs
    # them, SPEC 4.3. Only the failovers before that are the expiry's.)
    failovers = {r.shard for r in records if r.failover and r.start < stopping}
    assert failovers == {r.shard for r in cut}, "interrupted runs not re-run as failovers"
    print(f"expiry -> re-registered and settled in {settled:.3f} s")


def test_a_stale_owner_never_clears_the_new_owners_run_marker(
    cluster: Cluster, observer: Observer
) -> None:
    """The victim's run ends *after* it reconnected with a new session (slow clean-up): its
    marker delete must not remove the marker the new owner wrote meanwhile, or a crash of the
    new owner would go without a failover."""
    ledger = Ledger()
    handler = ledger.handler(duration=3.0, linger=0.4)
    workers = [cluster.make(handler, total=4, cron="@every 100ms") for _ in range(2)]
    owners = observer.wait_settled(4, 2, workers=workers)
    victim = workers[0]
    old_id, old_session = victim.host.instance.id, victim.host.backend.session_id
    wait_until(lambda: set(owners.items()) <= set(ledger.in_flight()), 5.0, what="runs")

    def victim_runs() -> int:
        return len([r for r in ledger.snapshot() if r.instance == old_id])

    # Runs the victim completed before (with @every on the epoch's grid, its first fire may
    # come before the second worker joined: it ran all four shards once, then handed two over).
    ended = victim_runs()
    interrupted = len([shard for shard, instance in owners.items() if instance == old_id])
    assert interrupted == 2, owners
    expire_session(victim.host.backend.client)
    wait_until(
        lambda: victim_runs() == ended + interrupted,
        5.0,
        what="the victim's interrupted runs end",
    )
    assert victim.host.backend.session_id not in (0, old_session), "ended before reconnecting"
    # The victim's late end of run is done; every run in flight must still have its marker.
    observer.wait_settled(4, 2, workers=workers)
    in_flight = [(s, i) for (s, i) in list(ledger.in_flight()) if i != old_id]
    assert in_flight
    for shard, instance in in_flight:
        marker = observer.marker(shard)
        assert marker is not None and marker["owner"] == instance, (
            f"shard {shard}: run of {instance[:8]} in flight, marker {marker}"
        )


def test_a_claim_lost_with_its_session_cannot_begin_or_end_a_run(zk_hosts: str) -> None:
    """Backend level: a claim of an expired session is refused at run start, even once the
    client has a new session and another instance holds the shard (claims never change, so
    their version alone cannot tell an old claim from a new one); and the stale run's end
    does not overwrite the new owner's record."""
    config = DiscoveryConfig(hosts=zk_hosts, session_timeout=2.0, connect_timeout=5.0)
    first, second = ZooKeeperBackend(config, "svc"), ZooKeeperBackend(config, "svc")
    try:
        for zk in (first, second):
            zk.connect()
            zk.register(WorkerInstance.create("svc"))
        claim = first.claim(0, "first")
        assert claim is not None
        marker = Record(0, "first", first.lease_id, "r1", 1.0, claim.token)
        assert first.begin_run(claim, marker)
        old_session = first.session_id
        expire_session(first.client)
        wait_until(
            lambda: first.state is ConnectionState.CONNECTED and first.session_id != old_session,
            10.0,
        )
        taken = second.claim(0, "second")
        assert taken is not None and taken.token > claim.token
        stale = second.read_run(0)
        assert stale is not None and stale.owner == "first" and stale.state is RunState.RUNNING
        new = Record(0, "second", second.lease_id, "r2", 2.0, taken.token)
        assert second.begin_run(taken, new)
        # The old owner, on its new session, ends the run of its old one:
        assert not first.end_run(claim, replace(marker, state=RunState.DONE))
        current = second.read_run(0)
        assert current is not None and current.owner == "second", "a stale end overwrote it"
        assert current.state is RunState.RUNNING
        assert second.end_run(taken, replace(new, state=RunState.DONE))
        ended = second.read_run(0)
        assert ended is not None and ended.state is RunState.DONE and ended.fire_time == 2.0
        # ... and tries to begin another with the claim of its old session:
        assert not first.begin_run(claim, marker), "a lost claim began a run"
        after = second.read_run(0)
        assert after is not None and after.owner == "second" and after.state is RunState.DONE
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("kill", [False, True], ids=["stop", "kill"])
def test_server_restart_shorter_than_the_session_keeps_every_shard(
    zookeeper_private: ZooKeeperServer, private_cluster: Cluster, kill: bool
) -> None:
    ledger = Ledger()
    handler = ledger.handler(duration=0.02)
    workers = [
        private_cluster.make(handler, total=6, session_timeout=4.0, cron="@every 100ms")
        for _ in range(2)
    ]
    client = observer_client(zookeeper_private.hosts)
    client.start(15)
    try:
        observer = Observer(client)
        observer.wait_settled(6, 2, workers=workers)
        before = observer.claims()
        sessions = [w.host.backend.session_id for w in workers]
        shards = [w.shards for w in workers]
        changes = [record_health(w) for w in workers]
        began = time.monotonic()
        zookeeper_private.restart(down_for=1.0, kill=kill)
        serving = time.monotonic()
        wait_until(
            lambda: all(
                w.health is HealthStatus.GREEN and w.host.backend.state.name == "CONNECTED"
                for w in workers
            ),
            10.0,
            what="both workers GREEN again",
        )
        back = time.monotonic() - began
        wait_until(lambda: client.connected, 10.0, what="the observer reconnects")
        observer.wait_settled(6, 2, workers=workers)
        assert observer.claims() == before, "claims moved (owner or fencing token changed)"
        assert [w.host.backend.session_id for w in workers] == sessions
        assert [w.shards for w in workers] == shards
        for change in changes:
            assert HealthStatus.YELLOW in [h for _, h in change], change
            assert change[-1][1] is HealthStatus.GREEN
        runs = len(ledger.snapshot())
        wait_until(lambda: len(ledger.snapshot()) >= runs + 10, 5.0, what="runs resume")
        print(
            f"restart ({'kill' if kill else 'stop'}) -> GREEN again in {back:.3f} s, "
            f"{back - (serving - began):.3f} s after the server served again"
        )
    finally:
        for worker in workers:
            private_cluster.stop(worker)
        client.stop()
        client.close()
    check_ledger(ledger.snapshot())


def test_a_silent_server_makes_the_instance_fence_itself_before_its_session_can_expire(
    zookeeper_private: ZooKeeperServer, private_cluster: Cluster
) -> None:
    """SPEC 4.2 / R4b: with ZooKeeper frozen (SIGSTOP), the instance cancels its in-flight runs
    and starts no new one before the server could expire its session (T after it last heard
    from the client), then recovers when the server answers again."""
    session_timeout = 2.0
    ledger = Ledger()
    handler = ledger.handler(duration=5.0)
    worker = private_cluster.make(
        handler, total=2, session_timeout=session_timeout, cron="@every 100ms"
    )
    wait_until(lambda: len(ledger.in_flight()) == 2, 5.0, what="both shards in a run")
    health = record_health(worker)
    paused = time.monotonic()
    zookeeper_private.pause()
    try:
        wait_until(lambda: not ledger.in_flight(), 2 * session_timeout, what="runs cancelled")
        fenced = time.monotonic() - paused
        assert worker.health is HealthStatus.RED
    finally:
        zookeeper_private.resume()
    assert fenced < session_timeout, f"fenced {fenced:.3f} s after the server went silent"
    states = [h for _, h in health]
    assert states[:2] == [HealthStatus.YELLOW, HealthStatus.RED], states
    cut = ledger.snapshot()
    assert len(cut) == 2 and all(r.end - paused < session_timeout for r in cut)
    # Nothing ran while fenced; once the server answers the instance recovers (same session if
    # it reconnects in time, else a new one) and runs both shards again.
    wait_until(
        lambda: worker.health is HealthStatus.GREEN and len(worker.shards) == 2,
        10.0,
        what="healthy again",
    )
    wait_until(lambda: len(ledger.in_flight()) == 2, 5.0, what="runs again")
    assert all(start > paused + fenced for start in ledger.in_flight().values())
    print(f"T = {session_timeout} s: fenced {fenced:.3f} s ({fenced / session_timeout:.2f} T)")
