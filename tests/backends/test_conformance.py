"""One conformance suite for every coordination backend (model: tooz's ``TestAPI``).

Each test runs against every backend in :data:`BACKENDS`, with real servers for the real ones
(the ``memory`` backend proves the suite itself and the host's unit tests). What is asserted is
the seam's contract (:mod:`goworker_py.cluster.backend`), nothing backend-specific.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from helpers import wait_until

from goworker_py import BackendUnavailable, DiscoveryConfig, WorkerInstance
from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    CoordinationBackend,
    Guarantee,
    RunRecord,
    RunState,
)
from goworker_py.cluster.backends.memory import reset_stores
from goworker_py.cluster.discovery import get_discovery
from goworker_py.testing import ZooKeeperServer

pytestmark = pytest.mark.timeout(60)

Factory = Callable[..., CoordinationBackend]
#: Backends with a server (``memory`` has none to miss).
SERVER_BACKENDS = ["zookeeper"]
BACKENDS = [*SERVER_BACKENDS, "memory"]


def _config(request: pytest.FixtureRequest, protocol: str) -> DiscoveryConfig:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    if protocol == "zookeeper":
        server: ZooKeeperServer = request.getfixturevalue("zookeeper")
        return DiscoveryConfig(hosts=server.hosts, namespace=namespace)
    if protocol == "memory":
        return DiscoveryConfig(protocol="memory", hosts=namespace, namespace=namespace)
    raise AssertionError(f"no server for {protocol}")


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """``make(service="svc", connect=True, **config)``: a backend of this test's namespace."""
    base = _config(request, request.param)
    made: list[CoordinationBackend] = []

    def factory(
        service: str = "svc", connect: bool = True, **settings: object
    ) -> CoordinationBackend:
        config = replace(base, session_timeout=2.0, connect_timeout=5.0, **settings)
        backend = get_discovery(config, service)
        if connect:
            backend.connect()
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        with contextlib.suppress(Exception):  # already closed by the test
            backend.close()
    reset_stores()


def instance(name: str = "svc") -> WorkerInstance:
    return WorkerInstance.create(name)


def record(backend: CoordinationBackend, shard: int, token: int, run_id: str) -> RunRecord:
    return RunRecord(shard, "me", backend.lease_id, run_id, 1_800_000_000.0, token)


def test_connect_gives_a_lease_and_declares_the_core_guarantees(make: Factory) -> None:
    backend = make()
    assert backend.state is ConnectionState.CONNECTED
    assert backend.lease_id
    assert backend.negotiated_timeout == pytest.approx(2.0, abs=0.01)
    assert backend.lease_valid_until() > time.monotonic()
    sent = time.monotonic()
    backend.round_trip(2.0)
    assert backend.answered_at >= sent
    assert {
        Guarantee.TOKENS_GROW,
        Guarantee.CLAIMS_VANISH_WITH_LEASE,
        Guarantee.FENCED_BEGIN,
        Guarantee.SERVER_EXPIRY,
    } <= backend.guarantees


def test_members_join_and_leave_in_rank_order(make: Factory) -> None:
    backends = [make() for _ in range(5)]
    members = [b.register(instance()) for b in backends]
    listed = backends[0].members()
    assert [m.key for m in listed] == [m.key for m in members]
    assert [m.rank for m in listed] == sorted(m.rank for m in listed)
    assert {m.lease for m in listed} == {b.lease_id for b in backends}
    for backend in backends[1:]:
        backend.unregister()
        assert not backend.registered()
    assert [m.key for m in backends[0].members()] == [members[0].key]
    moved = replace(members[0].instance, shards=(1, 2))
    backends[0].publish(moved)
    wait_until(lambda: backends[0].members()[0].instance.shards == (1, 2), 5.0)


def test_a_claim_is_exclusive_and_its_token_grows_with_each_owner(make: Factory) -> None:
    first, second = make(), make()
    for backend in (first, second):
        backend.register(instance())
    claim = first.claim(0, "first")
    assert claim is not None and claim.owner == "first"
    assert second.claim(0, "second") is None
    assert set(second.claims()) == {0}
    first.release(claim)
    taken = second.claim(0, "second")
    assert taken is not None and taken.token > claim.token
    second.close()
    again = first.claim(0, "first")
    assert again is not None and again.token > taken.token


