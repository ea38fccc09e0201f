"""Cluster membership: which shards this instance runs, kept right as the cluster changes.

:class:`ClusterHost` is the :class:`~goworker_py.run.ShardHost` of a cluster-mode worker. All
of its work happens on the worker's supervisor thread, woken by kazoo callbacks (which only
signal): it reads the members, computes the assignment with the sharding strategy, releases
shards it should no longer own (stopping their threads first, releasing the claim only once the
thread has ended) and claims the ones it should own (starting their threads only once the claim
is held — after the previous owner released it).

Health (SPEC 4.2): ``GREEN`` when connected and registered; ``YELLOW`` while the connection is
suspended (no run starts); ``RED`` once the session is lost, or once ZooKeeper has not been heard
from for ``FENCE_AFTER`` of the negotiated session timeout — the instance then *fences itself*:
it cancels in-flight runs before the server can expire its session and hand its shards to
someone else. A reconnect with the same session returns to ``GREEN`` with every shard
kept; a lost session re-registers as a new member.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, KazooException, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.cluster.discovery import WorkerDiscovery
from goworker_py.cluster.service import ServiceNodes
from goworker_py.cluster.sharding import ShardingStrategy, StickyStrategy, moved_shards
from goworker_py.cluster.zookeeper import CANCELLED, DONE, FAILED, RUNNING, Claim, RunMarker
from goworker_py.handler import Context
from goworker_py.instance import HealthStatus, WorkerInstance
from goworker_py.run import RunResult, RunSettings, RunTicket
from goworker_py.runner import ShardRunner

if TYPE_CHECKING:
    from loguru import Logger

#: Fraction of the negotiated session timeout T after which an instance that has not heard from
#: ZooKeeper fences itself. The server expires a session about T after it last heard from the
#: client, which is no earlier than the client last heard from it: fencing 0.7 T after that
#: leaves a margin of at least 0.3 T. (kazoo's SUSPENDED is no clock for this: it counts from
#: the client's last send, and requests sent into a partition keep postponing it.)
FENCE_AFTER = 0.7
#: Seconds before a supervisor pass that failed on a ZooKeeper error is tried again.
RETRY_PAUSE = 0.5


class ClusterHost(ServiceNodes):
    """Membership, shard ownership and health of one cluster-mode worker instance."""

    def __init__(
        self,
        settings: RunSettings,
        discovery: WorkerDiscovery,
        wake: threading.Event,
        logger: Logger,
        *,
        strategy: ShardingStrategy | None = None,
        failover: bool = True,
        overwrite: bool = False,
        cron: str | None = None,
        shard_grace: float = 30.0,
        upstreams: tuple[tuple[str, int], ...] = (),
    ) -> None:
        #: WorkerGroup dependencies: ``(upstream service, its shard count)``; a downstream's
        #: shards run the fire times their upstream shards completed (see cluster.upstream).
        self.upstreams = upstreams
        if upstreams:
            from goworker_py.group import UpstreamFeed

            settings = replace(settings, feed=UpstreamFeed(settings.total))
        self.settings = settings
        self.zk = discovery
        self.strategy: ShardingStrategy = strategy or StickyStrategy()
        self.failover = failover
        self.overwrite = overwrite
        self.cron = cron or ""
        self.shard_grace = shard_grace
        self.logger = logger
        self.instance = WorkerInstance.create(settings.service)
        self.health = HealthStatus.GREEN
        self.runners: dict[int, ShardRunner] = {}
        self.claims: dict[int, Claim] = {}
        self.rebalances = 0
        self.shards_moved = 0
        self._wake = wake
        self._members: tuple[WorkerInstance, ...] = ()
        self._views: dict[int, tuple[WorkerInstance, WorkerInstance]] = {}
        #: Set while runs may start (GREEN, not fenced): shard threads wait on it in outages.
        self._healthy = threading.Event()
        self._healthy.set()
        self._member_ids: tuple[str, ...] = ()
        self._releasing: dict[int, float] = {}
        self._stuck_reported: set[int] = set()
        self._suspended_at: float | None = None
        self._session_lost = False
        self._fenced = False
        self._session = 0
        #: When a pass that failed on a ZooKeeper error is tried again (monotonic).
        self._retry_at: float | None = None
        #: What our instance node holds (see _publish).
        self._published: WorkerInstance | None = None
        discovery.on_change = wake.set
        discovery.on_state = self._on_state

    # -- start and stop --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Connect, check the service settings and register; raise clear errors on failure."""
        self.zk.connect()
        try:
            self._check_service_config()
            self._register()
        except BaseException:
            self.zk.close()
            raise

    def start(self) -> None:
        """Take a first share of shards (the supervisor keeps it right from then on)."""
        self.step()

    def _register(self) -> None:
        self._session = self.zk.session_id
        self.instance = replace(
            WorkerInstance.create(self.settings.service), shards=(), health=HealthStatus.GREEN
        )
        node = self.zk.register(self.instance)
        self._published = self.instance
        # The config and control watches belonged to the old session.
        self.zk.config_dirty = True
        self.zk.control_dirty = True
        self._set_health(HealthStatus.GREEN)
        self._session_lost = False
        self.logger.info("registered as {} (session {:#x})", node, self._session)

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
        stuck: dict[int, ShardRunner] = {}
        for shard, runner in list(self.runners.items()):
            claim = self.claims.pop(shard, None)
            if runner.alive:
                if claim is not None:
                    self.claims[shard] = claim
                    stuck[shard] = runner
            elif claim is not None:
                self._safely(self.zk.release, claim)
        self._safely(self.zk.unregister)
        if not stuck:
            self._safely(self.zk.close)
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
                self._safely(self.zk.release, claim)
        self._safely(self.zk.close)

    def _safely(self, action: Any, *args: Any) -> None:
        try:
            action(*args)
        except (KazooException, OSError) as exc:
            self.logger.debug("ZooKeeper call during shutdown failed: {!r}", exc)

    # -- supervisor -------------------------------------------------------------------------------

    @property
    def completed(self) -> bool:
        """A cluster member never completes on its own: it runs until stopped."""
        return False

    def _on_state(self, state: str) -> None:
        # kazoo's thread: record only.
        if state == KazooState.SUSPENDED:
            if self._suspended_at is None:
                self._suspended_at = time.monotonic()
        elif state == KazooState.LOST:
            self._session_lost = True
            self._suspended_at = None
        else:
            self._suspended_at = None

    def _fence_deadline(self) -> float:
        return self.zk.last_heard + self.zk.negotiated_timeout * FENCE_AFTER

    def next_timeout(self) -> float | None:
        """Seconds until the supervisor must look again without being woken (the fence timer)."""
        pauses = [0.5] if self._releasing else []
        if self._retry_at is not None:
            pauses.append(max(self._retry_at - time.monotonic(), 0.0))
        if not self._fenced:
            pauses.append(max(self._fence_deadline() - time.monotonic(), 0.0))
        return min(pauses) if pauses else None

    def step(self) -> None:
        """One supervisor pass: follow the connection state, then re-balance."""
        self._retry_at = None
        if self._session_lost:
            self._lose_session()
        silent = time.monotonic() >= self._fence_deadline()
        if silent and not self._fenced:
            self._fence(f"no word from ZooKeeper for {time.monotonic() - self.zk.last_heard:.2f} s")
        if self._suspended_at is not None or silent:
            if not self._fenced:
                self._set_health(HealthStatus.YELLOW)
            return
        if not self.zk.connected:
            return
        try:
            if self.zk.session_id != self._session or self.zk.node is None:
                self._register()
            self._fenced = False
            self._set_health(HealthStatus.GREEN)
            self._follow_service_config()
            self._follow_control()
            self.rebalance()
        except (ConnectionLoss, SessionExpiredError, KazooTimeoutError) as exc:
            self.logger.info("ZooKeeper unavailable during re-balance: {!r}", exc)
        except NoNodeError as exc:
            # Our own instance node is gone (deleted, or its session expired server-side
            # before we heard).
            self._node_vanished(repr(exc))
        except KazooException as exc:
            self.logger.opt(exception=exc).error("ZooKeeper error during re-balance: {!r}", exc)
            self._retry_at = time.monotonic() + RETRY_PAUSE

    def _set_health(self, health: HealthStatus) -> None:
        if health is not self.health:
            self.logger.info("health {} -> {}", self.health.name, health.name)
            self.health = health
        if health is HealthStatus.GREEN and not self._fenced:
            self._healthy.set()
        else:
            self._healthy.clear()

    def _fence(self, why: str) -> None:
        self._fenced = True
        self._healthy.clear()
        self._set_health(HealthStatus.RED)
        cancelled = [shard for shard, runner in self.runners.items() if runner.cancel_run()]
        self.logger.warning(
            "self-fencing ({}): no run starts; cancelled in-flight run(s) of shard(s) {}",
            why,
            cancelled,
        )

    def _lose_session(self) -> None:
        self._session_lost = False
        self._fence("session lost")
        # The session's ephemeral claims are gone: another instance may own these shards now.
        for runner in self.runners.values():
            runner.stop()
        for shard in list(self.claims):
            self._releasing.setdefault(shard, time.monotonic())
        self.claims.clear()
        self.zk.node = None

    # -- re-balancing ----------------------------------------------------------------------------

    def rebalance(self) -> None:
        """Claim what the strategy assigns to us, release what it does not."""
        # A release finished here changes our shards too: it must be published like any other.
        changed = self._finish_releases()
        members = self.zk.members()
        ids = [member.instance.id for member in members]
        if self.instance.id not in ids:
            if self.zk.node is not None and not self.zk.node_exists():
                self._node_vanished("deleted from ZooKeeper")
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
        moved = moved_shards(claims, assignment)
        for shard in sorted(set(self.claims) - mine):
            if shard not in self._releasing:
                self._release(shard)
        for shard in sorted(mine - set(self.claims)):
            runner = self.runners.get(shard)
            if runner is not None and runner.alive:
                continue  # our previous thread for it has not ended yet
            claim = self.zk.claim(shard, self.instance.id)
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
            for runner in list(self.runners.values()):
                if runner.alive and not runner.stopping:
                    runner.notify_watch()
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
        self.zk.node = None
        self._retry_at = time.monotonic() + RETRY_PAUSE

    def _release(self, shard: int) -> None:
        runner = self.runners.get(shard)
        self._releasing[shard] = time.monotonic()
        if runner is not None:
            runner.stop()
        self.logger.info("releasing shard {}", shard)

    def _finish_releases(self) -> bool:
        """Give up the claims of shards whose threads have ended; report stuck ones."""
        done = False
        for shard, since in list(self._releasing.items()):
            runner = self.runners.get(shard)
            if runner is not None and runner.alive:
                waited = time.monotonic() - since
                if waited > self.shard_grace and shard not in self._stuck_reported:
                    self._stuck_reported.add(shard)
                    self.logger.error(
                        "shard {} is stuck: its handler ignored cancellation for {:.1f} s; "
                        "keeping its claim so that no other instance runs it meanwhile",
                        shard,
                        waited,
                    )
                continue
            claim = self.claims.pop(shard, None)
            if claim is not None:
                self.zk.release(claim)
            self.runners.pop(shard, None)
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
        self.zk.publish(instance)
        self._published = instance

    def _start_runner(self, shard: int, claim: Claim) -> None:
        """Start the shard's thread, continuing from where its previous owner left it."""
        marker = self.zk.read_marker(shard)
        self.zk.adopt_marker(shard, marker)
        failover_fire: datetime | None = None
        start_after: datetime | None = None
        if marker is not None:
            last = datetime.fromtimestamp(marker.fire_time, timezone.utc).astimezone(
                self.settings.zone
            )
            start_after = last
            if marker.state == RUNNING and marker.session != self.zk.session_id:
                if self.failover:
                    failover_fire = last
                    self.logger.warning(
                        "shard {}: the run for {} was interrupted on a dead instance; "
                        "re-running it now (failover)",
                        shard,
                        last.isoformat(),
                    )
                else:
                    self.logger.warning(
                        "shard {}: the run for {} was interrupted on a dead instance; "
                        "not re-run (failover=False)",
                        shard,
                        last.isoformat(),
                    )
        runner = ShardRunner(
            self.settings, shard, self, failover_fire=failover_fire, start_after=start_after
        )
        runner.claim = claim
        self.runners[shard] = runner
        if self.upstreams and self.settings.feed is not None:
            from goworker_py.cluster.upstream import UpstreamWatch

            UpstreamWatch(self.zk, runner, self.settings.feed, self.upstreams, self.logger)
        runner.start()

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
            if self.health is HealthStatus.GREEN and not self._fenced:
                return True
            self._healthy.wait(0.05)
        return False

    def begin_run(self, runner: ShardRunner, fire_time: datetime, run_id: str) -> RunTicket | None:
        claim: Claim | None = runner.claim
        if claim is None or runner.stopping:
            return None
        if self.health is not HealthStatus.GREEN or self._fenced:
            runner.logger.warning(
                "not starting the run for {}: health is {}", fire_time.isoformat(), self.health.name
            )
            return None
        marker = RunMarker(
            shard=runner.shard.index,
            owner=self.instance.id,
            session=self.zk.session_id,
            run_id=run_id,
            fire_time=fire_time.timestamp(),
            token=claim.token,
        )
        try:
            began = self.zk.begin_run(claim, marker)
        except (ConnectionLoss, SessionExpiredError, KazooException):
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
            self._record_end(runner, replace(marker, state=CANCELLED))
            return None
        return RunTicket(fencing_token=claim.token, is_failover=runner.failover_pending)

    def end_run(self, runner: ShardRunner, ctx: Context, result: RunResult) -> None:
        state = DONE if result.ok else (CANCELLED if result.cancelled else FAILED)
        marker = RunMarker(
            shard=runner.shard.index,
            owner=self.instance.id,
            session=self.zk.session_id,
            run_id=ctx.run_id,
            fire_time=ctx.scheduled_time.timestamp(),
            token=ctx.fencing_token or 0,
            state=state,
        )
        self._record_end(runner, marker)
        if not result.ok and not result.cancelled:
            ctx.logger.warning("run failed in {}: {!r}", result.failed_step, result.error)

    def runner_exited(self, runner: ShardRunner) -> None:
        self._wake.set()

    def _record_end(self, runner: ShardRunner, marker: RunMarker) -> None:
        try:
            self.zk.end_run(marker)
        except (ConnectionLoss, SessionExpiredError, KazooException) as exc:
            runner.logger.warning("could not record the end of the run: {!r}", exc)
