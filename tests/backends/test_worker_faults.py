"""Cluster workers under faults of their coordination server, on every backend (issue #11, 3).

Real cluster ``Worker`` s (T = 2 s, ``@every 100ms``), each run recorded in a ledger
(``tests/cluster/conftest.py``: no two runs of a shard overlap, fencing tokens never go back),
owners read through ``ClusterAdmin`` on the server itself. Correctness is asserted (no overlap,
the fence before the lease could expire, every shard owned once after recovery, a token that
grows with every new owner); wall-clock figures are printed (fence margin = the earliest moment
the server could expire the lease by its time to live - the moment the fence tripped; recovery
times), and bounded only generously.

Scenarios, and what stands for them on each backend:

1. A server outage shorter than the lease: no owner changes, no token changes (etcd, Redis).
   etcd: killed and restarted (its data, leases included, is on disk). Redis without
   persistence loses every key when it stops, so its short outage is a ``SIGSTOP`` shorter than
   the lease (its stop is scenario 6).
2. A server gone for longer than the lease: every instance fences itself (no run in flight,
   ``ctx.cancelled`` seen, health RED) before the lease could expire, and recovers once the
   server is back. etcd and ZooKeeper restore their leases (sessions) with a fresh time to live
   when they start again, so the instances keep them and their claims (tokens unchanged: nobody
   else could have owned a shard). Redis comes back empty: every instance registers again and
   every token grew; and since it closed every connection when it stopped, the instances fence
   at once instead of at their deadline.
3. One instance cut off by a TCP proxy (``tests/reliability/proxy.py``): it fences itself, its
   shards run elsewhere only after the server could have expired its lease, no overlap, and it
   comes back as a new member once the network heals.
4. The server frozen (``SIGSTOP``) for longer than the lease, then continued: one consistent
   state — each lease either kept (its queued keep-alive reached the server before the expiry
   check) with its claims and tokens, or expired and replaced by a new member with larger
   tokens — and no overlap.
5. etcd only: a 3-member cluster losing its leader; the service carries on, at most a short gap.
6. Redis only: a restart without persistence (every key gone): every instance registers again,
   no overlap, and every shard's fencing token still grows. (And the case where an instance hears
   of the loss first from another instance's registration, long before its own next refresh.)

ZooKeeper runs 2-4 here too (in-process workers make them cheap). The rest is covered by
existing tests: (1) ``tests/cluster/test_failures.py::
test_server_restart_shorter_than_the_session_keeps_every_shard`` (stop and kill), and R4/R7 in
``tests/reliability/test_r04_r08_zookeeper_faults.py``; (5) ``test_ensemble_leader_killed``
there; (6) does not apply (ZooKeeper persists its data). With worker processes and the
independent checker, R4b/R21 (a partition), R6 (silent for longer than the session) and R8
(down for long) cover 2-4 for ZooKeeper as well.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cluster.conftest import Ledger, RunRecord, check_ledger
from helpers import wait_until
from reliability.proxy import TcpProxy

from goworker_py import HealthStatus, Worker
from goworker_py.testing.errors import ZooKeeperError
from goworker_py.testing.etcd import EtcdCluster

from ._fault_support import (
    FaultCluster,
    Fenced,
    Owners,
    Sampled,
    Settled,
    T,
    Watch,
    in_flight_everywhere,
    longest_gap,
    wait_runs_everywhere,
)

pytestmark = pytest.mark.timeout(60)

#: The fixture of a server of the test's own, per backend kind.
PRIVATE_SERVER = {
    "zookeeper": "zookeeper_private",
    "etcd": "etcd_private",
    "redis": "redis_private",
}


@dataclass
class Rig:
    """A backend kind on a server of the test's own, workers for it, an observer on it."""

    kind: str
    server: Any
    cluster: FaultCluster
    owners: Owners

    def settled(
        self, ledger: Ledger, duration: float, count: int = 2
    ) -> tuple[list[Worker], Settled]:
        """``count`` workers whose runs last ``duration`` s, once the cluster settled."""
        workers = [self.cluster.make(ledger, duration=duration) for _ in range(count)]
        return workers, self.owners.wait_settled(6, workers)

    def in_flight_everywhere(self, ledger: Ledger) -> tuple[list[Worker], Settled, list[Watch]]:
        """Two workers, settled, with a (10 s) run in flight on every shard; each watched."""
        workers, before = self.settled(ledger, duration=10.0)
        in_flight_everywhere(ledger, before.owners())
        return workers, before, [Watch(w) for w in workers]

    def finish(self, ledger: Ledger, workers: list[Worker]) -> list[RunRecord]:
        """Stop ``workers``; their runs, checked (no overlap, tokens never back)."""
        self.cluster.stop(workers)
        records = ledger.snapshot()
        check_ledger(records)
        return records


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    kind: str = request.param
    server = request.getfixturevalue(PRIVATE_SERVER[kind])
    cluster = FaultCluster(kind, server.hosts, f"f-{uuid.uuid4().hex[:8]}")
    owners = Owners(cluster.discovery())
    try:
        yield Rig(kind, server, cluster, owners)
    finally:
        cluster.close()
        owners.close()


