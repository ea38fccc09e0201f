"""Runtime control of a running worker: pause / resume, trigger, stop_run (SPEC section 5)."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timezone

import pytest
from helpers import WorkerTracker, wait_until

from goworker_py import (
    Context,
    ExitReason,
    GoWorkerError,
    Handler,
    Worker,
    WorkerConfig,
    WorkerState,
)

pytestmark = pytest.mark.timeout(30)

UTC = WorkerConfig(timezone="UTC")
HOURLY = "@every 1h"


class Recorder(Handler):
    """Records (shard, is_triggered, scheduled_time, start) of every run; ``hold`` blocks ``do``."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold = hold
        self.lock = threading.Lock()
        self.runs: list[tuple[int, bool, datetime, float]] = []
        self.started = threading.Event()
        self.cancelled: list[int] = []

    def do(self, ctx: Context) -> None:
        with self.lock:
            self.runs.append(
                (ctx.shard.index, ctx.is_triggered, ctx.scheduled_time, time.monotonic())
            )
        self.started.set()
        if self.hold and ctx.wait(self.hold):
            with self.lock:
                self.cancelled.append(ctx.shard.index)

    def count(self) -> int:
        with self.lock:
            return len(self.runs)


def in_flight(worker: Worker) -> list[int]:
    """Shards whose run has begun and not yet ended (the handler may have returned already)."""
    return sorted(shard for shard, runner in worker.host.runners.items() if runner.in_run)


# -- trigger ------------------------------------------------------------------------------------


def test_trigger_runs_once_now_on_every_shard(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, HOURLY, sharding_total_count=3)
    worker.run()
    before = datetime.now(timezone.utc)
    assert worker.trigger() == 3
    wait_until(lambda: handler.count() == 3, 5, what="three triggered runs")
    after = datetime.now(timezone.utc)
    assert sorted(r[0] for r in handler.runs) == [0, 1, 2]
    assert all(r[1] for r in handler.runs), "ctx.is_triggered must be True"
    assert all(before <= r[2] <= after for r in handler.runs), "scheduled_time = when it started"
    time.sleep(0.2)
    assert handler.count() == 3, "one trigger, one run per shard"
    assert worker.state is WorkerState.RUNNING


def test_scheduled_runs_are_not_marked_triggered(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, "@every 100ms")
    worker.run()
    wait_until(lambda: handler.count() >= 2, 5)
    assert not any(r[1] for r in handler.runs)


def test_trigger_during_a_run_queues_one_run_after_it(workers: WorkerTracker) -> None:
    release = workers.release_event()

    class Slow(Recorder):
        def do(self, ctx: Context) -> None:
            super().do(ctx)
            if not ctx.is_triggered or self.count() == 1:
                release.wait(10)

    handler = Slow()
    worker = workers.make(handler, UTC, HOURLY)
    worker.run()
    assert worker.trigger() == 1
    assert handler.started.wait(5)
    # Three more requests while the first run is going: merged into one pending run.
    assert [worker.trigger() for _ in range(3)] == [1, 1, 1]
    time.sleep(0.1)
    assert handler.count() == 1, "runs of one shard never overlap"
    release.set()
    wait_until(lambda: handler.count() == 2, 5, what="the queued run")
    time.sleep(0.2)
    assert handler.count() == 2
    first, second = handler.runs
    assert second[3] >= first[3]


def test_trigger_leaves_the_schedule_alone(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, "@every 300ms")
    worker.run()
    wait_until(lambda: handler.count() >= 1, 5)
    worker.trigger()
    wait_until(lambda: any(r[1] for r in handler.runs), 5)
    wait_until(lambda: handler.count() >= 5, 5, what="scheduled runs going on after a trigger")
    scheduled = [r for r in handler.runs if not r[1]]
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(scheduled)]
    assert all(abs(g.total_seconds() - 0.3) < 0.05 for g in gaps), gaps


@pytest.mark.parametrize("when", ["before run()", "after it ended"])
def test_trigger_on_a_worker_that_is_not_running_is_an_error(
    workers: WorkerTracker, when: str
) -> None:
    worker = workers.make(Recorder(), UTC, HOURLY)
    if when == "after it ended":
        worker.run()
        worker.cancel()
        worker.wait(5)
    with pytest.raises(GoWorkerError, match="is not running"):
        worker.trigger()


