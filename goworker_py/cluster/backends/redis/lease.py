"""The Redis backend's connection and lease: the part of :class:`.redis.RedisBackend` that
keeps the lease alive, and reports what happens to it.

A lease is a hash ``<prefix>lease:<id>`` with a TTL of the session timeout, taken by the first
``register`` (an admin client never holds one). A ticker thread runs the ``TICK`` script every
T/3 — or sooner, right after the next expiry the server reports (a PTTL, a duration: no clock
is compared) — which refreshes the lease, its member key and its claims in one step while they
are all still there, and otherwise reports the lease lost (LOST); the ticker then takes a new
one (``lease_id`` changes) and the host registers again. ``answered_at`` is the send time of the
last refresh the server answered: a failed or timed-out request renews nothing, and
``lease_valid_until()`` is that plus the TTL, which the server's expiry cannot precede.

A server that closes (or resets) the listener's connection may be restarting, and a Redis
without persistence comes back with every key gone: another instance may claim our shards as
soon as it serves again, long before our TTL would have run out. So from that moment the lease
counts as lapsed (``lease_valid_until()`` is the moment of the cut: the host's self-fencing
stops every run at once) until a refresh sent after it is answered — the lease is then still
there (only the connection was lost) or found gone (LOST).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from goworker_py.cluster.backend import Change, ConnectionState, RunRecord
from goworker_py.cluster.backends.redis.changes import ChangeFeed
from goworker_py.cluster.backends.redis.client import (
    Requests,
    make_client,
    parse_hosts,
    reachable_host,
)
from goworker_py.config import DiscoveryConfig
from goworker_py.errors import BackendError, BackendUnavailable, DiscoveryError, LeaseLost

#: Seconds after the server's reported next expiry that the ticker looks again.
EXPIRY_MARGIN = 0.005


class RedisLease:
    """A connection to Redis, its lease, the ticker keeping it, and the change feed."""

    def __init__(self, config: DiscoveryConfig, service: str) -> None:
        if not config.hosts:
            raise DiscoveryError("discovery hosts are empty: set hosts='127.0.0.1:6379'")
        check_service(service)
        for name in ("session_timeout", "connect_timeout"):
            if not getattr(config, name) > 0:
                raise DiscoveryError(f"{name} must be > 0 seconds, got {getattr(config, name)!r}")
        if config.auth_user and not config.auth_password:
            raise DiscoveryError(f"Redis user {config.auth_user!r} needs a password")
        parse_hosts(config.hosts)  # bad hosts fail here, not at connect
        self.config = config
        self.service = service
        self.prefix = self.prefix_of(service)
        self._ttl_ms = max(1, round(config.session_timeout * 1000))
        self._interval = config.session_timeout / 3.0
        #: Seconds any one request may take (a refresh must not outlast its share of the TTL).
        self.request_timeout = max(0.05, min(self._interval, config.connect_timeout))
        self._holder = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._lease_lock = threading.Lock()
        self._requests: Requests | None = None
        self._feed: ChangeFeed | None = None
        self._keyspace: list[str] = []
        self._on_change: Callable[[Change], None] | None = None
        self._state = ConnectionState.SUSPENDED
        self._lease = ""
        self._lease_wanted = False
        self._answered_at = time.monotonic()
        #: When the server cut the listener's connection, if no refresh sent since answered.
        self._cut_at: float | None = None
        self._next_tick = 0.0
        self._tick_wake = threading.Event()
        self._closing = threading.Event()
        self._ticker: threading.Thread | None = None
        #: Leases the server expired (or took away) under this backend.
        self.leases_lost = 0
        #: Shards whose claim this instance found held: their release is a CLAIMS change.
        self._awaited: set[int] = set()

    def prefix_of(self, service: str) -> str:
        """The key prefix of ``service`` in this backend's namespace."""
        return f"{self.config.namespace}:{service}:"

    @property
    def requests_sent(self) -> int:
        """Requests sent to Redis so far (scripts and commands), for the benchmarks."""
        return 0 if self._requests is None else self._requests.sent

    # -- connection and lease ---------------------------------------------------------------------

    def connect(self, on_change: Callable[[Change], None] | None = None) -> None:
        """Reach a server within the connect timeout and check access (else raise)."""
        if self._requests is not None or self._closing.is_set():
            raise BackendError("this Redis backend is connected already (or was closed)")
        self._on_change = on_change
        host = reachable_host(self.config)
        requests = self._requests = Requests(make_client(self.config, host, self.request_timeout))
        try:
            requests.call("members", self.prefix)  # scripting and key permissions
            self._keyspace = requests.keyspace_channels(self.config.database)
        except BackendError:
            requests.close()
            self._requests = None
            raise
        with self._lock:
            self._state = ConnectionState.CONNECTED
            self._answered_at = time.monotonic()
        if on_change is not None and not self._start_feed():
            self.close()
            raise BackendUnavailable(
                f"Redis did not confirm a subscription to {self.prefix}changes"
            )
        self._next_tick = time.monotonic() + self._interval
        self._ticker = threading.Thread(
            target=self._tick_loop, name=f"goworker:redis-tick:{self.service}", daemon=True
        )
        self._ticker.start()

    def _start_feed(self) -> bool:
        """Start following changes (once); True once the own channel's subscription is
        confirmed (else the listener keeps trying, and reports everything when it is)."""
        with self._lock:
            if self._feed is not None:
                return True
            if self._requests is None:
                raise BackendUnavailable("the Redis backend is not connected")
            feed = self._feed = ChangeFeed(
                self._requests,
                service=self.service,
                prefix_of=self.prefix_of,
                emit=self._emit,
                awaited=self._released,
                read_run=lambda service, shard: self._read_run_at(service, shard),
                look_again=self._tick_wake.set,
                own_lease=lambda: self._lease,
                wake_id=secrets.token_hex(8),
                max_backoff=self._interval,
                confirm_timeout=self.config.connect_timeout,
                on_cut=self._connection_cut,
            )
        return feed.start(self._keyspace)

    def close(self) -> None:
        """Release the lease (its member key and claims vanish at once) and disconnect."""
        self._closing.set()
        self._tick_wake.set()
        ticker = self._ticker
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(self.request_timeout + 1.0)
        with self._lock:
            lease, self._lease, self._lease_wanted = self._lease, "", False
            self._state = ConnectionState.LOST  # closed: nothing of this lease remains
        requests = self._requests
        if lease and requests is not None:
            try:
                requests.call("close", self.prefix, lease)
            except BackendError as exc:
                logger.debug("Redis: releasing lease {} on close failed: {!r}", lease, exc)
        if self._feed is not None:
            self._feed.close(self.request_timeout + 1.0)
        if requests is not None:
            requests.close()
        self._requests = None

    @property
    def state(self) -> ConnectionState:
        """CONNECTED, SUSPENDED (the last refresh failed) or LOST (until a new lease)."""
        return self._state

    @property
    def lease_id(self) -> str:
        """The current lease's random id ("" when none)."""
        return self._lease

    @property
    def negotiated_timeout(self) -> float:
        """The lease keys' TTL: the configured session timeout (Redis negotiates nothing)."""
        return self.config.session_timeout

    @property
    def answered_at(self) -> float:
        """Send time of the latest refresh the server answered (of any answered request
        while no lease is held)."""
        return self._answered_at

    def lease_valid_until(self) -> float:
        """The last successful refresh set every key's TTL to T no earlier than it was sent —
        unless the server cut our connection since (it may have restarted empty): then the
        moment of the cut."""
        valid = self._answered_at + self.config.session_timeout
        cut = self._cut_at
        return valid if cut is None else min(valid, cut)

    def _connection_cut(self) -> None:
        """The listener's thread: the server closed or reset its connection (see the module
        docstring). Counts the lease as lapsed now, and wakes the ticker to find out."""
        with self._lock:
            if not self._lease or self._cut_at is not None:
                return
            self._cut_at = time.monotonic()
            if self._state is ConnectionState.CONNECTED:
                self._state = ConnectionState.SUSPENDED
        logger.warning(
            "Redis closed our connection (a restart without persistence loses every lease): "
            "lease {} counts as lapsed until a refresh is answered",
            self._lease,
        )
        self._emit(Change.CONNECTION)  # the host looks at its fence again
        self._tick_wake.set()

    def round_trip(self, timeout: float) -> None:
        """One refresh answered within ``timeout`` s; ``LeaseLost`` if the lease is gone."""
        began = time.monotonic()
        if self._tick() < 0 or (self._lease_wanted and not self._lease):
            raise LeaseLost("the Redis lease expired")
        took = time.monotonic() - began
        if took > timeout:
            raise BackendUnavailable(f"Redis answered after {took:.3f} s (> {timeout:.3f} s)")

    def _new_lease(self) -> str:
        with self._lease_lock:
            if self._lease:
                return self._lease
            lease = secrets.token_hex(16)
            sent = time.monotonic()
            if not self._call("lease", self.prefix, lease, self._ttl_ms, self._holder):
                raise BackendError(f"Redis lease id {lease} exists already")
            with self._lock:
                self._lease, self._lease_wanted = lease, True
                self._answered_at = sent
                if self._cut_at is not None and sent > self._cut_at:
                    self._cut_at = None
                self._next_tick = sent + self._interval
                # With the lease, in one step: a LOST reported for the old lease meanwhile
                # must not land after this (LOST with a live lease would last for good).
                changed = self._switch(ConnectionState.CONNECTED)
            if changed:
                self._emit(Change.CONNECTION)
            return lease

    def _lease_gone(self, lease: str, why: str) -> None:
        """``lease`` is gone on the server: LOST (the ticker replaces it)."""
        with self._lock:
            if not lease or lease != self._lease:
                return
            self._lease = ""
            self.leases_lost += 1
            # With the lease, in one step: the ticker may take a new lease right after.
            changed = self._switch(ConnectionState.LOST)
        logger.warning("Redis lease {} lost: {}", lease, why)
        if changed:
            self._emit(Change.CONNECTION)
        self._tick_wake.set()

    def _set_state(self, state: ConnectionState, *, unless: ConnectionState | None = None) -> None:
        """Move to ``state`` (and report the change) unless the state is ``unless``."""
        with self._lock:
            changed = self._state is not unless and self._switch(state)
        if changed:
            self._emit(Change.CONNECTION)

    def _switch(self, state: ConnectionState) -> bool:
        """Under ``_lock``: move to ``state``; True if that is a change."""
        changed, self._state = self._state is not state, state
        return changed

    def _await_release(self, shard: int, waiting: bool) -> None:
        """Note (before the claim request goes out, so its release is never missed) or forget
        that this instance waits for ``shard``'s claim to be released."""
        with self._lock:
            if waiting:
                self._awaited.add(shard)
            else:
                self._awaited.discard(shard)

    def _released(self, shards: list[int]) -> bool:
        """Claims were released: True when this instance waited for one of them (as
        ZooKeeper's one-shot watch on the claim, not every release of the service)."""
        with self._lock:
            waited = self._awaited.intersection(shards)
            self._awaited -= waited
        return bool(waited)

    def _emit(self, change: Change) -> None:
        callback = self._on_change
        if callback is not None:
            try:
                callback(change)
            except Exception as exc:  # noqa: BLE001 - a host callback must not kill our threads
                logger.opt(exception=exc).error("on_change({}) raised", change)

    # -- the ticker -------------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        failures = 0
        while not self._closing.is_set():
            self._tick_wake.wait(max(0.0, self._next_tick - time.monotonic()))
            self._tick_wake.clear()
            if self._closing.is_set():
                break
            try:
                if self._lease_wanted and not self._lease:
                    self._new_lease()
                self._tick()
                failures = 0
            except BackendError as exc:
                failures += 1
                logger.debug("Redis refresh failed: {!r}", exc)
                if self._state is ConnectionState.CONNECTED:
                    self._set_state(ConnectionState.SUSPENDED, unless=ConnectionState.LOST)
                backoff = min(self._interval, 0.02 * 2 ** min(failures, 10))
                self._next_tick = time.monotonic() + backoff

    def _tick(self) -> int:
        """Refresh the lease and look for expiries (one script); returns its status."""
        lease, feed = self._lease, self._feed
        services = [self.service] if feed is None else feed.services()
        seq_keys = [self.prefix_of(service) + "seq" for service in services]
        sent = time.monotonic()
        reply = self._call("tick", self.prefix, lease, self._ttl_ms, *seq_keys)
        status, next_ms, why = int(reply[0]), int(reply[1]), str(reply[2])
        now = time.monotonic()
        with self._lock:
            # Only a refresh of the current lease renews it; with none held (and none owed:
            # an admin client), any answer counts.
            held = status == 1 and lease == self._lease
            if held or (status == 0 and not lease and not self._lease_wanted):
                self._answered_at = max(self._answered_at, sent)
            if held and self._cut_at is not None and sent > self._cut_at:
                self._cut_at = None  # the lease outlived the cut
            self._next_tick = min(sent + self._interval, now + next_ms / 1000 + EXPIRY_MARGIN)
        if status < 0:
            self._lease_gone(lease, why)
        else:
            # Only a new lease ends LOST (checked and switched in one step: see _new_lease).
            self._set_state(ConnectionState.CONNECTED, unless=ConnectionState.LOST)
        if feed is not None:
            for service, seq in zip(services, reply[3:], strict=False):
                feed.check_seq(service, int(seq))
        return status

    # -- requests ---------------------------------------------------------------------------------

    def _call(self, name: str, *args: str | int) -> Any:
        requests = self._requests
        if requests is None:
            raise BackendUnavailable(f"the Redis backend is not connected ({name})")
        return requests.call(name, *args)

    def _get(self, key: str) -> str | None:
        requests = self._requests
        if requests is None:
            raise BackendUnavailable("the Redis backend is not connected (GET)")
        return requests.get(key)

    def _read_run_at(self, service: str, shard: int) -> RunRecord | None:
        raw = self._get(f"{self.prefix_of(service)}run:{shard}")
        return None if raw is None else parse_run(shard, raw)


def check_service(service: str) -> None:
    """Raise ``DiscoveryError`` for a service name that cannot be part of a key prefix."""
    if not service or any(c.isspace() for c in service):
        raise DiscoveryError(f"service name {service!r} must be non-empty, without spaces")


def parse_run(shard: int, raw: str) -> RunRecord | None:
    """A stored run record, or None when it cannot be read."""
    try:
        return RunRecord.parse(shard, raw)
    except (ValueError, TypeError):
        return None