def run_starts(runs: list[RunRecord]) -> list[tuple[tuple[int, str], float]]:
    """``((shard, instance), start)`` of each run, as ``Ledger.in_flight()`` has it."""
    return [((r.shard, r.instance), r.start) for r in runs]


def first_fences(watches: list[Watch], since: float) -> list[Fenced]:
    """Each worker's first fence trip after ``since`` (every one must have tripped)."""
    fences = [w.fences_after(since) for w in watches]
    assert all(fences), f"not every instance fenced itself: {fences}"
    return [f[0] for f in fences]


def wait_fenced(watches: list[Watch], ledger: Ledger, since: float) -> list[Fenced]:
    """Wait until every instance fenced itself and no run is in flight; the first fences."""
    wait_until(
        lambda: all(w.fences_after(since) for w in watches) and not ledger.in_flight(),
        2 * T,
        what="every instance fenced, no run in flight",
    )
    return first_fences(watches, since)


def wait_past_expiry(fences: list[Fenced]) -> None:
    """Until every lease could have expired by its time to live, and a little more."""
    wait_until(lambda: time.monotonic() > max(f.expiry for f in fences) + 0.5, 2 * T)


def check_cut_runs(
    ledger: Ledger, watches: list[Watch], fences: list[Fenced], since: float
) -> None:
    """The runs in flight at ``since`` were cancelled, each instance's by its fence in time."""
    cut = [r for r in ledger.snapshot() if r.start < since]
    assert cut and all(r.cancelled for r in cut), "runs in flight were not cancelled"
    for watch, fence in zip(watches, fences, strict=True):
        assert_fenced_in_time(fence, [r for r in cut if r.instance == watch.instance_id])


def check_claims_kept_or_new(before: Settled, after: Settled) -> None:
    """A claim its owner kept kept its fencing token; a claim of a new owner has a larger one."""
    for shard, (owner, token) in after.claims.items():
        old_owner, old_token = before.claims[shard]
        if owner == old_owner:
            assert token == old_token, f"shard {shard}: a kept claim changed its token"
        else:
            assert token > old_token, f"shard {shard}: a new owner without a larger token"


def check_tokens_grew(before: Settled, after: Settled) -> None:
    """Every shard's fencing token grew (every claim is new)."""
    for shard, token in after.tokens().items():
        assert token > before.tokens()[shard], f"shard {shard}: the token did not grow"


def fence_figures(fences: list[Fenced], since: float) -> str:
    return ", ".join(f"{f.margin:.3f} s (fenced {f.at - since:.3f} s in)" for f in fences)


def assert_fenced_in_time(fence: Fenced, runs: list[RunRecord]) -> None:
    """``fence`` tripped by the instance's own clock (not on hearing that its lease was gone)
    before the server could expire the lease, and each of ``runs`` (in flight when the fault
    began) ended by then: done before the fence, or cancelled by it (``ctx.cancelled``)."""
    assert fence.on_deadline, f"the first fence was not on the deadline: {fence.why}"
    assert fence.margin > 0, f"fenced {-fence.margin:.3f} s after the lease could expire"
    for record in runs:
        assert record.cancelled or record.end <= fence.at, f"shard {record.shard} ran on"
        assert record.end < fence.expiry, (
            f"shard {record.shard}: the run ended {record.end - fence.expiry:.3f} s after the "
            "lease could expire"
        )


# -- 1. an outage shorter than the lease ----------------------------------------------------------


