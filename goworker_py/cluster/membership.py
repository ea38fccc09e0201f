"""Cluster membership: which shards this instance runs, kept right as the cluster changes.

:class:`ClusterHost` is the :class:`~goworker_py.run.ShardHost` of a cluster-mode worker. All
of its work happens on the worker's supervisor thread, woken by the backend's callbacks (which only
signal): it reads the members, computes the assignment with the sharding strategy, releases
shards it should no longer own (stopping their threads first, releasing the claim only once the
thread has ended) and claims the ones it should own (starting their threads only once the claim
is held — after the previous owner released it).

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

Hand-overs never abandon a fire (SPEC 4.3): a shard that must move lets its in-flight run finish
(up to ``handover_timeout``) before its claim is released; a run cut short by a hand-over, a
graceful stop or the fence is recorded ``interrupted``, and the shard's next owner re-runs that
fire time at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from goworker_py.callbacks import CallbackThread
from goworker_py.cluster.backend import (
    COMPLETED_KEPT,
    Change,
    ConnectionState,
    CoordinationBackend,
    Member,
    RunRecord,
    RunState,
    ShardClaim,
)
from goworker_py.cluster.fence import Fence
from goworker_py.cluster.service import ServiceNodes
from goworker_py.cluster.sharding import ShardingStrategy, StickyStrategy, moved_shards
from goworker_py.errors import BackendError, BackendUnavailable, LeaseLost, MemberGone
from goworker_py.handler import Context
from goworker_py.instance import HealthStatus, WorkerInstance
from goworker_py.run import FENCE, HANDOVER, RunResult, RunSettings, RunTicket
from goworker_py.runner import ShardRunner

if TYPE_CHECKING:
    from loguru import Logger

#: Fraction of the negotiated session timeout T after which an instance whose requests ZooKeeper
#: has not answered fences itself. The server expires a session about T after it last heard
#: from the client — no earlier than the send time of the last request it answered, which is
#: what the lease counts from: fencing 0.7 T after it leaves a margin of at least 0.3 T.
#: (kazoo's SUSPENDED is no clock for this: it counts from the client's last send, and requests
#: sent into a partition keep postponing it.)
FENCE_AFTER = 0.7
#: Seconds before a supervisor pass that failed on a ZooKeeper error is tried again.
RETRY_PAUSE = 0.5


class ClusterHost(ServiceNodes):
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

    def _release_deadline(self, since: float) -> float | None:
        """The next moment a release started at ``since`` needs a look: the end of the
        hand-over's drain, then the moment its handler counts as stuck."""
        now = time.monotonic()
        for deadline in (
            since + self.handover_timeout,
            since + self.handover_timeout + self.shard_grace,
        ):
            if now < deadline:
                return deadline
        return None

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

    # -- re-balancing ----------------------------------------------------------------------------

    def rebalance(self) -> None:
        """Claim what the strategy assigns to us, release what it does not."""
        # A release finished here changes our shards too: it must be published like any other.
        changed = self._finish_releases()
        members = self.backend.members()
        ids = [member.instance.id for member in members]
        if self.instance.id not in ids:
            if self._member is not None and not self.backend.registered():
                self._node_vanished("deleted from the coordination server")
            return  # not registered yet (or re-registering): nothing to own
        claims: dict[int, str] = {}
        for member in members:
            if member.instance.id == self.instance.id:
                continue
            for shard in member.instance.shards:
                claims.setdefault(shard, member.instance.id)
        for shard in self.claims:
            claims[shard] = self.instance.id
        assignment = self.strategy.assign(ids, self.settings.total, claims)
        mine = set(assignment.get(self.instance.id, ()))
        before = {s: o for s, o in {**self._owners, **claims}.items() if s < self.settings.total}
        moved = moved_shards(before, assignment)
        self._owners = claims
        for shard in sorted(set(self.claims) - mine):
            if shard not in self._releasing:
                self._release(shard)
        for shard in sorted(mine - set(self.claims)):
            runner = self.runners.get(shard)
            if runner is not None and runner.alive:
                continue  # our previous thread for it has not ended yet
            claim = self.backend.claim(shard, self.instance.id)
            if claim is None:
                continue
            self.claims[shard] = claim
            self._start_runner(shard, claim)
            changed = True
        changed = self._finish_releases() or changed
        membership_changed = tuple(ids) != self._member_ids
        self._members = tuple(member.instance for member in members)
        self._member_ids = tuple(ids)
        if membership_changed:
            # Counted once per membership change: the moves the new assignment asks of the
            # whole cluster (every instance computes the same figure).
            self.rebalances += 1
            self.shards_moved += moved
            self.logger.info(
                "membership changed: {} member(s); the new assignment moves {} shard(s)",
                len(ids),
                moved,
            )
        if changed or membership_changed:
            self._publish()
            if self.settings.wants_watch:
                for shard, runner in list(self.runners.items()):
                    if runner.alive and not runner.stopping:
                        self.callbacks.submit(shard, runner.notify_watch)
        if changed:
            self.logger.info(
                "owning shard(s) {} of {} ({} member(s))",
                sorted(self.claims),
                self.settings.total,
                len(ids),
            )

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

    def _release(self, shard: int) -> None:
        """Stop the shard's thread; its claim is given up once the thread has ended.

        A scheduled run in flight may finish first (up to ``handover_timeout``): cancelling it
        would leave its fire to be run again by the next owner. A run without a schedule (a
        consumer loop) never finishes on its own: it is cancelled at once.
        """
        runner = self.runners.get(shard)
        self._releasing[shard] = time.monotonic()
        scheduled = self.settings.schedule is not None or self.settings.feed is not None
        if runner is not None and scheduled and self.handover_timeout > 0:
            in_run = runner.in_run
            runner.drain()
            if in_run:
                self.logger.info(
                    "releasing shard {} once its run ends (cancelled after {:g} s)",
                    shard,
                    self.handover_timeout,
                )
                return
        elif runner is not None:
            runner.stop(HANDOVER)
        self.logger.info("releasing shard {}", shard)

    def _finish_releases(self) -> bool:
        """Give up the claims of shards whose threads have ended; cancel runs that drained too
        long; report stuck ones."""
        done = False
        for shard, since in list(self._releasing.items()):
            runner = self.runners.get(shard)
            if runner is not None and runner.alive:
                waited = time.monotonic() - since
                if waited >= self.handover_timeout:
                    runner.stop(HANDOVER)  # the drain is over: cancel (idempotent)
                grace = waited - self.handover_timeout
                if grace > self.shard_grace and shard not in self._stuck_reported:
                    self._stuck_reported.add(shard)
                    self.logger.error(
                        "shard {} is stuck: its handler ignored cancellation for {:.1f} s; "
                        "keeping its claim so that no other instance runs it meanwhile",
                        shard,
                        grace,
                    )
                continue
            claim = self.claims.pop(shard, None)
            if claim is not None:
                self.backend.release(claim)
            self.runners.pop(shard, None)
            self._completed.pop(shard, None)
            self._releasing.pop(shard)
            self._stuck_reported.discard(shard)
            done = True
        return done

    def _publish(self) -> None:
        """Write our shards and health to our node — only when they changed (every member
        reads a node written: republishing unchanged data costs the cluster N reads)."""
        instance = replace(self.instance, shards=tuple(sorted(self.claims)), health=self.health)
        if instance == self._published:
            return
        self.instance = instance
        self.backend.publish(instance)
        self._published = instance

    def _start_runner(self, shard: int, claim: ShardClaim) -> None:
        """Start the shard's thread, continuing from where its previous owner left it."""
        marker = self.backend.read_run(shard)
        self._completed[shard] = () if marker is None else marker.completed
        failover_fire: datetime | None = None
        start_after: datetime | None = None
        if marker is None:
            # Never run anywhere: note when it was first claimed, so that a fire time due
            # after now is owed by whoever owns the shard then, even before its first run.
            self._write_marker(claim, shard, self.settings.clock.time())
        else:
            last = datetime.fromtimestamp(marker.fire_time, timezone.utc).astimezone(
                self.settings.zone
            )
            start_after = last
            owed = marker.state is RunState.INTERRUPTED or (
                marker.state is RunState.RUNNING and marker.lease != self._lease
            )
            if owed:
                how = (
                    "was cut short by a hand-over or a stop"
                    if marker.state is RunState.INTERRUPTED
                    else "was interrupted on a dead instance"
                )
                if self.failover:
                    failover_fire = last
                    self.logger.warning(
                        "shard {}: the run for {} {}; re-running it now (failover)",
                        shard,
                        last.isoformat(),
                        how,
                    )
                else:
                    self.logger.warning(
                        "shard {}: the run for {} {}; not re-run (failover=False)",
                        shard,
                        last.isoformat(),
                        how,
                    )
        runner = ShardRunner(
            self.settings, shard, self, failover_fire=failover_fire, start_after=start_after
        )
        runner.claim = claim
        self.runners[shard] = runner
        if self.upstreams and self.settings.feed is not None:
            from goworker_py.cluster.upstream import UpstreamWatch

            UpstreamWatch(self.backend, runner, self.settings.feed, self.upstreams, self.logger)
        runner.start()

    def _write_marker(self, claim: ShardClaim, shard: int, fire_time: float) -> bool:
        """Note that the shard was claimed at ``fire_time`` before any run (one fenced write)."""
        record = self._record(claim, shard, "", fire_time, RunState.CLAIMED)
        try:
            return self.backend.begin_run(claim, record)
        except BackendError as exc:
            self.logger.info("could not write the run record of shard {}: {!r}", shard, exc)
            return False

    def _record(
        self, claim: ShardClaim | None, shard: int, run_id: str, fire_time: float, state: RunState
    ) -> RunRecord:
        return RunRecord(
            shard=shard,
            owner=self.instance.id,
            lease=self._lease,
            run_id=run_id,
            fire_time=fire_time,
            token=0 if claim is None else claim.token,
            state=state,
            completed=self._completed.get(shard, ()),
        )

    # -- ShardHost --------------------------------------------------------------------------------

    def instance_for(self, shard_index: int) -> WorkerInstance:
        # Cached per shard until the instance changes (it does only on re-balance or health).
        base, view = self._views.get(shard_index, (None, None))
        if base is not self.instance or view is None:
            view = self.instance.with_shard(shard_index)
            self._views[shard_index] = (self.instance, view)
        return view

    def members(self) -> tuple[WorkerInstance, ...]:
        return self._members

    def wait_ready(self, runner: ShardRunner) -> bool:
        """Block while the instance is not healthy (no run may start); False once stopping."""
        while not runner.stopping:
            if self.health is HealthStatus.GREEN:
                return True
            self._healthy.wait(0.05)
        return False

    def begin_run(self, runner: ShardRunner, fire_time: datetime, run_id: str) -> RunTicket | None:
        claim: ShardClaim | None = runner.claim
        if claim is None or runner.stopping:
            return None
        if runner.failover_pending and not self.failover:
            return None  # a fire the fence cut short: re-run only with failover on
        health = self.health
        if health is not HealthStatus.GREEN:
            runner.logger.warning(
                "not starting the run for {}: health is {}", fire_time.isoformat(), health.name
            )
            return None
        marker = self._record(
            claim, runner.shard.index, run_id, fire_time.timestamp(), RunState.RUNNING
        )
        try:
            began = self.backend.begin_run(claim, marker)
        except BackendError:
            began = False
        if not began:
            runner.logger.warning("not starting the run: this instance no longer holds the claim")
            return None
        late = self.settings.clock.time() - fire_time.timestamp()
        # A downstream's run starts when its upstreams are done, long after their fire time.
        skip = (
            self.settings.misfire_policy == "skip"
            and not runner.failover_pending
            and self.settings.feed is None
        )
        if skip and late >= self.settings.misfire_grace:
            # Beginning took too long (a reply lost in an outage): by now this fire is a misfire.
            runner.logger.warning(
                "skipped the run for {}: it could begin only {:.2f} s late", fire_time, late
            )
            self._record_end(runner, replace(marker, state=RunState.CANCELLED))
            return None
        return RunTicket(
            fencing_token=claim.token,
            is_failover=runner.failover_pending,
            lease=self._fence_deadline,
        )

    def end_run(self, runner: ShardRunner, ctx: Context, result: RunResult) -> None:
        """Record how the run ended; a run cut short by a hand-over, a stop or the fence is
        ``interrupted``: its fire time is owed (SPEC 4.3)."""
        shard, fire = runner.shard.index, ctx.scheduled_time.timestamp()
        if result.ok:
            state = RunState.DONE
            done = sorted({*self._completed.get(shard, ()), fire})
            self._completed[shard] = tuple(done[-COMPLETED_KEPT:])
        elif result.cancelled:
            state = RunState.INTERRUPTED if result.interrupted else RunState.CANCELLED
        else:
            state = RunState.FAILED
        marker = replace(
            self._record(runner.claim, shard, ctx.run_id, fire, state),
            token=ctx.fencing_token or 0,
        )
        self._record_end(runner, marker)
        if not result.ok and not result.cancelled:
            ctx.logger.warning("run failed in {}: {!r}", result.failed_step, result.error)

    def skip_fire(self, runner: ShardRunner, fire_time: datetime) -> None:
        """A fire time passed while paused: record it, so that the shard's next owner does
        not take it for a missed one."""
        marker = self._record(
            runner.claim, runner.shard.index, "", fire_time.timestamp(), RunState.PAUSED
        )
        self._record_end(runner, marker)

    def runner_exited(self, runner: ShardRunner) -> None:
        self._wake.set()

    def _record_end(self, runner: ShardRunner, marker: RunRecord) -> None:
        claim: ShardClaim | None = runner.claim
        if claim is None:
            return
        try:
            self.backend.end_run(claim, marker)
        except BackendError as exc:
            runner.logger.warning("could not record the end of the run: {!r}", exc)
