"""The in-process ``memory`` backend: the seam without a server, for unit tests and demos.

Every :class:`MemoryBackend` built with the same ``hosts`` name shares one :class:`MemoryStore`
— the "server" — so several ``Worker``s in one process form a cluster::

    DiscoveryConfig(protocol="memory", hosts="demo", session_timeout=2)

The store keeps leases with a time to live on its own monotonic clock (as a server would) and
expires them on a timer thread of its own: a backend whose keep-alives stop (:meth:`MemoryBackend.
partition`, a test's way to cut it off) loses its lease, its member entry and its claims, and
the others are told. Fencing tokens come from one revision counter that only grows. Nothing is
persisted; a store lives as long as the process (:func:`reset_stores` forgets them all).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    ControlState,
    Guarantee,
    Member,
    RunRecord,
    ShardClaim,
)
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendUnavailable, DiscoveryError, LeaseLost
from goworker_py.instance import WorkerInstance

_stores_lock = threading.Lock()
_stores: dict[str, MemoryStore] = {}


def store_for(name: str) -> MemoryStore:
    """The process-wide store called ``name`` (made on first use)."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore(name)
        return store


def reset_stores() -> None:
    """Forget every store (tests)."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.close()


class MemoryStore:
    """The shared state of every service of one ``memory`` cluster: the "server"."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.RLock()
        self._revision = itertools.count(1)
        self._ranks = itertools.count(0)
        #: ``{lease: (expires at, time to live)}``
        self.leases: dict[str, tuple[float, float]] = {}
        #: ``{service: {member key: Member}}``
        self.members: dict[str, dict[str, Member]] = {}
        #: ``{service: {shard: ShardClaim}}`` (``handle`` = the holding lease)
        self.claims: dict[str, dict[int, ShardClaim]] = {}
        self.runs: dict[str, dict[int, RunRecord]] = {}
        self.settings: dict[str, dict[str, Any]] = {}
        self.control: dict[str, ControlState] = {}
        self._watchers: list[tuple[str, Callable[[Change, frozenset[int]], None]]] = []
        self._run_watchers: list[tuple[str, int, Callable[[RunRecord | None], bool]]] = []
        self._wake = threading.Event()
        self._closed = False
        self._expirer = threading.Thread(
            target=self._expire_loop, name=f"goworker:memory-store:{name}", daemon=True
        )
        self._expirer.start()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    # -- leases -----------------------------------------------------------------------------------

    def grant(self, ttl: float) -> str:
        with self._lock:
            lease = f"{next(self._revision):#x}"
            self.leases[lease] = (time.monotonic() + ttl, ttl)
        self._wake.set()
        return lease

    def keepalive(self, lease: str) -> bool:
        with self._lock:
            held = self.leases.get(lease)
            if held is None:
                return False
            self.leases[lease] = (time.monotonic() + held[1], held[1])
            return True

    def revoke(self, lease: str) -> None:
        """End ``lease`` now, as the server does when it expires (tests call it too)."""
        members_left: set[str] = set()
        released: dict[str, set[int]] = {}
        with self._lock:
            if self.leases.pop(lease, None) is None:
                return
            for service, members in self.members.items():
                for key in [k for k, m in members.items() if m.lease == lease]:
                    del members[key]
                    members_left.add(service)
            for service, claims in self.claims.items():
                for shard in [s for s, c in claims.items() if c.handle == lease]:
                    del claims[shard]
                    released.setdefault(service, set()).add(shard)
        for service in members_left:
            self.notify(service, Change.MEMBERS)
        for service, shards in released.items():
            self.notify(service, Change.CLAIMS, frozenset(shards))

    def alive(self, lease: str) -> bool:
        with self._lock:
            held = self.leases.get(lease)
            return held is not None and held[0] > time.monotonic()

    def _expire_loop(self) -> None:
        while not self._closed:
            with self._lock:
                now = time.monotonic()
                expired = [lease for lease, (until, _) in self.leases.items() if until <= now]
                upcoming = min((until for until, _ in self.leases.values()), default=None)
            for lease in expired:
                self.revoke(lease)
            self._wake.wait(None if upcoming is None else max(upcoming - now, 0.001))
            self._wake.clear()

    # -- changes ----------------------------------------------------------------------------------

    def subscribe(self, service: str, callback: Callable[[Change, frozenset[int]], None]) -> None:
        with self._lock:
            self._watchers.append((service, callback))

    def unsubscribe(self, callback: Callable[[Change, frozenset[int]], None]) -> None:
        with self._lock:
            self._watchers = [(s, c) for s, c in self._watchers if c is not callback]

    def notify(self, service: str, change: Change, shards: frozenset[int] = frozenset()) -> None:
        """Tell the service's backends of ``change`` (``shards``: the claims released)."""
        with self._lock:
            callbacks = [c for s, c in self._watchers if s == service]
        for callback in callbacks:
            callback(change, shards)

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        with self._lock:
            current = self.runs.get(service, {}).get(shard)
            self._run_watchers.append((service, shard, callback))
        if not callback(current):
            self._drop_run_watcher(callback)

    def _drop_run_watcher(self, callback: Callable[[RunRecord | None], bool]) -> None:
        with self._lock:
            self._run_watchers = [w for w in self._run_watchers if w[2] is not callback]

    def write_run(self, service: str, record: RunRecord) -> None:
        with self._lock:
            self.runs.setdefault(service, {})[record.shard] = record
            watchers = [w for w in self._run_watchers if w[:2] == (service, record.shard)]
        for _, _, callback in watchers:
            if not callback(record):
                self._drop_run_watcher(callback)

    def next_revision(self) -> int:
        return next(self._revision)

    def next_rank(self) -> int:
        return next(self._ranks)

    @property
    def lock(self) -> threading.RLock:
        return self._lock


