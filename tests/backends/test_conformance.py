"""The conformance suite: the :class:`~goworker_py.cluster.backend.CoordinationBackend` protocol
on every backend in ``BACKENDS`` (``conftest.py``), each against a real server.

Only the protocol and the kits are used here (``backend_factory``: the shared server, a fresh
namespace; ``private_backend_factory``: a server of the test's own to pause or restart, and
``kit.expire`` to have the server expire a backend's lease).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from helpers import wait_until

from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    CoordinationBackend,
    Guarantee,
    RunRecord,
    RunState,
)
from goworker_py.errors import BackendUnavailable, MemberGone
from goworker_py.instance import WorkerInstance
from goworker_py.testing.network import free_ports

from .conftest import BackendKit, Changes, record, registered

pytestmark = pytest.mark.timeout(60)


def test_connect_holds_a_lease_and_close_releases_everything(backend_factory: BackendKit) -> None:
    kit = backend_factory
    owner = registered(kit)
    assert owner.state is ConnectionState.CONNECTED
    assert owner.lease_id
    assert owner.negotiated_timeout >= 2.0
    now = time.monotonic()
    assert now < owner.lease_valid_until() <= now + owner.negotiated_timeout
    assert owner.answered_at <= now
    assert owner.claim(0, "a") is not None
    observer = kit.make()
    assert len(observer.members()) == 1 and set(observer.claims()) == {0}

    owner.close()
    # Gone at once, not after the lease's time to live (a cache its watches keep may take a
    # moment to hear it).
    wait_until(
        lambda: observer.members() == [] and observer.claims() == {},
        owner.negotiated_timeout / 4,
        what="the closed owner's entry and claim gone",
    )
    assert owner.state is ConnectionState.LOST


def test_guarantees_are_declared(backend_factory: BackendKit) -> None:
    backend = backend_factory.make(connect=False)
    assert isinstance(backend.guarantees, frozenset)
    assert all(isinstance(item, Guarantee) for item in backend.guarantees)
    assert backend.protocol == backend_factory.protocol


def test_members_join_and_leave_1_5_1_in_rank_order(backend_factory: BackendKit) -> None:
    kit = backend_factory
    backends = [kit.make() for _ in range(5)]
    instances = [WorkerInstance.create("svc") for _ in backends]
    members = [b.register(i) for b, i in zip(backends, instances, strict=True)]
    ranks = [member.rank for member in members]
    assert ranks == sorted(ranks) and len(set(ranks)) == 5
    listed = backends[0].members()
    assert [m.instance.id for m in listed] == [i.id for i in instances]
    assert [m.rank for m in listed] == ranks
    assert [m.lease for m in listed] == [b.lease_id for b in backends]

    for backend in backends[1:]:
        backend.unregister()
        assert not backend.registered()
    assert [m.instance.id for m in backends[0].members()] == [instances[0].id]
    assert backends[0].registered()


def test_publish_replaces_the_member_data(backend_factory: BackendKit) -> None:
    kit = backend_factory
    backend = kit.make()
    instance = WorkerInstance.create("svc")
    member = backend.register(instance)
    backend.publish(replace(instance, shards=(1, 2)))
    (listed,) = kit.make().members()
    assert listed.instance.shards == (1, 2)
    assert listed.rank == member.rank  # publishing is no re-registration


def test_publish_after_the_entry_is_gone_raises_member_gone(backend_factory: BackendKit) -> None:
    backend = registered(backend_factory)
    backend.unregister()
    with pytest.raises(MemberGone):
        backend.publish(WorkerInstance.create("svc"))


def test_a_claim_is_exclusive_and_its_token_grows_with_every_owner(
    backend_factory: BackendKit,
) -> None:
    kit = backend_factory
    a, b = registered(kit), registered(kit)
    first = a.claim(3, "a")
    assert first is not None and first.shard == 3 and first.owner == "a"
    assert b.claim(3, "b") is None
    assert a.claim(3, "a") == first  # asking again (a retried request) finds the same claim
    a.release(first)
    second = b.claim(3, "b")
    assert second is not None and second.token > first.token
    assert a.claim(3, "a") is None
    b.close()
    third = a.claim(3, "a")
    assert third is not None and third.token > second.token
    assert {shard: c.owner for shard, c in kit.make().claims().items()} == {3: "a"}


def test_release_removes_only_exactly_that_claim(backend_factory: BackendKit) -> None:
    kit = backend_factory
    a = registered(kit)
    old = a.claim(0, "a")
    assert old is not None
    a.release(old)
    new = a.claim(0, "a")
    assert new is not None
    a.release(old)  # the earlier claim of the same shard: nothing happens
    assert kit.make().claims()[0].token == new.token


def test_a_claim_vanishes_when_its_owner_closes_and_waiters_hear_of_it(
    backend_factory: BackendKit,
) -> None:
    kit = backend_factory
    changes = Changes()
    a, b = registered(kit), registered(kit, on_change=changes)
    held = a.claim(1, "a")
    assert held is not None and b.claim(1, "b") is None
    mark = changes.mark()
    a.close()
    changes.wait_for(Change.CLAIMS, mark)
    taken = b.claim(1, "b")
    assert taken is not None and taken.token > held.token


def test_only_the_release_of_a_claim_it_waits_for_reports_claims(
    backend_factory: BackendKit,
) -> None:
    """A ``CLAIMS`` change reports a claim this instance found held, as the seam promises —
    not every release in the service: with every instance woken by every release, a clean
    leave of one of 10 instances x 1,000 shards took 640 supervisor passes and 4 s on etcd
    (bench_rebalance), and 2.2 s at 20 x 1,000 on Redis."""
    kit = backend_factory
    changes = Changes()
    holder, waiter = registered(kit), registered(kit, on_change=changes)
    held = [holder.claim(shard, "holder") for shard in range(2)]
    assert held[0] is not None and held[1] is not None
    assert waiter.claim(1, "waiter") is None  # it waits for shard 1, not for shard 0
    waiter.read_settings()  # (a read re-arms the watch of that kind of state)
    mark = changes.mark()
    holder.release(held[0])
    # A later write of another kind: changes are delivered in order, so once its change is
    # in, the release of shard 0 was seen before it.
    holder.write_settings({"a": 1}, create_only=True)
    changes.wait_for(Change.SETTINGS, mark)
    assert Change.CLAIMS not in changes.events[mark:]
    holder.release(held[1])
    changes.wait_for(Change.CLAIMS, mark)
    assert waiter.claim(1, "waiter") is not None


def test_a_lease_expired_by_the_server_loses_everything_then_a_new_one_comes(
    backend_factory: BackendKit,
) -> None:
    kit = backend_factory
    changes = Changes()
    victim = registered(kit, on_change=changes)
    claim = victim.claim(0, "victim")
    assert claim is not None
    assert victim.begin_run(claim, record(claim, victim))
    other = registered(kit)
    old_lease = victim.lease_id
    mark = changes.mark()

    kit.expire(victim)
    changes.wait_for(Change.CONNECTION, mark)
    wait_until(lambda: victim.lease_id not in ("", old_lease), 5.0, what="a new lease")
    assert victim.state is ConnectionState.CONNECTED
    assert [m.lease for m in other.members()] == [other.lease_id]
    assert not victim.registered()
    # The old claim is fenced off: nothing it writes lands.
    assert not victim.begin_run(claim, record(claim, victim, "r2"))
    assert not victim.end_run(claim, replace(record(claim, victim), state=RunState.DONE))
    taken = other.claim(0, "other")
    assert taken is not None and taken.token > claim.token
    victim.register(WorkerInstance.create("svc"))
    # (A backend may serve members from a cache its watches keep: soon, not at once.)
    wait_until(lambda: len(other.members()) == 2, 5.0, what="the new entry listed")


def test_begin_run_writes_the_record_only_while_claim_and_member_hold(
    backend_factory: BackendKit,
) -> None:
    kit = backend_factory
    a = registered(kit)
    claim = a.claim(2, "a")
    assert claim is not None
    began = record(claim, a)
    assert a.begin_run(claim, began)
    assert a.begin_run(claim, began)  # sent twice (a lost reply): still a success
    assert a.read_run(2) == began
    done = replace(began, state=RunState.DONE, completed=(began.fire_time,))
    assert a.end_run(claim, done)
    assert a.runs() == {2: done}

    a.release(claim)
    assert not a.begin_run(claim, record(claim, a, "r2"))
    assert not a.end_run(claim, replace(done, state=RunState.FAILED))
    assert a.read_run(2) == done


def test_begin_run_is_refused_once_the_member_entry_is_gone(backend_factory: BackendKit) -> None:
    kit = backend_factory
    a = registered(kit)
    claim = a.claim(0, "a")
    assert claim is not None
    a.unregister()
    assert not a.begin_run(claim, record(claim, a))
    assert not a.end_run(claim, record(claim, a))
    assert a.read_run(0) is None


def test_a_stale_owner_cannot_overwrite_its_successors_record(backend_factory: BackendKit) -> None:
    kit = backend_factory
    a, b = registered(kit), registered(kit)
    old = a.claim(0, "a")
    assert old is not None and a.begin_run(old, record(old, a, "a-run"))
    a.release(old)
    new = b.claim(0, "b")
    assert new is not None and b.begin_run(new, record(new, b, "b-run"))
    assert not a.end_run(old, replace(record(old, a, "a-run"), state=RunState.DONE))
    current = b.read_run(0)
    assert current is not None and (current.run_id, current.owner) == ("b-run", "b")


def test_changes_are_delivered_for_members_settings_control_and_claims(
    backend_factory: BackendKit,
) -> None:
    """The seam's contract: a change made after the host's last read of that kind of state is
    reported (one-shot watches are re-armed by that read), and a claim found taken reports
    its vanishing."""
    kit = backend_factory
    changes = Changes()
    watcher = registered(kit, on_change=changes)
    watcher.members(), watcher.read_settings(), watcher.read_control()
    mark = changes.mark()
    writer = registered(kit)
    changes.wait_for(Change.MEMBERS, mark)
    watcher.members()
    mark = changes.mark()
    writer.write_settings({"sharding_total_count": 3}, create_only=True)
    changes.wait_for(Change.SETTINGS, mark)
    mark = changes.mark()
    writer.update_control(lambda state: replace(state, paused=True))
    changes.wait_for(Change.CONTROL, mark)
    claim = writer.claim(0, "w")
    assert claim is not None
    assert watcher.claim(0, "watcher") is None
    mark = changes.mark()
    writer.release(claim)
    changes.wait_for(Change.CLAIMS, mark)
    watcher.members()
    mark = changes.mark()
    writer.publish(WorkerInstance.create("svc"))
    changes.wait_for(Change.MEMBERS, mark)


def test_changes_of_another_service_are_not_delivered(backend_factory: BackendKit) -> None:
    kit = backend_factory
    changes = Changes()
    kit.make("svc", on_change=changes).read_settings()
    kit.make("svc2").write_settings({"x": 1}, create_only=False)
    kit.make("svc").write_settings({"x": 1}, create_only=False)
    changes.wait_for(Change.SETTINGS)
    assert changes.events.count(Change.SETTINGS) == 1


def test_settings_create_only_and_overwrite(backend_factory: BackendKit) -> None:
    backend = backend_factory.make()
    assert backend.read_settings() is None
    assert backend.write_settings({"a": 1}, create_only=True)
    assert not backend.write_settings({"a": 2}, create_only=True)
    assert backend.read_settings() == {"a": 1}
    assert backend.write_settings({"a": 3}, create_only=False)
    assert backend.read_settings() == {"a": 3}


def test_concurrent_control_updates_lose_no_increment(backend_factory: BackendKit) -> None:
    kit = backend_factory
    backends = [kit.make(), kit.make()]
    assert backends[0].read_control() == ControlState()
    rounds = 15
    errors: list[BaseException] = []

    def bump(backend: CoordinationBackend) -> None:
        try:
            for _ in range(rounds):
                backend.update_control(lambda s: replace(s, trigger=s.trigger + 1))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(b,)) for b in backends for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert backends[1].read_control() == ControlState(trigger=4 * rounds)


def test_watch_runs_calls_back_now_and_on_each_change_until_false(
    backend_factory: BackendKit,
) -> None:
    kit = backend_factory
    upstream = registered(kit, "up")
    claim = upstream.claim(4, "up")
    assert claim is not None
    began = record(claim, upstream)
    assert upstream.begin_run(claim, began)
    seen: list[RunRecord | None] = []
    done = threading.Event()

    def callback(found: RunRecord | None) -> bool:
        seen.append(found)
        if found is not None and found.state is RunState.DONE:
            done.set()
            return False
        return True

    downstream = kit.make("down")
    downstream.watch_runs("up", 4, callback)
    wait_until(lambda: seen == [began], 5.0, what="the record as it is now")
    ended = replace(began, state=RunState.DONE)
    assert upstream.end_run(claim, ended)
    assert done.wait(5.0)
    assert seen == [began, ended]
    assert upstream.end_run(claim, replace(ended, run_id="later"))
    # Once a second observer has seen that write, the first one (which returned False) would
    # have been called with it too.
    later: list[RunRecord | None] = []
    downstream.watch_runs(
        "up", 4, lambda r: later.append(r) is None and (r is None or r.run_id != "later")
    )
    wait_until(lambda: later and later[-1] and later[-1].run_id == "later", 5.0)
    assert seen == [began, ended]


def test_watch_runs_of_a_missing_record_calls_back_with_none(backend_factory: BackendKit) -> None:
    seen: list[RunRecord | None] = []
    kit = backend_factory
    kit.make("down").watch_runs("up", 0, lambda r: seen.append(r) is None and False)
    wait_until(lambda: seen == [None], 5.0)


def test_unreachable_server_raises_within_the_connect_timeout(
    server_backend_factory: BackendKit,
) -> None:
    """Nothing listens: an error within the connect timeout (at once where a refused
    connection is recognised), never a hang."""
    (port,) = free_ports(1)
    backend = server_backend_factory.make(
        connect=False, hosts=f"127.0.0.1:{port}", connect_timeout=1.0
    )
    began = time.monotonic()
    with pytest.raises(BackendUnavailable):
        backend.connect()
    assert time.monotonic() - began < 1.5


def test_a_silent_server_raises_after_the_connect_timeout(
    private_backend_factory: BackendKit,
) -> None:
    kit = private_backend_factory
    backend = kit.make(connect=False, connect_timeout=1.0)
    with kit.server.paused():
        began = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.connect()
        assert time.monotonic() - began < 1.5


def test_a_pause_shorter_than_the_lease_keeps_it_and_renews_nothing_meanwhile(
    private_backend_factory: BackendKit,
) -> None:
    kit = private_backend_factory
    backend = registered(kit)
    claim = backend.claim(0, "a")
    assert claim is not None
    lease = backend.lease_id
    with kit.server.paused():
        answered, valid = backend.answered_at, backend.lease_valid_until()
        with pytest.raises(BackendUnavailable):
            backend.round_trip(0.3)
        # (Suspended at once, or once the client's own read timeout notices: ZooKeeper's.)
        assert backend.state is not ConnectionState.LOST
        # A failed request renews nothing.
        assert backend.answered_at == answered
        assert backend.lease_valid_until() == valid
    wait_until(lambda: backend.state is ConnectionState.CONNECTED, 3.0, what="connected")
    assert backend.lease_id == lease
    backend.round_trip(1.0)
    assert backend.answered_at > answered
    assert backend.begin_run(claim, record(claim, backend))


def test_a_pause_longer_than_the_lease_loses_it_then_a_new_one_comes(
    private_backend_factory: BackendKit,
) -> None:
    kit = private_backend_factory
    changes = Changes()
    backend = registered(kit, on_change=changes)
    claim = backend.claim(0, "a")
    assert claim is not None
    lease = backend.lease_id
    with kit.server.paused():
        time.sleep(backend.negotiated_timeout + 0.7)
        # Fenced meanwhile: the lease counts as lapsed, whatever the server decides later.
        assert backend.lease_valid_until() < time.monotonic()
    # The server expires the lease once it runs again — unless the client's queued pings reach
    # it first (a resumed server may read them before its expiry timer runs: ZooKeeper's can).
    # Either way the backend ends in one consistent state, never a half of each.
    wait_until(lambda: backend.state is ConnectionState.CONNECTED and backend.lease_id != "", 10.0)
    if backend.lease_id == lease:
        assert backend.registered() and kit.make().claims()[0].token == claim.token
        return
    assert Change.CONNECTION in changes.events
    assert not backend.registered()
    assert not backend.begin_run(claim, record(claim, backend))
    assert kit.make().claims() == {}


def test_tokens_grow_across_a_server_restart(private_backend_factory: BackendKit) -> None:
    kit = private_backend_factory
    a = registered(kit)
    first = a.claim(0, "a")
    assert first is not None
    a.close()
    kit.server.restart()
    b = registered(kit)
    second = b.claim(0, "b")
    assert second is not None and second.token > first.token


@pytest.mark.timeout(90)
def test_no_change_is_lost_across_a_server_restart(private_backend_factory: BackendKit) -> None:
    kit = private_backend_factory
    changes = Changes()
    watcher = registered(kit, on_change=changes)
    watcher.members(), watcher.read_settings(), watcher.read_control()
    lease = watcher.lease_id
    # Changes made after the last read are reported — during the outage itself where a
    # backend's watches fire when its connection drops (ZooKeeper's): the read that follows
    # any event sees everything.
    mark = changes.mark()
    kit.server.stop()
    kit.server.start()
    writer = registered(kit)
    writer.write_settings({"a": 1}, create_only=True)
    writer.update_control(lambda s: replace(s, paused=True))
    for change in (Change.MEMBERS, Change.SETTINGS, Change.CONTROL):
        changes.wait_for(change, mark, timeout=10.0)
    wait_until(lambda: watcher.state is ConnectionState.CONNECTED, 10.0)
    if Guarantee.DURABLE in watcher.guarantees and watcher.lease_id == lease:
        # A durable server restores the lease with a fresh time to live — if the client is
        # back before that runs out (a slow server start can take most of it).
        assert watcher.registered()
    else:
        # Without persistence every key is gone (and a durable server's lease may have run
        # out): a new lease, never a resurrected entry.
        wait_until(lambda: watcher.lease_id not in ("", lease), 10.0, what="a new lease")
        assert not watcher.registered()
        watcher.register(WorkerInstance.create("svc"))
    # ... and the reads that follow see every change.
    assert writer.lease_id in {m.lease for m in watcher.members()}
    assert watcher.read_settings() == {"a": 1} and watcher.read_control().paused
