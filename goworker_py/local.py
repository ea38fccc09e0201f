"""Local mode: a cluster of one, without ZooKeeper. The process owns every shard."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from goworker_py.handler import Context
from goworker_py.instance import WorkerInstance
from goworker_py.run import RunResult, RunSettings, RunTicket
from goworker_py.runner import ShardRunner

#: Every local run's ticket: no fencing token, no failover, no lease.
_TICKET = RunTicket()


class LocalHost:
    """The :class:`~goworker_py.run.ShardHost` of a local-mode worker: all shards, always."""

    def __init__(self, settings: RunSettings, wake: threading.Event) -> None:
        self.settings = settings
        self.instance = WorkerInstance.create(settings.service, tuple(range(settings.total)))
        self.runners: dict[int, ShardRunner] = {}
        #: The last error of each shard whose run gave up (run-once workers raise RunFailed).
        self.failures: dict[int, BaseException] = {}
        self._exited: set[int] = set()
        self._wake = wake
        #: Called (once every shard's thread has ended) on the last one's thread.
        self.on_completed: Callable[[], None] | None = None
        # The instance never changes in local mode: one view per shard, made when first asked.
        self._views: dict[int, WorkerInstance] = {}

    def prepare(self) -> None:
        """Make one runner per shard."""
        for index in range(self.settings.total):
            self.runners[index] = ShardRunner(self.settings, index, self)

    def start(self) -> None:
        """Start every shard's thread."""
        for runner in self.runners.values():
            runner.start()

    @property
    def completed(self) -> bool:
        """True once every shard's thread has ended (run-once workers)."""
        return len(self._exited) == len(self.runners)

    def step(self) -> None:
        """Nothing to supervise: the shards never move."""

    def next_timeout(self) -> float | None:
        return None

    def stop_runners(self) -> None:
        for runner in self.runners.values():
            runner.stop()

    def close(self) -> None:
        """Nothing to release."""

    # -- ShardHost --------------------------------------------------------------------------------

    def instance_for(self, shard_index: int) -> WorkerInstance:
        view = self._views.get(shard_index)
        if view is None:
            view = self._views[shard_index] = self.instance.with_shard(shard_index)
        return view

    def members(self) -> tuple[WorkerInstance, ...]:
        return (self.instance,)

    def wait_ready(self, runner: ShardRunner) -> bool:
        return True

    def begin_run(self, runner: ShardRunner, fire_time: datetime, run_id: str) -> RunTicket | None:
        return _TICKET

    def end_run(self, runner: ShardRunner, ctx: Context, result: RunResult) -> None:
        if not result.ok and not result.cancelled:
            ctx.logger.warning("run failed in {}: {!r}", result.failed_step, result.error)

    def skip_fire(self, runner: ShardRunner, fire_time: datetime) -> None:
        """Nothing to record: a local worker's shards never change owner."""

    def runner_exited(self, runner: ShardRunner) -> None:
        result = runner.result
        if result is not None and not result.ok and not result.cancelled and result.error:
            self.failures[runner.shard.index] = result.error
        self._exited.add(runner.shard.index)
        self._wake.set()
        if self.on_completed is not None and self.completed:
            self.on_completed()