@pytest.mark.parametrize("rig", ["etcd", "redis"], indirect=True)
def test_an_outage_shorter_than_the_lease_changes_no_owner_and_no_token(rig: Rig) -> None:
    ledger = Ledger()
    workers, before = rig.settled(ledger, duration=0.05)
    leases = [w.host.backend.lease_id for w in workers]
    watches = [Watch(w) for w in workers]
    began = time.monotonic()
    if rig.kind == "etcd":
        rig.server.restart(kill=True)  # down for its start-up time: about half a second
    else:
        with rig.server.paused():
            time.sleep(0.6)
    back = time.monotonic()
    wait_until(
        lambda: all(w.health is HealthStatus.GREEN for w in workers), 10.0, what="GREEN again"
    )
    green = time.monotonic() - back
    after = rig.owners.wait_settled(6, workers)
    assert after.claims == before.claims, "an owner or a fencing token changed"
    assert [w.host.backend.lease_id for w in workers] == leases
    resumed = wait_runs_everywhere(ledger, after.owners(), began) - back
    rig.finish(ledger, workers)
    print(
        f"{rig.kind}: out {back - began:.3f} s; GREEN {green:.3f} s after, runs on every "
        f"shard {resumed:.3f} s after; health {[w.states() for w in watches]}; "
        f"fenced: {[len(w.fences) for w in watches]}"
    )


# -- 2. a server gone for longer than the lease ---------------------------------------------------


@pytest.mark.parametrize("rig", ["etcd", "redis", "zookeeper"], indirect=True)
def test_a_server_gone_longer_than_the_lease_fences_every_instance_then_recovers(
    rig: Rig,
) -> None:
    ledger = Ledger()
    workers, before, watches = rig.in_flight_everywhere(ledger)
    stopped = time.monotonic()
    rig.server.stop()
    fences = wait_fenced(watches, ledger, stopped)
    assert all(w.health is HealthStatus.RED for w in workers)
    # Down until every lease could have expired by its time to live, and a little more.
    wait_past_expiry(fences)
    assert all(w.health is HealthStatus.RED for w in workers)
    assert not ledger.in_flight(), "a run began in the outage"
    assert not [r for r in ledger.snapshot() if r.start > stopped], "a run began in the outage"
    rig.server.start()
    back = time.monotonic()
    check_cut_runs(ledger, watches, fences, stopped)
    after = rig.owners.wait_settled(6, workers, timeout=30.0)
    recovered = time.monotonic() - back
    # (A run may begin before ``start()`` returns: the server serves before it has checked.)
    resumed = wait_runs_everywhere(ledger, after.owners(), stopped) - back
    if rig.kind == "redis":  # it came back empty: every instance is a new member
        check_tokens_grew(before, after)
        assert not set(after.members) & set(before.members), "a member survived the restart"
    else:  # the server restored the leases (a fresh time to live)
        check_claims_kept_or_new(before, after)
    rig.finish(ledger, workers)
    print(
        f"{rig.kind} stopped: fence margins {fence_figures(fences, stopped)}; settled "
        f"{recovered:.3f} s after the server was back, runs everywhere after {resumed:.3f} s; "
        f"members kept: {after.members == before.members}"
    )


# -- 3. one instance cut off ----------------------------------------------------------------------


