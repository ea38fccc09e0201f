"""The Redis coordination backend against real ``redis-server`` processes.

The first half is written against the :class:`CoordinationBackend` protocol only, through a
``backend_factory`` (here: Redis's), so that it can join the conformance suite run against
every backend. The second half injects Redis's own faults: a client partitioned by a TCP proxy,
a server paused (``SIGSTOP``) or restarted without persistence (every key gone), a claim lost
while its lease lived (what an asynchronous failover does), credentials refused.

Every wait is on a condition, bounded; the session timeout is T = 1.5 s.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from helpers import wait_until
from loguru import logger
from reliability.proxy import TcpProxy

from goworker_py import DiscoveryConfig
from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    CoordinationBackend,
    Guarantee,
    RunRecord,
    RunState,
)
from goworker_py.cluster.backends.redis import RedisBackend
from goworker_py.cluster.discovery import get_discovery
from goworker_py.errors import AccessDenied, BackendMissing, BackendUnavailable, LeaseLost
from goworker_py.instance import WorkerInstance
from goworker_py.testing.network import free_ports
from goworker_py.testing.redis import RedisServer

T = 1.5  # the session timeout (lease TTL) of these tests


class Events:
    """An ``on_change`` callback that records every change, and waits for one."""

    def __init__(self) -> None:
        self.seen: list[Change] = []
        self._cond = threading.Condition()

    def __call__(self, change: Change) -> None:
        with self._cond:
            self.seen.append(change)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.seen)

    def wait_for(self, change: Change, timeout: float, since: int = 0) -> float:
        """Wait until ``change`` was seen after mark ``since``; return when (monotonic)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while change not in self.seen[since:]:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {change} within {timeout} s: {self.seen[since:]}")
                self._cond.wait(left)
        return time.monotonic()


class RedisBackends:
    """Makes connected Redis backends on one server and namespace; closes them all after."""

    def __init__(self, hosts: str, namespace: str) -> None:
        self.hosts = hosts
        self.namespace = namespace
        self.made: list[RedisBackend] = []

    def config(self, **overrides: Any) -> DiscoveryConfig:
        fields: dict[str, Any] = {
            "protocol": "redis",
            "hosts": self.hosts,
            "session_timeout": T,
            "connect_timeout": 1.0,
            "namespace": self.namespace,
        }
        fields.update(overrides)
        return DiscoveryConfig(**fields)

    def __call__(
        self, service: str = "svc", events: Events | None = None, **overrides: Any
    ) -> RedisBackend:
        backend = RedisBackend(self.config(**overrides), service)
        backend.connect(events)
        self.made.append(backend)
        return backend

    def close(self) -> None:
        for backend in self.made:
            backend.close()


BackendFactory = Callable[..., CoordinationBackend]


@pytest.fixture
def redis_backend_factory(redis_server: RedisServer, redis_namespace: str) -> Iterator[Any]:
    """Connected Redis backends on the shared server, in this test's own namespace."""
    backends = RedisBackends(redis_server.hosts, redis_namespace)
    yield backends
    backends.close()


@pytest.fixture
def backend_factory(redis_backend_factory: RedisBackends) -> BackendFactory:
    return redis_backend_factory


@pytest.fixture
def private_backends(redis_private: RedisServer, redis_namespace: str) -> Iterator[RedisBackends]:
    """Redis backends on a server of this test's own (to pause or restart)."""
    backends = RedisBackends(redis_private.hosts, redis_namespace)
    yield backends
    backends.close()


def instance(service: str = "svc") -> WorkerInstance:
    return WorkerInstance.create(service)


def record(claim_owner: str, lease: str, shard: int, token: int, **fields: Any) -> RunRecord:
    return RunRecord(shard, claim_owner, lease, fields.pop("run_id", "r1"), 100.0, token, **fields)


# -- the protocol ------------------------------------------------------------------------------


def test_it_declares_what_it_guarantees() -> None:
    assert RedisBackend.protocol == "redis"
    assert Guarantee.DURABLE not in RedisBackend.guarantees
    assert {Guarantee.FENCED_BEGIN, Guarantee.SERVER_EXPIRY} <= RedisBackend.guarantees