def test_trigger_on_a_run_once_worker_is_an_error(workers: WorkerTracker) -> None:
    release = workers.release_event()

    class Waits(Handler):
        def do(self, ctx: Context) -> None:
            release.wait(10)

    worker = workers.make(Waits, UTC)
    worker.run()
    with pytest.raises(GoWorkerError, match="has no schedule"):
        worker.trigger()


def test_trigger_while_paused_is_an_error(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, HOURLY)
    worker.run()
    worker.pause()
    with pytest.raises(GoWorkerError, match="paused"):
        worker.trigger()
    worker.resume()
    assert worker.trigger() == 1
    wait_until(lambda: handler.count() == 1, 5)


# -- pause / resume ------------------------------------------------------------------------------


def test_paused_worker_keeps_its_shards_and_runs_nothing(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, "@every 50ms", sharding_total_count=2)
    worker.run()
    wait_until(lambda: handler.count() >= 2, 5)
    worker.pause()
    assert worker.paused
    time.sleep(0.1)  # a run that had already begun may finish
    frozen = handler.count()
    time.sleep(0.4)  # eight fire times per shard pass
    assert handler.count() == frozen, "no run starts while paused"
    assert worker.shards == (0, 1)
    assert worker.state is WorkerState.RUNNING
    worker.resume()
    assert not worker.paused
    wait_until(lambda: handler.count() >= frozen + 4, 5, what="runs after resume()")
    # The fire times missed while paused were not made up: runs go on at the schedule's pace.
    resumed = handler.runs[frozen:]
    assert resumed[0][2].timestamp() >= time.time() - 1.0


def test_pause_lets_the_in_flight_run_finish(workers: WorkerTracker) -> None:
    release = workers.release_event()

    class Blocks(Recorder):
        def do(self, ctx: Context) -> None:
            super().do(ctx)
            release.wait(10)
            self.finished = not ctx.cancelled

    handler = Blocks()
    worker = workers.make(handler, UTC, "@every 50ms")
    worker.run()
    assert handler.started.wait(5)
    worker.pause()
    release.set()
    wait_until(lambda: getattr(handler, "finished", False), 5, what="the run to finish normally")
    time.sleep(0.2)
    assert handler.count() == 1


def test_run_once_worker_started_paused_waits_for_resume(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC)
    worker.pause()  # before run(): the worker starts paused
    worker.run()
    with pytest.raises(TimeoutError):
        worker.wait(0.3)
    assert handler.count() == 0
    worker.resume()
    assert worker.wait(5) is ExitReason.COMPLETED
    assert handler.count() == 1


def test_cancel_while_a_run_waits_for_resume(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC)
    worker.pause()
    worker.run()
    time.sleep(0.1)
    began = time.monotonic()
    worker.cancel()
    assert worker.wait(5) is ExitReason.CANCELLED
    assert time.monotonic() - began < 2.0
    assert handler.count() == 0


def test_pause_and_resume_are_idempotent(workers: WorkerTracker) -> None:
    handler = Recorder()
    worker = workers.make(handler, UTC, "@every 50ms")
    worker.run()
    worker.resume()  # not paused: nothing to do
    worker.pause()
    worker.pause()
    assert worker.paused
    worker.resume()
    worker.resume()
    assert not worker.paused
    wait_until(lambda: handler.count() >= 2, 5)


# -- stop_run -----------------------------------------------------------------------------------


def test_stop_run_cancels_the_in_flight_run_and_keeps_the_worker(workers: WorkerTracker) -> None:
    handler = Recorder(hold=20.0)
    worker = workers.make(handler, UTC, HOURLY, sharding_total_count=2)
    worker.run()
    worker.trigger()
    wait_until(lambda: handler.count() == 2, 5, what="two runs in flight")
    assert worker.stop_run() == 2
    wait_until(lambda: len(handler.cancelled) == 2, 5, what="both runs to see ctx.cancelled")
    # do() has returned, but each run ends only after its bookkeeping: wait for that.
    wait_until(lambda: not in_flight(worker), 5, what="both runs to end")
    assert worker.state is WorkerState.RUNNING
    assert worker.stop_run() == 0, "nothing in flight any more"
    # The shards go on: another run starts when asked.
    handler.hold = 0.0
    assert worker.trigger() == 2
    wait_until(lambda: handler.count() == 4, 5)
    worker.cancel()
    assert worker.wait(5) is ExitReason.CANCELLED


def test_stop_run_before_run_and_when_idle_cancels_nothing(workers: WorkerTracker) -> None:
    worker = workers.make(Recorder(), UTC, HOURLY)
    assert worker.stop_run() == 0
    worker.run()
    assert worker.stop_run() == 0