@pytest.mark.parametrize("rig", ["etcd", "redis", "zookeeper"], indirect=True)
def test_a_partitioned_instance_fences_itself_before_the_others_take_its_shards(
    rig: Rig,
) -> None:
    ledger = Ledger()
    host, port = rig.server.hosts.rsplit(":", 1)
    with TcpProxy(host, int(port)) as proxy:
        # The victim's runs last: every one of them is in flight when the cut comes.
        victim = rig.cluster.make(ledger, duration=10.0, hosts=proxy.hosts)
        others = [rig.cluster.make(ledger, duration=1.0) for _ in range(2)]
        workers = [victim, *others]
        before = rig.owners.wait_settled(6, workers)
        victim_id = victim.host.instance.id
        lost = [s for s, o in before.owners().items() if o == victim_id]
        wait_until(
            lambda: {(s, victim_id) for s in lost} <= set(ledger.in_flight()),
            5.0,
            what="the victim's shards inside runs",
        )
        watch = Watch(victim)
        with Sampled(rig.owners) as sampler:
            cut_at = time.monotonic()
            proxy.blackhole()
            wait_until(
                lambda: sampler.gone_at(victim_id) is not None, 3 * T, what="the victim expires"
            )
            expired = sampler.gone_at(victim_id)
            assert expired is not None
            survivors = rig.owners.wait_settled(6, others, count=2)
        taken = time.monotonic()
        wait_runs_everywhere(ledger, survivors.owners(), cut_at)
        runs = ledger.snapshot()
        (fence,) = first_fences([watch], cut_at)
        cut = [r for r in runs if r.instance == victim_id and r.start < cut_at < r.end]
        assert cut and all(r.cancelled for r in cut), "the victim's runs were not cancelled"
        assert_fenced_in_time(fence, cut)
        assert victim.health is HealthStatus.RED
        assert not [r for r in runs if r.instance == victim_id and r.start > cut_at]
        first_take = min(
            start
            for (shard, _), start in [*ledger.in_flight().items(), *run_starts(runs)]
            if shard in lost and start > cut_at
        )
        assert first_take > fence.expiry, "its shards ran elsewhere before its lease expired"
        for shard in lost:
            assert survivors.tokens()[shard] > before.tokens()[shard]
        proxy.heal()
        healed = time.monotonic()
        after = rig.owners.wait_settled(6, workers)
        rejoined = time.monotonic() - healed
        assert victim.host.instance.id != victim_id, "the victim must come back as a new member"
        rig.finish(ledger, workers)  # (through the proxy: before it closes)
    print(
        f"{rig.kind} partition: fenced {fence.at - cut_at:.3f} s after the cut, "
        f"margin {fence.margin:.3f} s to the earliest expiry ({expired - fence.at:.3f} s to the "
        f"expiry observed {expired - cut_at:.3f} s after the cut); its shards ran elsewhere "
        f"{first_take - cut_at:.3f} s after the cut (settled {taken - cut_at:.3f} s); "
        f"rejoined {rejoined:.3f} s after the heal; {len(after.members)} members"
    )


# -- 4. the server frozen for longer than the lease -----------------------------------------------


@pytest.mark.parametrize("rig", ["etcd", "redis", "zookeeper"], indirect=True)
def test_a_server_frozen_longer_than_the_lease_ends_in_one_consistent_state(
    rig: Rig,
) -> None:
    ledger = Ledger()
    workers, before, watches = rig.in_flight_everywhere(ledger)
    paused = time.monotonic()
    with rig.server.paused():
        fences = wait_fenced(watches, ledger, paused)
        wait_past_expiry(fences)
    resumed = time.monotonic()
    check_cut_runs(ledger, watches, fences, paused)
    after = rig.owners.wait_settled(6, workers, timeout=30.0)
    settled = time.monotonic() - resumed
    wait_runs_everywhere(ledger, after.owners(), paused)  # (no run can begin in the pause)
    # One consistent state: a lease kept kept its claims, a new member's claims are new.
    kept = [m for m in before.members if m in after.members]
    check_claims_kept_or_new(before, after)
    rig.finish(ledger, workers)
    print(
        f"{rig.kind} frozen: fence margins {fence_figures(fences, paused)}; settled "
        f"{settled:.3f} s after the resume; {len(kept)} of {len(before.members)} member(s) kept"
    )


# -- 5. etcd: a cluster losing its leader ---------------------------------------------------------


@pytest.mark.timeout(90)
def test_an_etcd_cluster_losing_its_leader_carries_on(etcd_cluster: EtcdCluster) -> None:
    cluster = FaultCluster("etcd", etcd_cluster.hosts, f"f-{uuid.uuid4().hex[:8]}")
    ledger = Ledger()
    leader = etcd_cluster.leader()
    try:
        with Owners(cluster.discovery()) as owners:
            workers = [cluster.make(ledger, duration=0.05) for _ in range(2)]
            before = owners.wait_settled(6, workers)
            wait_runs_everywhere(ledger, before.owners(), time.monotonic())
            killed = time.monotonic()
            leader.kill()
            wait_until(lambda: _has_leader(etcd_cluster), 10.0, what="a new leader")
            elected = time.monotonic() - killed
            after = owners.wait_settled(6, workers)
            wait_runs_everywhere(ledger, after.owners(), time.monotonic())
            until = time.monotonic()
            cluster.stop(workers)
    finally:
        cluster.close()
        leader.start()  # for the next test of this module's cluster
    records = ledger.snapshot()
    check_ledger(records)
    check_claims_kept_or_new(before, after)
    gap = longest_gap(records, killed, until)
    assert gap < 2 * T, f"a shard went {gap:.3f} s without a run"
    print(
        f"etcd leader killed: a new leader after {elected:.3f} s; the longest gap without a run "
        f"{gap:.3f} s; claims kept: {after.claims == before.claims}"
    )


