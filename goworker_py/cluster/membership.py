"""Cluster membership: which shards this instance runs, kept right as the cluster changes.

:class:`ClusterHost` is the :class:`~goworker_py.runner.ShardHost` of a cluster-mode worker. All
of its work happens on the worker's supervisor thread, woken by kazoo callbacks (which only
signal): it reads the members, computes the assignment with the sharding strategy, releases
shards it should no longer own (stopping their threads first, releasing the claim only once the
thread has ended) and claims the ones it should own (starting their threads only once the claim
is held — after the previous owner released it).

Health (SPEC 4.2): ``GREEN`` when connected and registered; ``YELLOW`` while the connection is
suspended (no run starts); ``RED`` once the session is lost, or once the connection has been
suspended for longer than a safe fraction of the negotiated session timeout — the instance then
*fences itself*: it cancels in-flight runs before the server can expire its session and hand its
shards to someone else. A reconnect with the same session returns to ``GREEN`` with every shard
kept; a lost session re-registers as a new member.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, KazooException, SessionExpiredError

from goworker_py.cluster.discovery import WorkerDiscovery
from goworker_py.cluster.sharding import ShardingStrategy, StickyStrategy, moved_shards
from goworker_py.cluster.zookeeper import Claim, RunMarker
from goworker_py.errors import ConfigError, ServiceConfigConflict
from goworker_py.handler import Context
from goworker_py.instance import HealthStatus, WorkerInstance
from goworker_py.params import check_params_fit, resolve_cluster_parameter
from goworker_py.runner import RunResult, RunSettings, RunTicket, ShardRunner
from goworker_py.schedule import parse_schedule

if TYPE_CHECKING:
    from loguru import Logger

#: Fraction of the negotiated session timeout after which a suspended instance fences itself.
#: kazoo notices a silent server between T/3 and 2T/3 after it last heard from it; the server
#: expires the session T after that. Fencing T/12 after the suspension leaves at least T/4.
FENCE_FRACTION = 1.0 / 12.0


class ClusterHost:
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
    ) -> None:
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
        self._member_ids: tuple[str, ...] = ()
        self._releasing: dict[int, float] = {}
        self._stuck_reported: set[int] = set()
        self._suspended_at: float | None = None
        self._session_lost = False
        self._fenced = False
        self._session = 0
        self._refused_config: dict[str, Any] | None = None
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

    def _service_settings(self) -> dict[str, Any]:
        return {
            "sharding_total_count": self.settings.total,
            "params": self.settings.params,
            "schedule": self.cron,
        }

    def _check_service_config(self) -> None:
        mine = self._service_settings()
        stored = self.zk.read_service_config()
        if stored is None and self.zk.write_service_config(mine, create_only=True):
            return
        stored = self.zk.read_service_config()
        if stored == mine:
            return
        if self.overwrite:
            self.logger.warning("overwriting the service settings {} with {}", stored, mine)
            self.zk.write_service_config(mine, create_only=False)
            return
        differing = sorted(k for k in mine if (stored or {}).get(k) != mine[k])
        raise ServiceConfigConflict(
            f"service {self.settings.service!r} in ZooKeeper has "
            + ", ".join(f"{k}={(stored or {}).get(k)!r}" for k in differing)
            + " but this instance has "
            + ", ".join(f"{k}={mine[k]!r}" for k in differing)
            + ": start it with the same settings, or pass overwrite=True to replace them"
        )

    def _register(self) -> None:
        self._session = self.zk.session_id
        self.instance = replace(
            WorkerInstance.create(self.settings.service), shards=(), health=HealthStatus.GREEN
        )
        node = self.zk.register(self.instance)
        self._set_health(HealthStatus.GREEN)
        self._session_lost = False
        self.logger.info("registered as {} (session {:#x})", node, self._session)

    def stop_runners(self) -> None:
        """Ask every shard thread to stop (graceful shutdown)."""
        for runner in self.runners.values():
            runner.stop()

    def close(self) -> None:
        """Release what is released cleanly, unregister and close the session."""
        for shard, runner in list(self.runners.items()):
            claim = self.claims.pop(shard, None)
            if claim is not None and not runner.alive:
                self._safely(self.zk.release, claim)
        self._safely(self.zk.unregister)
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

    def next_timeout(self) -> float | None:
        """Seconds until the supervisor must look again without being woken (the fence timer)."""
        if self._suspended_at is not None and not self._fenced:
            deadline = self._suspended_at + self.zk.negotiated_timeout * FENCE_FRACTION
            return max(deadline - time.monotonic(), 0.0)
        if self._releasing:
            return 0.5
        return None

    def step(self) -> None:
        """One supervisor pass: follow the connection state, then re-balance."""
        if self._session_lost:
            self._lose_session()
        if self._suspended_at is not None:
            self._set_health(HealthStatus.YELLOW)
            fence_at = self._suspended_at + self.zk.negotiated_timeout * FENCE_FRACTION
            if not self._fenced and time.monotonic() >= fence_at:
                self._fence("connection suspended for too long")
            return
        if not self.zk.connected:
            return
        try:
            if self.zk.session_id != self._session or self.zk.node is None:
                self._register()
            self._fenced = False
            self._set_health(HealthStatus.GREEN)
            self._follow_service_config()
            self.rebalance()
        except (ConnectionLoss, SessionExpiredError) as exc:
            self.logger.info("ZooKeeper unavailable during re-balance: {!r}", exc)

    def _set_health(self, health: HealthStatus) -> None:
        if health is self.health:
            return
        self.logger.info("health {} -> {}", self.health.name, health.name)
        self.health = health

    def _fence(self, why: str) -> None:
        self._fenced = True
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

    def _follow_service_config(self) -> None:
        """Adopt settings another instance wrote with ``overwrite=True`` (SPEC 4.1).

        Every instance must compute the assignment over the same shard count: one left on the
        old count would leave shards unowned. All shards are released and claimed again, so
        each shard thread restarts with its new total, param and schedule.
        """
        stored = self.zk.read_service_config()
        if stored is None or stored == self._service_settings():
            return
        try:
            settings = self._settings_from(stored)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            if stored != self._refused_config:
                self._refused_config = stored
                self.logger.error(
                    "the service settings in ZooKeeper changed to {}, which this instance "
                    "cannot use ({}): it keeps running {}",
                    stored,
                    exc,
                    self._service_settings(),
                )
            return
        self.logger.warning(
            "the service settings in ZooKeeper changed from {} to {}: re-balancing with them",
            self._service_settings(),
            stored,
        )
        for shard in sorted(self.claims):
            if shard not in self._releasing:
                self._release(shard)
        self.settings = settings
        self.cron = str(stored["schedule"])

    def _settings_from(self, stored: dict[str, Any]) -> RunSettings:
        total = stored["sharding_total_count"]
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ConfigError(f"sharding_total_count must be an int >= 1, got {total!r}")
        params = str(stored["params"])
        params_map = resolve_cluster_parameter(params)
        check_params_fit(params_map, total)
        cron = str(stored["schedule"])
        schedule = parse_schedule(cron, self.settings.zone) if cron else None
        return replace(
            self.settings, total=total, params=params, params_map=params_map, schedule=schedule
        )

    # -- re-balancing ----------------------------------------------------------------------------

    def rebalance(self) -> None:
        """Claim what the strategy assigns to us, release what it does not."""
        # A release finished here changes our shards too: it must be published like any other.
        changed = self._finish_releases()
        members = self.zk.members()
        ids = [member.instance.id for member in members]
        if self.instance.id not in ids:
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
        self.instance = replace(
            self.instance, shards=tuple(sorted(self.claims)), health=self.health
        )
        self.zk.publish(self.instance)

    def _start_runner(self, shard: int, claim: Claim) -> None:
        marker = self.zk.read_marker(shard)
        failover_fire: datetime | None = None
        if marker is not None:
            if self.failover:
                failover_fire = datetime.fromtimestamp(marker.fire_time, timezone.utc).astimezone(
                    self.settings.zone
                )
                self.logger.warning(
                    "shard {}: run {} of a dead owner was interrupted; re-running it now",
                    shard,
                    marker.run_id,
                )
            else:
                self.zk.drop_marker(marker)
        runner = ShardRunner(self.settings, shard, self, failover_fire=failover_fire)
        runner.claim = claim
        runner.stale_marker = marker if self.failover else None
        self.runners[shard] = runner
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

    def begin_run(self, runner: ShardRunner, fire_time: datetime) -> RunTicket | None:
        claim: Claim | None = getattr(runner, "claim", None)
        if claim is None or runner.stopping:
            return None
        if self.health is not HealthStatus.GREEN or self._fenced:
            runner.logger.warning(
                "not starting the run for {}: health is {}", fire_time.isoformat(), self.health.name
            )
            return None
        replaces: RunMarker | None = runner.stale_marker
        is_failover = replaces is not None and runner.failover_pending
        marker = RunMarker(
            shard=runner.shard.index,
            owner=self.instance.id,
            session=self.zk.session_id,
            run_id="",
            fire_time=fire_time.timestamp(),
            token=claim.token,
        )
        if not self.zk.begin_run(claim, marker, replaces):
            current = self.zk.read_marker(runner.shard.index)
            # Our own marker that a connection loss kept us from deleting: replace it.
            ours = current is not None and current.session == self.zk.session_id
            if ours and self.zk.begin_run(claim, marker, current):
                runner.stale_marker = None
                return RunTicket(claim.token, is_failover)
            runner.logger.warning("not starting the run: this instance no longer holds the claim")
            return None
        runner.stale_marker = None
        return RunTicket(fencing_token=claim.token, is_failover=is_failover)

    def end_run(self, runner: ShardRunner, ctx: Context, result: RunResult) -> None:
        try:
            self.zk.end_run(runner.shard.index)
        except (ConnectionLoss, SessionExpiredError, KazooException) as exc:
            runner.logger.warning("could not clear the run marker: {!r}", exc)
        if not result.ok and not result.cancelled:
            ctx.logger.warning("run failed in {}: {!r}", result.failed_step, result.error)

    def runner_exited(self, runner: ShardRunner) -> None:
        self._wake.set()
