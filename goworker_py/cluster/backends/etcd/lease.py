"""An instance's etcd lease: granted at connect, kept alive at TTL/3, replaced once expired.

The lease is the instance's session: its member key and its claims are attached to it, and
etcd deletes them all when the lease expires — when etcd has not heard a keep-alive for the
lease's time to live (TTL), by the etcd leader's own clock. Self-fencing therefore counts from
what the server has certainly heard:

- :attr:`LeaseKeeper.answered_at` is the *send* time of the latest keep-alive etcd answered with
  a TTL (etcd renewed the lease when it received the request, so no earlier than that);
- :meth:`LeaseKeeper.lease_valid_until` is that send time plus the TTL.

A keep-alive that fails, times out or is refused renews nothing, whatever happens after; one
answered "lease not found" (a TTL of 0) means etcd expired or revoked the lease: the state
becomes :attr:`~goworker_py.cluster.backend.ConnectionState.LOST`, and the keeper grants a new
lease (a new id) as soon as etcd answers, every key of the old one gone.

Keep-alives are sent by a thread of its own, one every TTL/3 from the send time of the previous
one (each waits at most TTL/3 for its reply), on an HTTP session of its own: nothing the
supervisor or a shard thread does can delay them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

from goworker_py.cluster.backend import ConnectionState
from goworker_py.cluster.backends.etcd.transport import Transport
from goworker_py.errors import BackendError, LeaseLost

_log = logger.bind(component="etcd")


class LeaseKeeper:
    """One instance's lease. ``on_state`` is called (on the keeper's thread, or the thread
    that made the request that found out) with every new :class:`ConnectionState`."""

    def __init__(
        self,
        transport: Transport,
        ttl: int,
        on_state: Callable[[ConnectionState], None],
    ) -> None:
        self._transport = transport
        self._session = transport.session()
        self._requested_ttl = ttl
        self._on_state = on_state
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._check_now = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        #: The lease's id (0: none held).
        self.lease = 0
        #: The time to live etcd granted, in seconds.
        self.ttl = float(ttl)
        #: ``time.monotonic()`` send time of the latest keep-alive (or grant) etcd answered.
        self.answered_at = time.monotonic()
        self._valid_until = 0.0
        self.state = ConnectionState.SUSPENDED
        #: Keep-alive (and grant) requests sent, for the idle-traffic figure.
        self.requests = 0

    @property
    def interval(self) -> float:
        """Seconds between keep-alives: a third of the TTL."""
        return self.ttl / 3.0

    def lease_valid_until(self) -> float:
        """``time.monotonic()`` instant before which etcd certainly keeps the lease."""
        return self._valid_until

    # -- requests ---------------------------------------------------------------------------------

    def grant(self, budget: float) -> int:
        """Grant a new lease (the keeper's new session); returns its id."""
        sent = time.monotonic()
        self.requests += 1
        reply = self._transport.call(
            "lease/grant", {"TTL": self._requested_ttl, "ID": 0}, budget, self._session
        )
        lease, ttl = int(reply.get("ID", 0)), int(reply.get("TTL", 0))
        if lease == 0 or ttl <= 0:
            raise BackendError(f"{self._transport.describe()} granted no lease: {reply}")
        with self._lock:
            self.lease = lease
            self.ttl = float(ttl)
            self.answered_at = max(self.answered_at, sent)
            self._valid_until = sent + ttl
            changed = self.state is not ConnectionState.CONNECTED
            self.state = ConnectionState.CONNECTED
        if changed:
            self._on_state(ConnectionState.CONNECTED)
        return lease

    def keep_alive(self, budget: float) -> None:
        """One keep-alive answered within ``budget`` seconds, else raises (and renews nothing).

        :class:`LeaseLost` when etcd no longer knows the lease (the state is then ``LOST``).
        """
        lease = self.lease
        if lease == 0:
            raise LeaseLost(f"no lease held on {self._transport.describe()}")
        sent = time.monotonic()
        self.requests += 1
        try:
            reply = self._transport.call("lease/keepalive", {"ID": lease}, budget, self._session)
        except LeaseLost:
            self._lost(lease, sent)
            raise
        except BackendError:
            self._suspend(lease)
            raise
        result = reply.get("result", {})
        ttl = int(result.get("TTL", 0)) if isinstance(result, dict) else 0
        if ttl <= 0:
            self._lost(lease, sent)
            raise LeaseLost(f"{self._transport.describe()} expired lease {lease:x}")
        with self._lock:
            if lease != self.lease:
                return
            self.answered_at = max(self.answered_at, sent)
            self._valid_until = max(self._valid_until, sent + ttl)
            changed = self.state is not ConnectionState.CONNECTED
            self.state = ConnectionState.CONNECTED
        if changed:
            self._on_state(ConnectionState.CONNECTED)

    def revoke(self, budget: float) -> None:
        """Revoke the lease: its keys vanish at once (a clean leave)."""
        with self._lock:
            lease, self.lease = self.lease, 0
            self._valid_until = 0.0
        if lease:
            self._transport.call("lease/revoke", {"ID": lease}, budget, self._session)

    def _suspend(self, lease: int) -> None:
        with self._lock:
            if lease != self.lease or self.state is not ConnectionState.CONNECTED:
                return
            self.state = ConnectionState.SUSPENDED
        self._on_state(ConnectionState.SUSPENDED)

    def _lost(self, lease: int, sent: float) -> None:
        with self._lock:
            if lease != self.lease:
                return
            self.lease = 0
            # Gone by the time that request reached etcd at the latest.
            self._valid_until = min(self._valid_until, sent)
            self.state = ConnectionState.LOST
        _log.warning("etcd lease {:x} expired", lease)
        self._on_state(ConnectionState.LOST)
        self._wake.set()  # grant the next one at once

    def check_now(self) -> None:
        """etcd said "lease not found" to another request: send a keep-alive at once (it finds
        out for sure, and a new lease follows sooner)."""
        self._check_now = True
        self._wake.set()

    # -- the thread -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start keeping the lease alive."""
        self._thread = threading.Thread(target=self._loop, name="goworker-etcd-lease", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (it ends within one keep-alive's timeout)."""
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval + 1.0)

    def _loop(self) -> None:
        next_at = time.monotonic() + self.interval
        while not self._closed.is_set():
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            if self._closed.is_set():
                return
            now = time.monotonic()
            if self.lease and now < next_at and not self._check_now:
                continue  # woken early, but the lease needs nothing yet
            self._check_now = False
            next_at = now + self.interval
            try:
                if self.lease:
                    self.keep_alive(self.interval)
                else:
                    self.grant(self.interval)
                    _log.info("etcd granted a new lease {:x}", self.lease)
            except LeaseLost:
                next_at = time.monotonic()  # grant a new lease at once
            except BackendError as exc:
                _log.debug("etcd keep-alive failed: {}", exc)
