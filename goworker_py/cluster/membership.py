"""Cluster membership: which shards this instance runs, kept right as the cluster changes.

:class:`ClusterHost` is the :class:`~goworker_py.run.ShardHost` of a cluster-mode worker. All
of its work happens on the worker's supervisor thread, woken by the backend's callbacks (which only
signal): it reads the members, computes the assignment with the sharding strategy, releases
shards it should no longer own (stopping their threads first, releasing the claim only once the
thread has ended) and claims the ones it should own (starting their threads only once the claim
is held — after the previous owner released it).

This module holds what makes an instance a member: registering (and registering again after a
lost lease or a vanished entry), the supervisor pass, health, the fence and shutdown. The rest of
``ClusterHost`` is a mixin per concept, each on the state ``ClusterHost.__init__`` sets up:

- :class:`~goworker_py.cluster.rebalance.Rebalancer` — claiming and releasing shards to follow
  the assignment, and hand-overs that never abandon a fire (SPEC 4.3);
- :class:`~goworker_py.cluster.runs.RunLedger` — each claimed shard's run marker: where a new
  owner continues from (failover), and the ``ShardHost`` calls its runs make on their threads;
- :class:`~goworker_py.cluster.service.ServiceNodes` — the service's settings and control nodes.

Health (SPEC 4.2): ``GREEN`` when connected and registered; ``YELLOW`` while the connection is
suspended (no run starts); ``RED`` once the session is lost, or once the lease lapses: ZooKeeper
has not answered a request sent in the last ``FENCE_AFTER`` of the negotiated session timeout.
The instance then *fences itself* — a :class:`~goworker_py.cluster.fence.Fence` thread of its
own cancels the in-flight runs before the server can expire the session and hand its shards to
someone else, and ``Context.cancelled`` reports it even before that thread has run. The fence is
lifted only after a round trip on the current session: a reconnect with the same session
returns to ``GREEN`` with every shard kept (runs the fence cut short are re-run); a lost session
re-registers as a new member.

Threads: the supervisor (this class, woken by backend callbacks that only signal), the fence (never
runs handler code nor I/O), the callback thread (``watch()`` on membership changes), and one
thread per owned shard (everything else a handler does).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from goworker_py.callbacks import CallbackThread
from goworker_py.cluster.backend import (
    Change,
    ConnectionState,
    CoordinationBackend,
    Member,
    ShardClaim,
)
from goworker_py.cluster.fence import Fence
from goworker_py.cluster.rebalance import Rebalancer
from goworker_py.cluster.runs import RunLedger
from goworker_py.cluster.service import ServiceNodes
from goworker_py.cluster.sharding import ShardingStrategy, StickyStrategy
from goworker_py.errors import BackendError, BackendUnavailable, LeaseLost, MemberGone
from goworker_py.instance import HealthStatus, WorkerInstance
from goworker_py.run import FENCE, HANDOVER, RunSettings

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.runner import ShardRunner

#: Fraction of the negotiated session timeout T after which an instance whose requests ZooKeeper
#: has not answered fences itself. The server expires a session about T after it last heard
#: from the client — no earlier than the send time of the last request it answered, which is
#: what the lease counts from: fencing 0.7 T after it leaves a margin of at least 0.3 T.
#: (kazoo's SUSPENDED is no clock for this: it counts from the client's last send, and requests
#: sent into a partition keep postponing it.)
FENCE_AFTER = 0.7
#: Seconds before a supervisor pass that failed on a ZooKeeper error is tried again.
RETRY_PAUSE = 0.5


class ClusterHost(Rebalancer, RunLedger, ServiceNodes):
    """Membership, shard ownership and health of one cluster-mode worker instance."""

    def __init__(
        self,
        settings: RunSettings,
        backend: CoordinationBackend,
        wake: threading.Event,
        logger: Logger,
        *,
        strategy: ShardingStrategy | None = None,
        failover: bool = True,
        overwrite: bool = False,
        cron: str | None = None,
        shard_grace: float = 30.0,
        handover_timeout: float | None = None,
        upstreams: tuple[tuple[str, int], ...] = (),
    ) -> None:
        #: WorkerGroup dependencies: ``(upstream service, its shard count)``; a downstream's
        #: shards run the fire times their upstream shards completed (see cluster.upstream).
        self.upstreams = upstreams
        if upstreams:
            from goworker_py.feed import UpstreamFeed

            settings = replace(settings, feed=UpstreamFeed(settings.total))
        self.settings = settings
        self.backend = backend
        self.strategy: ShardingStrategy = strategy or StickyStrategy()
        self.failover = failover
        self.overwrite = overwrite
        self.cron = cron or ""
        self.shard_grace = shard_grace
        #: Seconds a shard that must move lets its in-flight run go on before cancelling it.
        self.handover_timeout = shard_grace if handover_timeout is None else handover_timeout
        self.logger = logger
        self.instance = WorkerInstance.create(settings.service)
        #: Health as last set (:meth:`_set_health`); :attr:`health` adds the lease's own clock.
        self._health = HealthStatus.GREEN
        self.runners: dict[int, ShardRunner] = {}
        self.claims: dict[int, ShardClaim] = {}
        self.rebalances = 0
        self.shards_moved = 0
        #: Who owned each shard at the last pass: a member that left no longer publishes its
        #: shards, and its shards move all the same.
        self._owners: dict[int, str] = {}
        self._wake = wake
        self._members: tuple[WorkerInstance, ...] = ()
        self._views: dict[int, tuple[WorkerInstance, WorkerInstance]] = {}
        #: Set while runs may start (GREEN, not fenced): shard threads wait on it in outages.
        self._healthy = threading.Event()
        self._healthy.set()
        self._member_ids: tuple[str, ...] = ()
        self._releasing: dict[int, float] = {}
        self._stuck_reported: set[int] = set()
        #: The lease this instance registered with ("" before), and its member entry.
        self._lease = ""
        self._member: Member | None = None
        #: Set by backend events (any thread); the supervisor reads the state again.
        self._settings_dirty = True
        self._control_dirty = True
        #: ``{shard: fire times completed}`` carried by every run marker this instance writes.
        self._completed: dict[int, tuple[float, ...]] = {}
        name = settings.worker_name
        self.fence = Fence(self._fence_deadline, self._on_fence, f"goworker:{name}:fence")
        #: ``watch()`` on membership changes runs here, never on the supervisor or the fence.
        self.callbacks = CallbackThread(f"goworker:{name}:callbacks")
        #: When a pass that failed on a ZooKeeper error is tried again (monotonic).
        self._retry_at: float | None = None
        #: What our instance node holds (see _publish).
        self._published: WorkerInstance | None = None

    # -- start and stop --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Connect, check the service settings and register; raise clear errors on failure."""
        self.backend.connect(self._on_change)
        try:
            self._check_service_config()
            self._register()
        except BaseException:
            self.backend.close()
            raise

    def start(self) -> None:
        """Take a first share of shards (the supervisor keeps it right from then on)."""
        self.fence.start()
        self.step()

    def _register(self) -> None:
        instance = replace(
            WorkerInstance.create(self.settings.service), shards=(), health=HealthStatus.GREEN
        )
        member = self.backend.register(instance)
        if self._lease and member.lease != self._lease:
            # ``register`` found our lease gone and took a new one (Redis takes its lease
            # there): everything the old one held is gone too, as on any lost lease.
            self._lose_session()
        # The lease the entry lives on, as registered (not as it was before: the claims made
        # from now on must belong to this instance, on this lease).
        self._lease = member.lease
        self.instance = instance
        self._member = member
        self._published = instance
        # A new lease: whatever changed meanwhile was not reported to us.
        self._settings_dirty = self._control_dirty = True
        self._set_health(HealthStatus.GREEN)
        self.logger.info("registered as {} (lease {})", self._member.key, self._lease)

    def stop_runners(self) -> None:
        """Ask every shard thread to stop (graceful shutdown)."""
        for runner in self.runners.values():
            runner.stop()

    def close(self) -> None:
        """Release the shards whose threads ended, unregister, then close the session.

        A shard whose handler ignored cancellation keeps its claim — and so the session stays
        open — until its thread ends (or the process exits and the session expires): closing
        the session at once would let another instance start the shard while it still runs.
        """
        self.fence.close()
        self.callbacks.close()
        stuck: dict[int, ShardRunner] = {}
        for shard, runner in list(self.runners.items()):
            claim = self.claims.pop(shard, None)
            if runner.alive:
                if claim is not None:
                    self.claims[shard] = claim
                    stuck[shard] = runner
            elif claim is not None:
                self._safely(self.backend.release, claim)
        self._safely(self.backend.unregister)
        if not stuck:
            self._safely(self.backend.close)
            return
        self.logger.warning(
            "keeping the claim of stuck shard(s) {} until their handlers return",
            sorted(stuck),
        )
        threading.Thread(
            target=self._close_after, args=(stuck,), name="goworker:stuck-shards", daemon=True
        ).start()

    def _close_after(self, stuck: dict[int, ShardRunner]) -> None:
        """Release each stuck shard once its thread ends, then close the session."""
        for shard, runner in stuck.items():
            runner.join()
            claim = self.claims.pop(shard, None)
            if claim is not None:
                self._safely(self.backend.release, claim)
        self._safely(self.backend.close)

    def _safely(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except BackendError as exc:
            self.logger.debug("backend call during shutdown failed: {!r}", exc)

    # -- supervisor -------------------------------------------------------------------------------

    @property
    def completed(self) -> bool:
        """A cluster member never completes on its own: it runs until stopped."""
        return False

    def _on_change(self, change: Change) -> None:
        # The backend's thread: record and signal only.
        if change is Change.SETTINGS:
            self._settings_dirty = True
        elif change is Change.CONTROL:
            self._control_dirty = True
        elif change is Change.CONNECTION:
            self.fence.watch()  # the lease's deadline may have moved earlier
        self._wake.set()

    def _fence_deadline(self) -> float:
        """When runs must stop unless ZooKeeper answers meanwhile (``time.monotonic()``)."""
        timeout = self.backend.negotiated_timeout
        return self.backend.lease_valid_until() - (1.0 - FENCE_AFTER) * timeout

    @property
    def health(self) -> HealthStatus:
        """``GREEN`` (runs may start), ``YELLOW`` (connection suspended) or ``RED`` (fenced).

        ``RED`` from the instant the lease lapses, before the fence thread has acted on it.
        """
        if self.fence.tripped or time.monotonic() >= self._fence_deadline():
            return HealthStatus.RED
        return self._health

    def next_timeout(self) -> float | None:
        """Seconds until the supervisor must look again without being woken.

        Self-fencing has a thread of its own: the supervisor waits only for hand-overs (a
        draining run's deadline, a stuck handler to report) and for a failed pass's retry.
        """
        now = time.monotonic()
        deadlines = [self._release_deadline(since) for since in self._releasing.values()]
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        pending = [deadline for deadline in deadlines if deadline is not None]
        return max(min(pending) - now, 0.0) if pending else None

    def step(self) -> None:
        """One supervisor pass: follow the connection state, then re-balance."""
        self._retry_at = None
        state = self.backend.state
        lease = self.backend.lease_id
        if self._lease and (state is ConnectionState.LOST or (lease and lease != self._lease)):
            self._lose_session()
        if self.fence.tripped and not self._lift_fence():
            return
        if state is ConnectionState.SUSPENDED:
            self._set_health(HealthStatus.YELLOW)
            return
        if state is not ConnectionState.CONNECTED:
            return
        try:
            if self.backend.lease_id != self._lease or self._member is None:
                self._register()
                if self.fence.tripped:
                    return  # the old lease was lost meanwhile: lift the fence first (next pass)
            self._set_health(HealthStatus.GREEN)
            self._follow_service_config()
            self._follow_control()
            self.rebalance()
        except (BackendUnavailable, LeaseLost) as exc:
            self.logger.info("coordination server unavailable during re-balance: {!r}", exc)
            self._retry_at = time.monotonic() + RETRY_PAUSE
        except MemberGone as exc:
            # Our own member entry is gone (deleted, or its lease expired server-side before
            # we heard).
            self._node_vanished(str(exc))
        except BackendError as exc:
            self.logger.opt(exception=exc).error("backend error during re-balance: {!r}", exc)
            self._retry_at = time.monotonic() + RETRY_PAUSE

    def _lift_fence(self) -> bool:
        """Lift the fence once ZooKeeper answered a request sent after it tripped.

        A reply read after a freeze may answer a request sent before it, and a session the
        server expired meanwhile still looks connected until the next read: only a round trip
        that *began* after the fence proves the current session alive.
        """
        fenced_at = self.fence.fenced_at
        if fenced_at is None:
            return True
        if self.backend.state is not ConnectionState.CONNECTED:
            return False
        if self.backend.answered_at <= fenced_at:
            try:
                self.backend.round_trip(self.backend.negotiated_timeout / 3.0)
            except BackendError as exc:
                self.logger.info("still fenced: the server did not answer ({!r})", exc)
                return False
            if self.backend.answered_at <= fenced_at:
                return False
        self.fence.lift()
        self.logger.info(
            "the server answered on lease {}: the fence is lifted", self.backend.lease_id
        )
        return True

    def _set_health(self, health: HealthStatus) -> None:
        if health is not self._health:
            self.logger.info("health {} -> {}", self._health.name, health.name)
            self._health = health
        if self.health is HealthStatus.GREEN:
            self._healthy.set()
        else:
            self._healthy.clear()

    def _on_fence(self, why: str) -> None:
        """The fence thread (or the supervisor on a lost session): cancel every in-flight run.

        Sets events only — never runs handler code, never blocks.
        """
        self._set_health(HealthStatus.RED)
        cancelled = [
            shard for shard, runner in list(self.runners.items()) if runner.cancel_run(FENCE)
        ]
        self._wake.set()
        self.logger.warning(
            "self-fencing ({}): health RED, no run starts; cancelled in-flight run(s) of "
            "shard(s) {}",
            why,
            cancelled,
        )

    def _lose_session(self) -> None:
        self.fence.trip(f"lease {self._lease} lost")
        self._lease = ""
        # The session's ephemeral claims are gone: another instance may own these shards now.
        for runner in self.runners.values():
            runner.stop(HANDOVER)
        for shard in list(self.claims):
            self._releasing.setdefault(shard, time.monotonic())
        self.claims.clear()
        self._member = None

    def _node_vanished(self, why: str) -> None:
        """Our instance node is gone while the session lives: give every shard up cleanly
        (each claim is released once its thread has ended) and register again."""
        self.logger.warning(
            "this instance's node vanished ({}): releasing its shards and registering again", why
        )
        for shard in sorted(self.claims):
            if shard not in self._releasing:
                self._release(shard)
        self._member = None
        self._retry_at = time.monotonic() + RETRY_PAUSE