class MemoryBackend:
    """One instance's connection to a :class:`MemoryStore` (see the module docstring)."""

    protocol = "memory"
    guarantees = frozenset(
        {
            Guarantee.TOKENS_GROW,
            Guarantee.CLAIMS_VANISH_WITH_LEASE,
            Guarantee.FENCED_BEGIN,
            Guarantee.SERVER_EXPIRY,
        }
    )

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError("a memory backend needs a store name: DiscoveryConfig(hosts='x')")
        self.config = config
        self.service = service
        self.store = store_for(config.hosts)
        self.ttl = float(config.session_timeout)
        self._on_change: Callable[[Change], None] = lambda change: None
        self._lease = ""
        self._state = ConnectionState.SUSPENDED
        self._answered_at = time.monotonic()
        self._partitioned = False
        #: Shards whose claim this instance found held: their release is a CLAIMS change.
        self._awaited: set[int] = set()
        self._member: str | None = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- faults (tests) ---------------------------------------------------------------------------

    def partition(self) -> None:
        """Cut this backend off: every call fails and keep-alives stop (the lease runs out)."""
        self._partitioned = True
        self._set_state(ConnectionState.SUSPENDED)

    def heal(self) -> None:
        """End :meth:`partition`: the next keep-alive finds the lease — or that it is gone."""
        self._partitioned = False

    def _call(self, what: str) -> float:
        """Before a call: fail when cut off; return its send time."""
        if self._partitioned or self._stop.is_set():
            raise BackendUnavailable(f"memory store {self.store.name!r} unreachable: {what}")
        return time.monotonic()

    def _answered(self, sent: float) -> None:
        self._answered_at = max(self._answered_at, sent)

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            self._on_change(Change.CONNECTION)

    # -- connection and lease ---------------------------------------------------------------------

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        if on_change is not None:
            self._on_change = on_change
        sent = self._call("connecting")
        self.store.subscribe(self.service, self._changed)
        self._lease = self.store.grant(self.ttl)
        self._answered(sent)
        self._state = ConnectionState.CONNECTED
        self._keeper = threading.Thread(
            target=self._keep_alive, name="goworker:memory-keepalive", daemon=True
        )
        self._keeper.start()

    def _changed(self, change: Change, shards: frozenset[int]) -> None:
        if change is Change.CLAIMS:
            # Only a claim this instance found held (as ZooKeeper's one-shot watch on it).
            with self.store.lock:
                waited = self._awaited & shards
                self._awaited -= waited
            if not waited:
                return
        self._on_change(change)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3.0):
            if self._partitioned:
                continue
            sent = time.monotonic()
            if self.store.keepalive(self._lease):
                self._answered(sent)
                self._set_state(ConnectionState.CONNECTED)
                continue
            # The store expired the lease: a new one, as a ZooKeeper client gets a new session.
            self._member = None
            self._set_state(ConnectionState.LOST)
            self._lease = self.store.grant(self.ttl)
            self._answered(sent)
            self._set_state(ConnectionState.CONNECTED)

    def close(self) -> None:
        self._stop.set()
        self._state = ConnectionState.LOST
        self.store.unsubscribe(self._changed)
        self.store.revoke(self._lease)

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def lease_id(self) -> str:
        return self._lease

    @property
    def negotiated_timeout(self) -> float:
        return self.ttl

    @property
    def answered_at(self) -> float:
        return self._answered_at

    def lease_valid_until(self) -> float:
        return self._answered_at + self.ttl

    def round_trip(self, timeout: float) -> None:
        sent = self._call("a round trip")
        self._answered(sent)

    def _live_lease(self, what: str) -> None:
        if not self.store.alive(self._lease):
            raise LeaseLost(f"the memory store expired lease {self._lease} ({what})")

    # -- membership -------------------------------------------------------------------------------

    def register(self, instance: WorkerInstance) -> Member:
        sent = self._call("registering")
        with self.store.lock:
            self._live_lease("registering")
            key = f"member-{self.store.next_revision()}"
            member = Member(key, self.store.next_rank(), self._lease, instance)
            self.store.members.setdefault(self.service, {})[key] = member
        self._member = key
        self._answered(sent)
        self.store.notify(self.service, Change.MEMBERS)
        return member

    def unregister(self) -> None:
        if self._member is None:
            return
        with self.store.lock:
            self.store.members.get(self.service, {}).pop(self._member, None)
        self._member = None
        self.store.notify(self.service, Change.MEMBERS)

    def registered(self) -> bool:
        self._call("reading this instance's entry")
        return self._member is not None and self._member in self.store.members.get(self.service, {})

    def publish(self, instance: WorkerInstance) -> None:
        from goworker_py.errors import MemberGone

        self._call("publishing")
        with self.store.lock:
            members = self.store.members.get(self.service, {})
            if self._member is None:
                raise MemberGone("this instance is not registered")
            current = members.get(self._member)
            if current is None:
                raise MemberGone(f"this instance's entry {self._member} vanished")
            members[self._member] = replace(current, instance=instance)
        self.store.notify(self.service, Change.MEMBERS)

    def members(self) -> list[Member]:
        self._call("reading the members")
        with self.store.lock:
            return sorted(self.store.members.get(self.service, {}).values(), key=lambda m: m.rank)

    # -- claims -----------------------------------------------------------------------------------

    def claim(self, shard: int, owner: str) -> ShardClaim | None:
        self._call(f"claiming shard {shard}")
        with self.store.lock:
            self._live_lease(f"claiming shard {shard}")
            claims = self.store.claims.setdefault(self.service, {})
            held = claims.get(shard)
            if held is not None:
                if held.handle == self._lease and held.owner == owner:
                    return held
                self._awaited.add(shard)
                return None
            claim = ShardClaim(shard, self.store.next_revision(), owner, self._lease)
            claims[shard] = claim
            return claim

    def release(self, claim: ShardClaim) -> None:
        self._call(f"releasing shard {claim.shard}")
        with self.store.lock:
            claims = self.store.claims.get(self.service, {})
            if claims.get(claim.shard) != claim:
                return
            del claims[claim.shard]
        self.store.notify(self.service, Change.CLAIMS, frozenset({claim.shard}))

    def claims(self) -> dict[int, ShardClaim]:
        self._call("reading the claims")
        with self.store.lock:
            return dict(self.store.claims.get(self.service, {}))

    # -- run records ------------------------------------------------------------------------------

    def read_run(self, shard: int) -> RunRecord | None:
        self._call(f"reading the run record of shard {shard}")
        with self.store.lock:
            return self.store.runs.get(self.service, {}).get(shard)

    def runs(self) -> dict[int, RunRecord]:
        self._call("reading the run records")
        with self.store.lock:
            return dict(self.store.runs.get(self.service, {}))

    def begin_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        return self._fenced_write(claim, record)

    def end_run(self, claim: ShardClaim, record: RunRecord) -> bool:
        return self._fenced_write(claim, record)

    def _fenced_write(self, claim: ShardClaim, record: RunRecord) -> bool:
        sent = self._call(f"writing the run record of shard {claim.shard}")
        with self.store.lock:
            held = self.store.claims.get(self.service, {}).get(claim.shard)
            member = self.store.members.get(self.service, {}).get(self._member or "")
            if held != claim or member is None or member.lease != self._lease:
                return False
            self.store.write_run(self.service, record)
        self._answered(sent)
        return True

    def watch_runs(
        self, service: str, shard: int, callback: Callable[[RunRecord | None], bool]
    ) -> None:
        self._call(f"watching {service}'s run record of shard {shard}")
        self.store.watch_runs(service, shard, callback)

    # -- settings and control ---------------------------------------------------------------------

    def read_settings(self) -> dict[str, Any] | None:
        self._call("reading the settings")
        with self.store.lock:
            stored = self.store.settings.get(self.service)
            return None if stored is None else json.loads(json.dumps(stored))

    def write_settings(self, settings: dict[str, Any], create_only: bool) -> bool:
        self._call("writing the settings")
        with self.store.lock:
            if create_only and self.service in self.store.settings:
                return False
            self.store.settings[self.service] = json.loads(json.dumps(settings))
        self.store.notify(self.service, Change.SETTINGS)
        return True

    def read_control(self) -> ControlState:
        self._call("reading the control state")
        with self.store.lock:
            return self.store.control.get(self.service, ControlState())

    def update_control(self, change: Callable[[ControlState], ControlState]) -> ControlState:
        self._call("writing the control state")
        with self.store.lock:
            state = change(self.store.control.get(self.service, ControlState()))
            self.store.control[self.service] = state
        self.store.notify(self.service, Change.CONTROL)
        return state