def test_connect_register_and_close(backend_factory: BackendFactory) -> None:
    a, observer = backend_factory(), backend_factory()
    assert a.state is ConnectionState.CONNECTED
    member = a.register(instance())
    assert member.lease == a.lease_id != ""
    assert a.registered()
    assert [m.instance.id for m in observer.members()] == [member.instance.id]
    assert a.lease_valid_until() > time.monotonic() + T / 2
    a.close()
    assert observer.members() == []  # at once: a close deletes, nothing waits for a TTL


def test_join_one_five_one_in_rank_order(backend_factory: BackendFactory) -> None:
    events = Events()
    first = backend_factory(events=events)
    ids = [first.register(instance()).instance.id]
    others = [backend_factory() for _ in range(4)]
    mark = events.mark()
    ranks = []
    for other in others:
        member = other.register(instance())
        ids.append(member.instance.id)
        ranks.append(member.rank)
    events.wait_for(Change.MEMBERS, 2.0, since=mark)
    members = first.members()
    assert [m.instance.id for m in members] == ids
    assert [m.rank for m in members] == sorted(m.rank for m in members)
    assert len({m.rank for m in members}) == 5 and ranks == sorted(ranks)
    for other in others:
        other.unregister()
    assert [m.instance.id for m in first.members()] == ids[:1]


def test_register_twice_keeps_one_entry_and_its_rank(backend_factory: BackendFactory) -> None:
    a = backend_factory()
    once = a.register(instance())
    again = a.register(once.instance)  # a retry after a lost reply
    assert (again.rank, again.key) == (once.rank, once.key)
    assert len(a.members()) == 1


def test_publish_replaces_member_data(backend_factory: BackendFactory) -> None:
    events = Events()
    a, observer = backend_factory(), backend_factory(events=events)
    me = a.register(instance()).instance
    mark = events.mark()
    a.publish(replace(me, shards=(1, 2)))
    events.wait_for(Change.MEMBERS, 2.0, since=mark)
    assert observer.members()[0].instance.shards == (1, 2)


def test_a_claim_is_exclusive_and_released_only_as_itself(backend_factory: BackendFactory) -> None:
    a, b = backend_factory(), backend_factory()
    a_id, b_id = a.register(instance()).instance.id, b.register(instance()).instance.id
    first = a.claim(0, a_id)
    assert first is not None and first.owner == a_id and isinstance(first.token, int)
    assert b.claim(0, b_id) is None
    assert a.claim(0, a_id) == first  # a retried claim finds its own
    assert set(b.claims()) == {0} and b.claims()[0].token == first.token
    a.release(first)
    second = b.claim(0, b_id)
    assert second is not None and second.token > first.token
    a.release(first)  # no longer this claim: nothing happens
    assert a.claims()[0].owner == b_id


def test_tokens_grow_with_every_new_owner(backend_factory: BackendFactory) -> None:
    backends = [backend_factory() for _ in range(3)]
    owners = [b.register(instance()).instance.id for b in backends]
    tokens = []
    for turn in range(6):
        backend, owner = backends[turn % 3], owners[turn % 3]
        claim = backend.claim(4, owner)
        assert claim is not None
        tokens.append(claim.token)
        backend.release(claim)
    assert tokens == sorted(tokens) and len(set(tokens)) == 6


def test_a_claim_vanishes_when_its_owner_closes(backend_factory: BackendFactory) -> None:
    events = Events()
    a, b = backend_factory(), backend_factory(events=events)
    a_id, b_id = a.register(instance()).instance.id, b.register(instance()).instance.id
    held = a.claim(2, a_id)
    assert held is not None and b.claim(2, b_id) is None
    mark = events.mark()
    a.close()
    events.wait_for(Change.CLAIMS, 2.0, since=mark)
    taken = b.claim(2, b_id)
    assert taken is not None and taken.token > held.token


