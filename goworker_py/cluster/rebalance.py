"""Re-balancing: claiming the shards the strategy assigns to this instance, handing over the rest.

:class:`Rebalancer` is the part of :class:`~goworker_py.cluster.membership.ClusterHost` (a
mixin) that keeps the instance's shards right, on the supervisor thread: each pass reads the
members, computes the assignment with the sharding strategy, releases the shards this instance
should no longer own (stopping their threads first, releasing the claim only once the thread has
ended) and claims the ones it should own (starting their threads only once the claim is held —
after the previous owner released it), then publishes its shards on its member entry.

Hand-overs never abandon a fire (SPEC 4.3): a shard that must move lets its in-flight run finish
(up to ``handover_timeout``) before its claim is released; a run cut short by a hand-over, a
graceful stop or the fence is recorded ``interrupted``, and the shard's next owner re-runs that
fire time at once (see :mod:`~goworker_py.cluster.runs`). A handler that ignores cancellation
keeps its shard's claim, reported as stuck after ``shard_grace``, so that no other instance runs
the shard meanwhile.

It is a module of its own because it is the one concept of who owns what, and when a shard may
change hands; registration, health and the fence stay in
:mod:`~goworker_py.cluster.membership`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from goworker_py.cluster.sharding import moved_shards
from goworker_py.run import HANDOVER

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.callbacks import CallbackThread
    from goworker_py.cluster.backend import CoordinationBackend, Member, ShardClaim
    from goworker_py.cluster.sharding import ShardingStrategy
    from goworker_py.instance import HealthStatus, WorkerInstance
    from goworker_py.run import RunSettings
    from goworker_py.runner import ShardRunner


class Rebalancer:
    """Claims and releases shards to follow the assignment (a ``ClusterHost`` mixin)."""

    # Set by ClusterHost.__init__ (all of a host's state is set up in one place).
    settings: RunSettings
    backend: CoordinationBackend
    logger: Logger
    instance: WorkerInstance
    strategy: ShardingStrategy
    shard_grace: float
    handover_timeout: float
    callbacks: CallbackThread
    runners: dict[int, ShardRunner]
    claims: dict[int, ShardClaim]
    rebalances: int
    shards_moved: int
    _owners: dict[int, str]
    _members: tuple[WorkerInstance, ...]
    _member_ids: tuple[str, ...]
    _member: Member | None
    _releasing: dict[int, float]
    _stuck_reported: set[int]
    _completed: dict[int, tuple[float, ...]]
    _published: WorkerInstance | None

    if TYPE_CHECKING:
        # Defined by ClusterHost and RunLedger (declared here for the type checker only).
        @property
        def health(self) -> HealthStatus: ...

        def _node_vanished(self, why: str) -> None: ...

        def _start_runner(self, shard: int, claim: ShardClaim) -> None: ...

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
