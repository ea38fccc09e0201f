"""Idle shards park: no thread of their own until their fire time comes near (SPEC 2).

A shard whose next fire time is more than ``PARK_AFTER`` away gives its thread up and leaves
a wake-up with the process-wide alarm, which starts a fresh thread ``LEAD`` before the fire
time. Everything a worker does must behave the same whether its shards are parked or not.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import pytest
from helpers import WorkerTracker, shard_threads, wait_until

from goworker_py import Context, ExitReason, Handler, WorkerGroup
from goworker_py.alarm import ALARM

pytestmark = pytest.mark.timeout(60)

DAILY = "0 3 * * *"


class Recorder(Handler):
    """Notes every run: (scheduled time, entry time, triggered)."""

    runs: list[tuple[datetime, float, bool]]

    def do(self, ctx: Context) -> None:
        self.runs.append((ctx.scheduled_time, time.time(), ctx.is_triggered))


def recorder() -> type[Recorder]:
    return type("Recording", (Recorder,), {"runs": []})


def threads_of(name: str) -> list[threading.Thread]:
    return [t for t in shard_threads() if t.name.startswith(f"goworker:{name}:")]


def test_an_idle_daily_worker_keeps_no_thread(workers: WorkerTracker) -> None:
    pending = ALARM.pending
    fleet = [workers.make(recorder(), cron=DAILY, name=f"idle{i}") for i in range(50)]
    for worker in fleet:
        worker.run()
    assert all(threads_of(f"idle{i}") == [] for i in range(50))
    assert ALARM.pending == pending + 50
    for worker in fleet:
        worker.cancel()
    # Nothing was running: each stopped on cancel()'s own thread, without one of its own.
    assert all(worker.wait(timeout=0) is ExitReason.CANCELLED for worker in fleet)
    assert ALARM.pending == pending
    wait_until(lambda: not any(threads_of(f"idle{i}") for i in range(50)), 5.0)


def test_a_parked_shard_runs_at_its_fire_time(workers: WorkerTracker) -> None:
    """``@every 3s`` parks between runs (3 s > PARK_AFTER): each run still starts on time."""
    handler = recorder()
    worker = workers.make(handler, cron="@every 3s", name="parked")
    worker.run()
    wait_until(lambda: threads_of("parked") == [], 5.0, what="the shard to park")
    wait_until(lambda: len(handler.runs) >= 2, 10.0, what="two runs")
    for scheduled, entered, _ in handler.runs[:2]:
        late = entered - scheduled.timestamp()
        assert 0 <= late < 0.5, f"run entered {late:.3f} s after its fire time"
    assert handler.runs[1][0].timestamp() - handler.runs[0][0].timestamp() == pytest.approx(3.0)


def test_trigger_runs_a_parked_shard_at_once_and_it_parks_again(workers: WorkerTracker) -> None:
    handler = recorder()
    worker = workers.make(handler, cron=DAILY, name="trig")
    worker.run()
    assert threads_of("trig") == []
    assert worker.trigger() == 1
    wait_until(lambda: len(handler.runs) == 1, 5.0, what="the triggered run")
    assert handler.runs[0][2] is True
    wait_until(lambda: threads_of("trig") == [], 5.0, what="the shard to park again")
    assert worker.trigger() == 1
    wait_until(lambda: len(handler.runs) == 2, 5.0, what="a second triggered run")


def test_pause_and_resume_a_parked_shard(workers: WorkerTracker) -> None:
    handler = recorder()
    worker = workers.make(handler, cron=DAILY, name="pr")
    worker.run()
    worker.pause()
    worker.resume()
    wait_until(lambda: threads_of("pr") == [], 5.0, what="the shard to park again")
    assert worker.trigger() == 1
    wait_until(lambda: len(handler.runs) == 1, 5.0, what="a run after resume")


def test_a_run_once_worker_parked_while_paused_runs_on_resume(workers: WorkerTracker) -> None:
    """Without a schedule the shard runs once; started paused, it parks until resume()."""
    handler = recorder()
    worker = workers.make(handler, name="once")
    worker.pause()
    worker.run()
    wait_until(lambda: threads_of("once") == [], 5.0, what="the paused shard to park")
    assert handler.runs == []
    worker.resume()
    assert worker.wait(timeout=5) is ExitReason.COMPLETED
    assert len(handler.runs) == 1


def test_a_downstream_parks_until_its_upstream_completes(workers: WorkerTracker) -> None:
    up, down = recorder(), recorder()
    group = WorkerGroup(handle_signals=False)
    extract = group.add(workers.make(up, cron=DAILY, name="g-extract"))
    group.add(workers.make(down, name="g-load"), depends_on=["g-extract"])
    group.run()
    try:
        assert [t for t in shard_threads() if t.name.startswith("goworker:g-")] == []
        assert extract.trigger() == 1
        wait_until(lambda: len(down.runs) == 1, 5.0, what="the downstream's run")
        assert down.runs[0][0] == up.runs[0][0]
        wait_until(lambda: threads_of("g-load") == [], 5.0, what="the downstream to park again")
    finally:
        group.cancel()
        group.wait(timeout=10)