def test_claims_and_members_vanish_with_the_lease(make: Factory) -> None:
    owner, watcher = make(), make()
    changes: list[Change] = []
    watcher.close()
    watcher = make(connect=False)
    watcher.connect(changes.append)
    owner.register(instance())
    assert owner.claim(3, "owner") is not None
    watcher.members()  # a read, so that later changes are reported
    watcher.claims()
    owner.close()
    wait_until(lambda: not watcher.claims() and not watcher.members(), 10.0)
    wait_until(lambda: Change.MEMBERS in changes, 5.0, what="a members change event")


def test_begin_and_end_are_fenced_by_the_claim_and_the_member(make: Factory) -> None:
    first, second = make(), make()
    first.register(instance())
    second.register(instance())
    claim = first.claim(0, "first")
    assert claim is not None
    begun = record(first, 0, claim.token, "r1")
    assert first.begin_run(claim, begun)
    assert first.read_run(0) == begun
    assert first.end_run(claim, replace(begun, state=RunState.DONE, completed=(1.0,)))
    first.release(claim)
    # The released claim writes nothing any more, and the next owner's record stands.
    taken = second.claim(0, "second")
    assert taken is not None
    theirs = record(second, 0, taken.token, "r2")
    assert second.begin_run(taken, theirs)
    assert not first.begin_run(claim, record(first, 0, claim.token, "stale"))
    assert not first.end_run(claim, replace(begun, state=RunState.DONE))
    assert first.read_run(0) == theirs
    # No member entry, no run either (the claim alone is not enough).
    second.unregister()
    assert not second.begin_run(taken, record(second, 0, taken.token, "r3"))
    assert set(first.runs()) == {0}


def test_run_records_are_watched_across_services(make: Factory) -> None:
    upstream, downstream = make(service="up"), make(service="down")
    upstream.register(instance("up"))
    seen: list[RunRecord | None] = []
    done = threading.Event()

    def on_record(found: RunRecord | None) -> bool:
        seen.append(found)
        if found is not None and found.state is RunState.DONE:
            done.set()
        return not done.is_set()

    downstream.watch_runs("up", 1, on_record)
    claim = upstream.claim(1, "up")
    assert claim is not None
    began = record(upstream, 1, claim.token, "u1")
    assert upstream.begin_run(claim, began)
    assert upstream.end_run(claim, replace(began, state=RunState.DONE, completed=(7.0,)))
    assert done.wait(5.0), f"no DONE record seen: {seen}"
    assert seen[-1] is not None and seen[-1].completed == (7.0,)


def test_settings_are_created_once_then_replaced(make: Factory) -> None:
    first, second = make(), make()
    changes: list[Change] = []
    second.close()
    second = make(connect=False)
    second.connect(changes.append)
    assert first.read_settings() is None
    assert second.read_settings() is None
    assert first.write_settings({"sharding_total_count": 3}, create_only=True)
    assert not second.write_settings({"sharding_total_count": 4}, create_only=True)
    assert second.read_settings() == {"sharding_total_count": 3}
    assert first.write_settings({"sharding_total_count": 5}, create_only=False)
    wait_until(lambda: Change.SETTINGS in changes, 5.0, what="a settings change event")
    assert second.read_settings() == {"sharding_total_count": 5}


def test_control_updates_are_compare_and_set(make: Factory) -> None:
    clients = [make() for _ in range(3)]
    assert clients[0].read_control() == ControlState()

    def bump(client: CoordinationBackend) -> None:
        for _ in range(10):
            client.update_control(lambda state: replace(state, trigger=state.trigger + 1))

    threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert clients[0].read_control().trigger == 30, "a concurrent increment was lost"
    paused = clients[1].update_control(lambda state: replace(state, paused=True))
    assert paused.paused and clients[2].read_control().paused


@pytest.mark.parametrize("protocol", SERVER_BACKENDS)
def test_an_unreachable_server_fails_within_the_connect_timeout(
    protocol: str, request: pytest.FixtureRequest
) -> None:
    """Something listens but never answers: the connect timeout decides, never a hang."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        config = replace(
            _config(request, protocol),
            hosts=f"127.0.0.1:{silent.getsockname()[1]}",
            connect_timeout=1.0,
        )
        backend = get_discovery(config, "svc")
        began = time.monotonic()
        with pytest.raises(BackendUnavailable):
            backend.connect()
        assert time.monotonic() - began < 1.0 + 2.0
    finally:
        silent.close()