def _has_leader(cluster: EtcdCluster) -> bool:
    try:
        cluster.leader()
    except ZooKeeperError:  # none (yet)
        return False
    return True


# -- 6. Redis: a restart without persistence ------------------------------------------------------


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_a_redis_restart_without_persistence_re_registers_every_instance(rig: Rig) -> None:
    """Every key gone at once: no instance can know before the server tells it — except that
    the server closed its connection. Instances started apart refresh at different moments:
    the first to find its lease gone registers again and claims every shard it sees unowned,
    while the others' runs must already have stopped."""
    ledger = Ledger()
    workers = []
    for _ in range(3):
        workers.append(rig.cluster.make(ledger, duration=10.0))
        time.sleep(T / 9)  # their refreshes (every T/3) a third of the period apart
    before = rig.owners.wait_settled(6, workers)
    in_flight_everywhere(ledger, before.owners())
    watches = [Watch(w) for w in workers]
    stopped = time.monotonic()
    rig.server.restart()  # every key gone: leases, members, claims, counters, run records
    back = time.monotonic()
    after = rig.owners.wait_settled(6, workers)
    settled = time.monotonic() - back
    assert not set(after.members) & set(before.members), "a member survived the restart"
    check_tokens_grew(before, after)
    wait_runs_everywhere(ledger, after.owners(), stopped)
    fences = first_fences(watches, stopped)
    records = rig.finish(ledger, workers)
    cut = [r for r in records if r.start < stopped < r.end]
    assert cut and all(r.cancelled for r in cut)
    first_new = min(r.start for r in records if r.start > stopped)
    assert all(f.at < first_new for f in fences)
    print(
        f"redis restarted in {back - stopped:.3f} s: fenced "
        f"{', '.join(f'{f.at - stopped:.3f}' for f in fences)} s after the stop, runs again "
        f"{first_new - stopped:.3f} s after it; settled {settled:.3f} s after the restart"
    )


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_keys_lost_before_the_lease_is_refreshed_leave_no_claim_to_a_stale_member(
    rig: Rig,
) -> None:
    """Every key gone (as after a restart without persistence), and the instance hears of it
    first through a change of the members, long before its next refresh (T = 30 s): it
    registers again, and ``register`` finds the lease gone and takes a new one. The claims it
    then makes must belong to the member it is now — never to an instance id it dropped."""
    import redis

    ledger = Ledger()
    worker = rig.cluster.make(ledger, duration=0.05, session_timeout=30.0)
    before = rig.owners.wait_settled(6, [worker])
    watch = Watch(worker)
    prefix = f"{rig.cluster.namespace}:svc:"
    with redis.Redis(host="127.0.0.1", port=rig.server.port) as raw:
        raw.delete(*raw.scan_iter(match=f"{prefix}*"))
        raw.publish(f"{prefix}changes", "1 members")  # what another instance's register says
    after = rig.owners.wait_settled(6, [worker])
    assert set(after.owners().values()) == {worker.host.instance.id}
    assert after.members != before.members
    assert len(watch.leases) == 2, f"leases {watch.leases}"
    rig.finish(ledger, [worker])


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_a_connection_the_redis_server_closed_fences_at_once_and_the_lease_lives_on(
    rig: Rig,
) -> None:
    """The other side of scenario 6: a closed connection may be a restart, so the runs stop at
    once — but when the server still holds the lease (only the connection was cut: here
    ``CLIENT KILL``), the next refresh finds it, and the instance goes on with its claims."""
    import redis

    ledger = Ledger()
    worker = rig.cluster.make(ledger, duration=10.0)
    before = rig.owners.wait_settled(6, [worker])
    in_flight_everywhere(ledger, before.owners())
    watch = Watch(worker)
    lease = worker.host.backend.lease_id
    cut_at = time.monotonic()
    with redis.Redis(host="127.0.0.1", port=rig.server.port) as raw:
        raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    wait_until(lambda: watch.fences_after(cut_at), T / 2, what="fenced at once")
    (fence,) = first_fences([watch], cut_at)
    after = rig.owners.wait_settled(6, [worker])
    assert after.claims == before.claims and worker.host.backend.lease_id == lease
    wait_runs_everywhere(ledger, after.owners(), cut_at)
    records = rig.finish(ledger, [worker])
    assert all(r.cancelled for r in records if r.start < cut_at)
    print(f"redis connection cut: fenced {fence.at - cut_at:.3f} s after it, lease kept")
