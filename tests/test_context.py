"""A run's Context: cancellation, and in cluster mode the lease it reflects at once."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from helpers import WorkerTracker, wait_until
from loguru import logger

from goworker_py import Context, ExitReason, Handler, RunCancelled
from goworker_py.clock import SYSTEM_CLOCK
from goworker_py.handler import Shard
from goworker_py.hooks import add_observer, remove_observer
from goworker_py.instance import WorkerInstance
from goworker_py.run import RunResult

pytestmark = pytest.mark.timeout(20)


def make_context(lease: Any = None) -> Context:
    return Context(
        run_id="r1",
        scheduled_time=datetime(2026, 1, 1, tzinfo=timezone.utc),
        shard=Shard(0, 1),
        params="",
        instance=WorkerInstance.create("svc"),
        logger=logger,
        event=threading.Event(),
        clock=SYSTEM_CLOCK,
        lease=lease,
    )


def test_without_a_lease_only_the_event_cancels() -> None:
    ctx = make_context()
    assert not ctx.cancelled and not ctx.wait(0.01)
    ctx.event.set()
    assert ctx.cancelled and ctx.wait(5.0)
    assert not ctx.lapsed


def test_a_lapsed_lease_cancels_at_the_first_check_and_stays_cancelled() -> None:
    """A thread resumed after a freeze sees the lapse before any other thread ran."""
    until = [time.monotonic() - 0.001]
    ctx = make_context(lambda: until[0])
    assert ctx.cancelled and ctx.lapsed and ctx.event.is_set()
    until[0] = time.monotonic() + 60  # renewed later: the run stays cancelled
    assert ctx.cancelled
    with pytest.raises(RunCancelled):
        ctx.raise_if_cancelled()


def test_wait_ends_when_the_lease_lapses() -> None:
    until = time.monotonic() + 0.1
    ctx = make_context(lambda: until)
    began = time.monotonic()
    assert ctx.wait(10.0) is True
    assert 0.09 <= time.monotonic() - began < 2.0
    assert ctx.lapsed


def test_wait_follows_a_renewed_lease() -> None:
    """Renewals while waiting extend the wait; it ends at its own timeout, not cancelled."""
    until = [time.monotonic() + 0.05]
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.02):
            until[0] = time.monotonic() + 0.05

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        ctx = make_context(lambda: until[0])
        assert ctx.wait(0.3) is False
        assert not ctx.cancelled
    finally:
        stop.set()
        renewer.join()


def test_a_step_that_returns_after_cancellation_is_recorded_cancelled(
    workers: WorkerTracker,
) -> None:
    """The usual way a long step stops is to return once ``ctx.cancelled``: the run did not
    complete, and is recorded so (a cluster's next owner re-runs a fire cut short so)."""
    results: list[RunResult] = []
    entered = threading.Event()

    class Observer:
        def run_finished(self, worker: str, ctx: Context, result: RunResult, *_: Any) -> None:
            results.append(result)

        def retried(self, worker: str, step: str) -> None: ...

        def misfired(self, worker: str, count: int) -> None: ...

    class Polite(Handler):
        def do(self, ctx: Context) -> None:
            entered.set()
            ctx.wait(30)

    observer = Observer()
    add_observer(observer)
    try:
        worker = workers.make(Polite, cron="0 0 1 1 *")
        worker.run()
        worker.trigger()
        assert entered.wait(5)
        assert worker.stop_run() == 1
        wait_until(lambda: results, 5.0, what="the run's end")
        (result,) = results
        assert result.cancelled and not result.ok and result.cause == "stop-run"
        assert not result.interrupted
        worker.cancel()
        assert worker.wait(5) is ExitReason.CANCELLED
    finally:
        remove_observer(observer)
