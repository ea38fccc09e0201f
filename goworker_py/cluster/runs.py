"""The run ledger of a claimed shard: its run marker, read on claiming and written on each run.

Every shard has one run marker on the coordination server (a
:class:`~goworker_py.cluster.backend.RunRecord`, written with the claim's fencing token): who ran
which fire time last, how it ended, and the fire times completed lately. :class:`RunLedger` is
the part of :class:`~goworker_py.cluster.membership.ClusterHost` (a mixin) that reads and writes
it:

- on claiming a shard (the supervisor thread), :meth:`RunLedger._start_runner` reads the marker
  its previous owner left and starts the shard's thread from there: a run that was cut short
  (``interrupted``) or left ``running`` by a dead instance is owed, and re-run at once with
  ``failover`` on (SPEC 4.3); a shard never run anywhere gets a ``claimed`` marker first;
- for each run (the shard's own thread), the :class:`~goworker_py.run.ShardHost` calls:
  ``begin_run`` writes the ``running`` marker — a fenced write that fails once another
  instance holds the claim — or refuses the run (not healthy, claim lost, a misfire by then);
  ``end_run`` records how the run ended (a run cut short by a hand-over, a stop or the fence is
  ``interrupted``: its fire time is owed); ``skip_fire`` records a fire time passed while
  paused, so that the next owner does not take it for a missed one.

It is a module of its own because it is the one place that knows what a marker means, and the
one part of ``ClusterHost`` that shard threads call; membership, health and re-balancing stay in
:mod:`~goworker_py.cluster.membership` and :mod:`~goworker_py.cluster.rebalance`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from goworker_py.cluster.backend import COMPLETED_KEPT, RunRecord, RunState
from goworker_py.errors import BackendError
from goworker_py.instance import HealthStatus
from goworker_py.run import RunTicket
from goworker_py.runner import ShardRunner

if TYPE_CHECKING:
    import threading

    from loguru import Logger

    from goworker_py.cluster.backend import CoordinationBackend, ShardClaim
    from goworker_py.handler import Context
    from goworker_py.instance import WorkerInstance
    from goworker_py.run import RunResult, RunSettings


class RunLedger:
    """Reads a claimed shard's run marker and records each run in it (a ``ClusterHost`` mixin).

    Implements :class:`~goworker_py.run.ShardHost`: the shard runners call it for every run.
    """

    # Set by ClusterHost.__init__ (all of a host's state is set up in one place).
    settings: RunSettings
    backend: CoordinationBackend
    logger: Logger
    instance: WorkerInstance
    failover: bool
    upstreams: tuple[tuple[str, int], ...]
    runners: dict[int, ShardRunner]
    _lease: str
    _completed: dict[int, tuple[float, ...]]
    _members: tuple[WorkerInstance, ...]
    _views: dict[int, tuple[WorkerInstance, WorkerInstance]]
    _healthy: threading.Event
    _wake: threading.Event

    if TYPE_CHECKING:
        # Defined by ClusterHost (declared here for the type checker only).
        @property
        def health(self) -> HealthStatus: ...

        def _fence_deadline(self) -> float: ...

    # -- claiming: continue from the marker --------------------------------------------------------

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