def test_begin_and_end_run_are_fenced(backend_factory: BackendFactory) -> None:
    a, b = backend_factory(), backend_factory()
    a_id, b_id = a.register(instance()).instance.id, b.register(instance()).instance.id
    claim = a.claim(1, a_id)
    assert claim is not None
    running = record(a_id, a.lease_id, 1, claim.token)
    assert a.begin_run(claim, running)
    assert b.read_run(1) == running
    done = replace(running, state=RunState.DONE, completed=(100.0,))
    assert a.end_run(claim, done)
    assert b.runs() == {1: done}
    a.release(claim)
    assert not a.begin_run(claim, running)  # the claim is gone
    assert not a.end_run(claim, replace(running, state=RunState.FAILED))
    taken = b.claim(1, b_id)
    assert taken is not None
    assert not a.begin_run(claim, running)  # someone else's claim now
    assert b.read_run(1) == done
    b.unregister()
    assert not b.begin_run(taken, record(b_id, b.lease_id, 1, taken.token))  # no member entry


def test_settings_create_only_and_overwrite(backend_factory: BackendFactory) -> None:
    events = Events()
    a, b = backend_factory(), backend_factory(events=events)
    assert a.read_settings() is None
    mark = events.mark()
    assert a.write_settings({"total": 3}, create_only=True)
    events.wait_for(Change.SETTINGS, 2.0, since=mark)
    assert not b.write_settings({"total": 5}, create_only=True)
    assert b.read_settings() == {"total": 3}
    assert b.write_settings({"total": 5}, create_only=False)
    assert a.read_settings() == {"total": 5}


def test_concurrent_control_updates_lose_no_increment(backend_factory: BackendFactory) -> None:
    events = Events()
    watcher = backend_factory(events=events)
    writers = [backend_factory() for _ in range(2)]
    assert watcher.read_control() == ControlState()
    mark = events.mark()

    def bump(backend: CoordinationBackend) -> None:
        for _ in range(25):
            backend.update_control(lambda s: replace(s, trigger=s.trigger + 1))

    threads = [threading.Thread(target=bump, args=(w,)) for w in writers for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert watcher.read_control().trigger == 150
    events.wait_for(Change.CONTROL, 2.0, since=mark)
    paused = writers[0].update_control(lambda s: replace(s, paused=True))
    assert paused == ControlState(paused=True, trigger=150) == watcher.read_control()


def test_watch_runs_of_another_service(backend_factory: BackendFactory) -> None:
    upstream, downstream = backend_factory("up"), backend_factory("down")
    owner = upstream.register(instance("up")).instance.id
    seen: list[RunRecord | None] = []
    arrived = threading.Event()

    def on_record(found: RunRecord | None) -> bool:
        seen.append(found)
        arrived.set()
        return found is None or found.state is not RunState.DONE

    downstream.watch_runs("up", 0, on_record)
    assert seen == [None]
    claim = upstream.claim(0, owner)
    assert claim is not None
    running = record(owner, upstream.lease_id, 0, claim.token)
    assert upstream.begin_run(claim, running)
    wait_until(lambda: running in seen, 2.0, what="the running record reached the watcher")
    done = replace(running, state=RunState.DONE)
    assert upstream.end_run(claim, done)
    wait_until(lambda: seen[-1] == done, 2.0, what="the done record reached the watcher")
    count = len(seen)
    assert upstream.begin_run(claim, replace(running, run_id="r2"))
    upstream.round_trip(1.0)  # the message was published before this answer
    time.sleep(0.2)  # a dropped watch must stay silent: give a stray call the time to show
    assert len(seen) == count


# -- Redis's own faults ------------------------------------------------------------------------


def test_an_expired_claim_vanishes_and_its_member_never_resurrects(
    redis_server: RedisServer, redis_backend_factory: RedisBackends
) -> None:
    events = Events()
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        a = redis_backend_factory(hosts=proxy.hosts)
        b = redis_backend_factory(events=events)
        old = a.register(instance())
        b_id = b.register(instance()).instance.id
        held = a.claim(3, old.instance.id)
        assert held is not None and b.claim(3, b_id) is None
        mark = events.mark()
        proxy.blackhole()  # a partition: A's refreshes fail, the server's TTLs run out
        fence = a.lease_valid_until()
        vanished = events.wait_for(Change.CLAIMS, T + 1.5, since=mark)
        # Found by the PTTL-timed poll (no keyspace notifications on this server).
        assert vanished - fence < 0.5
        assert a.answered_at + T == fence  # failed refreshes renewed nothing
        taken = b.claim(3, b_id)
        assert taken is not None and taken.token > held.token
        assert time.monotonic() > fence  # A's own deadline had passed before B took over
        events.wait_for(Change.MEMBERS, 1.0, since=mark)
        assert [m.instance.id for m in b.members()] == [b_id]
        proxy.heal()
        wait_until(lambda: a.leases_lost == 1, 3.0, what="A found its lease gone")
        wait_until(lambda: a.lease_id not in ("", old.lease), 3.0, what="a new lease")
        assert not a.registered()  # never re-created by a refresh
        assert not a.begin_run(held, record(old.instance.id, old.lease, 3, held.token))
        with pytest.raises(LeaseLost):
            a.claim(4, old.instance.id)  # not registered under the new lease
        again = a.register(old.instance)
        assert again.lease != old.lease and again.rank > old.rank
        assert [m.lease for m in b.members()][-1] == again.lease


def test_a_claim_lost_while_its_lease_lives_loses_the_lease(
    redis_server: RedisServer, redis_backend_factory: RedisBackends
) -> None:
    events = Events()
    a = redis_backend_factory(events=events)
    me = a.register(instance())
    claim = a.claim(0, me.instance.id)
    assert claim is not None
    lease = a.lease_id
    mark = events.mark()
    with _raw_client(redis_server) as raw:
        raw.delete(f"{a.prefix}claim:0")  # what a failover that lost the claim leaves
    events.wait_for(Change.CONNECTION, T, since=mark)
    wait_until(lambda: a.leases_lost == 1 and a.lease_id not in ("", lease), 2.0)
    assert not a.registered()


def test_a_new_lease_the_ticker_takes_while_the_old_one_is_reported_lost_stays_connected(
    redis_server: RedisServer, redis_backend_factory: RedisBackends
) -> None:
    """A thread that finds the lease gone (here the test's round trip, in a worker the
    supervisor's) reports it LOST while the ticker may already take a new one: the state must
    end CONNECTED on the new lease, never LOST for good with a live lease (the instance would
    never register again)."""
    a = redis_backend_factory()
    old = a.register(instance())
    reporter = threading.get_ident()

    def in_the_gap(message: Any) -> None:
        # The report is logged between taking the lease away and announcing the state: hold
        # the reporter there until the ticker (on its own timer, every T/3) took a new lease.
        if threading.get_ident() == reporter and "lost" in str(message):
            wait_until(lambda: a.lease_id not in ("", old.lease), 2 * T, what="a new lease")

    ticked = a.answered_at
    wait_until(lambda: a.answered_at > ticked, T, what="a tick")  # the next is T/3 away
    sink = logger.add(in_the_gap, level="WARNING")
    try:
        with _raw_client(redis_server) as raw:
            raw.delete(f"{a.prefix}lease:{old.lease}")
        with contextlib.suppress(LeaseLost):
            a.round_trip(T)
    finally:
        logger.remove(sink)
    assert a.leases_lost == 1 and a.lease_id not in ("", old.lease)
    wait_until(lambda: a.state is ConnectionState.CONNECTED, T, what="CONNECTED on the new lease")
    assert a.register(old.instance).lease == a.lease_id


def test_changes_published_while_pubsub_was_down_are_reported(
    redis_private: RedisServer, private_backends: RedisBackends
) -> None:
    events = Events()
    a, b = private_backends(), private_backends(events=events)
    mark = events.mark()
    with _raw_client(redis_private) as raw:
        raw.command("CLIENT", "KILL", "TYPE", "pubsub")  # B's subscription is cut
    a.write_settings({"total": 2}, create_only=False)  # published while B may not listen
    for change in (Change.MEMBERS, Change.CLAIMS, Change.SETTINGS, Change.CONTROL):
        events.wait_for(change, 3.0, since=mark)  # everything reported again once resubscribed
    assert b.read_settings() == {"total": 2}


def test_a_silently_lost_message_is_caught_by_the_change_counter(
    monkeypatch: pytest.MonkeyPatch, redis_backend_factory: RedisBackends
) -> None:
    events = Events()
    a, b = redis_backend_factory(), redis_backend_factory(events=events)
    assert b._feed is not None
    listener = b._feed._listener
    monkeypatch.setattr(listener, "_on_message", lambda channel, data: None)  # a dead socket
    mark = events.mark()
    a.update_control(lambda s: replace(s, trigger=1))
    events.wait_for(Change.CONTROL, T, since=mark)  # within two TICKs (2 T/3)
    assert b.read_control().trigger == 1


def test_server_pause_shorter_than_the_lease_keeps_it(
    redis_private: RedisServer, private_backends: RedisBackends
) -> None:
    # TTL 3 s, a refresh every second, each request timing out after 0.3 s: SUSPENDED within
    # 1.3 s of the pause, while the lease lasts at least 2 s past it.
    a = private_backends(session_timeout=3.0, connect_timeout=0.3)
    a.register(instance())
    lease = a.lease_id
    with redis_private.paused():
        before = a.answered_at
        wait_until(lambda: a.state is ConnectionState.SUSPENDED, 1.5, what="SUSPENDED")
        assert a.answered_at == before  # no answer, no renewal
    wait_until(lambda: a.state is ConnectionState.CONNECTED, 2.0, what="CONNECTED again")
    wait_until(lambda: a.answered_at > before, 2.0, what="a refresh answered")
    assert (a.lease_id, a.leases_lost) == (lease, 0)
    assert a.registered()


def test_server_pause_longer_than_the_lease_loses_it(
    redis_private: RedisServer, private_backends: RedisBackends
) -> None:
    a = private_backends()
    old = a.register(instance())
    with redis_private.paused():
        time.sleep(T + 0.3)
        assert time.monotonic() > a.lease_valid_until()  # self-fencing would have tripped
    wait_until(lambda: a.leases_lost == 1, T, what="LOST")
    wait_until(lambda: a.lease_id not in ("", old.lease), T, what="a new lease")
    assert not a.registered()
    again = a.register(old.instance)
    assert again.lease == a.lease_id and again.rank > old.rank


def test_tokens_grow_after_a_restart_without_persistence(
    redis_private: RedisServer, private_backends: RedisBackends
) -> None:
    events = Events()
    a, b = private_backends(events=events), private_backends()
    me, other = a.register(instance()), b.register(instance())
    first = a.claim(7, me.instance.id)
    assert first is not None
    assert a.begin_run(first, record(me.instance.id, me.lease, 7, first.token))
    mark = events.mark()
    redis_private.restart()  # every key gone: leases, claims, counters, run records
    events.wait_for(Change.CONNECTION, 3.0, since=mark)
    wait_until(lambda: a.lease_id not in ("", me.lease), 3.0, what="a new lease for A")
    wait_until(lambda: b.lease_id not in ("", other.lease), 3.0, what="a new lease for B")
    events.wait_for(Change.MEMBERS, 3.0, since=mark)  # everything is reported again
    assert a.read_run(7) is None and a.members() == []
    b_id = b.register(other.instance).instance.id
    after = b.claim(7, b_id)
    assert after is not None and after.token > first.token


def test_keyspace_notifications_are_used_when_on(redis_namespace: str) -> None:
    with RedisServer(notify_keyspace_events="Ex") as server:
        backends = RedisBackends(server.hosts, redis_namespace)
        try:
            events = Events()
            with TcpProxy("127.0.0.1", server.port) as proxy:
                a = backends(hosts=proxy.hosts)
                b = backends(events=events)
                assert b._keyspace == ["__keyevent@0__:expired"]
                held = a.claim(0, a.register(instance()).instance.id)
                assert held is not None
                # b waits for shard 0: its claim's expiry is a change for b.
                assert b.claim(0, b.register(instance()).instance.id) is None
                mark = events.mark()
                proxy.blackhole()
                fence = a.lease_valid_until()
                assert events.wait_for(Change.CLAIMS, T + 1.5, since=mark) - fence < 0.5
        finally:
            backends.close()


def test_unreachable_redis_is_unavailable_within_the_connect_timeout(
    redis_private: RedisServer,
) -> None:
    port = free_ports(1)[0]
    for hosts in (f"127.0.0.1:{port}", redis_private.hosts):
        config = DiscoveryConfig(protocol="redis", hosts=hosts, connect_timeout=0.5)
        backend = RedisBackend(config, "svc")
        began = time.monotonic()
        with (
            redis_private.paused(),
            pytest.raises(BackendUnavailable, match=r"did not answer within 0\.5 s"),
        ):
            backend.connect()
        assert time.monotonic() - began < 1.0


def test_credentials(redis_namespace: str) -> None:
    with RedisServer(password="s3cret", users={"alice": "wonder"}) as server:
        url = f"redis://{server.hosts}"
        for wrong in (
            f"redis://:nope@{server.hosts}",
            url,  # no password at all
            f"redis://alice:nope@{server.hosts}",
        ):
            backend = RedisBackend(DiscoveryConfig.from_url(wrong, connect_timeout=1.0), "svc")
            began = time.monotonic()
            with pytest.raises(AccessDenied):
                backend.connect()
            assert time.monotonic() - began < 0.5  # refused, not timed out
        for right in (server.url(password="s3cret"), server.url("alice", "wonder", db=2)):
            config = DiscoveryConfig.from_url(right, namespace=redis_namespace)
            backend = RedisBackend(config, "svc")
            backend.connect()
            try:
                assert backend.register(instance()).rank == 1  # db 0 and db 2 are apart
            finally:
                backend.close()


def test_round_trips_per_run_and_idle_requests(backend_factory: BackendFactory) -> None:
    a = backend_factory()
    assert isinstance(a, RedisBackend)
    me = a.register(instance())
    claim = a.claim(0, me.instance.id)
    assert claim is not None
    before = a.requests_sent
    running = record(me.instance.id, me.lease, 0, claim.token)
    assert a.begin_run(claim, running)
    assert a.end_run(claim, replace(running, state=RunState.DONE))
    assert a.requests_sent - before == 2
    before, began = a.requests_sent, time.monotonic()
    time.sleep(T)
    rate = (a.requests_sent - before) / (time.monotonic() - began)
    assert rate <= 3 / T + 1  # one TICK every T/3 (plus at most one early look)


def test_the_registry_builds_it_and_names_the_extra_when_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = DiscoveryConfig.from_url("redis://127.0.0.1:6379/1")
    assert isinstance(get_discovery(config, "svc"), RedisBackend)
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    for name in [m for m in sys.modules if m.startswith("goworker_py.cluster.backends.redis")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(BackendMissing, match=r"pip install 'goworker-py\[redis\]'"):
        get_discovery(config, "svc")


class _raw_client:
    """A bare RESP client for what a test does behind the backend's back (no redis-py)."""

    def __init__(self, server: RedisServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=2.0)

    def __enter__(self) -> _raw_client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def command(self, *args: str) -> bytes:
        parts = [arg.encode() for arg in args]
        self.sock.sendall(
            b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        )
        return self.sock.recv(4096)

    def delete(self, key: str) -> None:
        assert self.command("DEL", key) == b":1\r\n", json.dumps(key)


def test_tls(redis_namespace: str) -> None:
    with RedisServer(tls=True) as server:
        trusted = DiscoveryConfig.from_url(
            server.url(), ca=str(server.ca_path), namespace=redis_namespace, connect_timeout=1.0
        )
        for config in (trusted, replace(trusted, ca=None, verify_certs=False)):
            backend = RedisBackend(config, "svc")
            backend.connect()
            try:
                member = backend.register(instance())
                assert [m.lease for m in backend.members()] == [member.lease]
            finally:
                backend.close()
        untrusted = RedisBackend(replace(trusted, ca=None, connect_timeout=0.3), "svc")
        with pytest.raises(BackendUnavailable, match="certificate verify failed"):
            untrusted.connect()
