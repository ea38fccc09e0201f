"""Graceful stop on real threads: interrupted retry waits, shutdown_timeout, cooperative loops."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import LogCapture, WorkerTracker, shard_threads, wait_until

from goworker_py import (
    Context,
    DefaultRetryPolicy,
    ExitReason,
    Handler,
    Worker,
    WorkerConfig,
)
from goworker_py.handler import Shard
from goworker_py.perform import RunSteps
from goworker_py.testing import make_context

pytestmark = pytest.mark.timeout(30)


class Boom(Exception):
    pass


def test_cancel_interrupts_a_long_retry_wait(workers: WorkerTracker) -> None:
    reports: list[BaseException] = []
    attempts: list[int] = []

    class Failing(Handler):
        def do(self, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise Boom("down")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    worker = workers.make(Failing, retry_policy=DefaultRetryPolicy(initial_interval=30))
    worker.run()
    wait_until(lambda: len(reports) == 1, 5, what="the first failure")
    cancelled_at = time.monotonic()
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert time.monotonic() - cancelled_at < 2
    assert attempts == [1]
    # a cancelled run is not a failed one: no AttemptsExhausted, no RunFailed
    assert [type(err) for err in reports] == [Boom]


def test_cancel_interrupts_a_retry_wait_of_a_cron_worker(workers: WorkerTracker) -> None:
    failed = threading.Event()

    class Failing(Handler):
        def do(self, ctx: Context) -> None:
            raise Boom("down")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            failed.set()

    worker = workers.make(
        Failing, cron="@every 10ms", retry_policy=DefaultRetryPolicy(initial_interval=30)
    )
    worker.run()
    assert failed.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED


def test_handler_ignoring_cancellation_is_abandoned_after_shutdown_timeout(
    workers: WorkerTracker,
) -> None:
    release = workers.release_event()
    in_do = threading.Event()

    class Stubborn(Handler):
        def do(self, ctx: Context) -> None:
            in_do.set()
            release.wait(20)  # ignores ctx.cancelled

    with LogCapture("WARNING") as log:
        worker = workers.make(Stubborn, config=WorkerConfig(shutdown_timeout=0.5), name="stubborn")
        worker.run()
        assert in_do.wait(5)
        cancelled_at = time.monotonic()
        worker.cancel()
        assert worker.wait(timeout=10) is ExitReason.CANCELLED
        elapsed = time.monotonic() - cancelled_at
    assert 0.45 <= elapsed < 3, f"wait() returned {elapsed:.2f} s after cancel()"
    assert log.contains("ignores ctx.cancelled")
    stuck = [t for t in shard_threads() if t.name == "goworker:stubborn:shard-0"]
    assert stuck and all(t.daemon for t in stuck)
    release.set()
    wait_until(lambda: not any(t.is_alive() for t in stuck), 5)


def test_shutdown_timeout_zero_returns_at_once(workers: WorkerTracker) -> None:
    release = workers.release_event()
    in_do = threading.Event()

    class Stubborn(Handler):
        def do(self, ctx: Context) -> None:
            in_do.set()
            release.wait(20)

    worker = workers.make(Stubborn, config=WorkerConfig(shutdown_timeout=0))
    worker.run()
    assert in_do.wait(5)
    worker.cancel()
    assert worker.wait(timeout=2) is ExitReason.CANCELLED


def test_cooperative_consumer_exits_promptly_and_after_runs(workers: WorkerTracker) -> None:
    consumed: list[int] = []
    steps: list[str] = []

    class Consumer(Handler):
        def before(self, ctx: Context) -> None:
            steps.append("before")

        def do(self, ctx: Context) -> None:
            steps.append("do")
            while not ctx.wait(0.05):
                consumed.append(1)
            steps.append("do saw cancel")

        def after(self, ctx: Context) -> None:
            steps.append(f"after cancelled={ctx.cancelled}")

    worker = workers.make(Consumer)  # default shutdown_timeout: 30 s
    worker.run()
    wait_until(lambda: len(consumed) >= 3, 5)
    cancelled_at = time.monotonic()
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert time.monotonic() - cancelled_at < 2
    assert steps == ["before", "do", "do saw cancel", "after cancelled=True"]


def test_polling_consumer_with_cancelled_flag(workers: WorkerTracker) -> None:
    steps: list[str] = []
    polling = threading.Event()

    class Poller(Handler):
        def do(self, ctx: Context) -> None:
            while not ctx.cancelled:
                polling.set()
                time.sleep(0.01)  # stands in for a short blocking poll of a queue
            steps.append("do")

        def after(self, ctx: Context) -> None:
            steps.append("after")

    worker = workers.make(Poller)
    worker.run()
    assert polling.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["do", "after"]


def test_cancel_during_before_skips_do_but_runs_after(workers: WorkerTracker) -> None:
    steps: list[str] = []
    in_before = threading.Event()

    class SlowSetup(Handler):
        def before(self, ctx: Context) -> None:
            in_before.set()
            ctx.wait(30)
            steps.append("before")

        def do(self, ctx: Context) -> None:
            steps.append("do")

        def after(self, ctx: Context) -> None:
            steps.append("after")

    worker = workers.make(SlowSetup)
    worker.run()
    assert in_before.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["before", "after"]


@pytest.mark.parametrize("shape", ["Handler's own before", "no before at all", "an instance"])
def test_a_run_cancelled_before_its_first_step_calls_none(shape: str) -> None:
    """Nothing ran, so ``after`` has nothing to release: it is not called either (the steps a
    run calls are worked out once per worker; a step the handler lacks is none of them)."""
    calls: list[str] = []

    class Inherits(Handler):
        def do(self, ctx: Context) -> None:
            calls.append("do")

        def after(self, ctx: Context) -> None:
            calls.append("after")

    class Duck:
        def do(self, ctx: Context) -> None:
            calls.append("do")

        def after(self, ctx: Context) -> None:
            calls.append("after")

    handler = {"Handler's own before": Inherits, "no before at all": Duck}.get(shape, Duck())
    settings = Worker(handler, handle_signals=False).validate()
    assert settings.step_names == ("do", "after")
    steps = RunSteps(settings, Shard(0, 1), host=None, logger=settings.logger)  # type: ignore[arg-type]
    result = steps.perform(make_context(cancelled=True))
    assert result.cancelled and not result.ok
    assert calls == []


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        ("every step returns", ["before", "do", "after", "steps ended"]),
        ("do is cancelled", ["before", "do", "after", "steps ended"]),
        ("cancelled between before and do", ["before", "after", "steps ended"]),
        ("do fails", ["before", "do"]),
    ],
)
def test_perform_cues_the_end_of_its_steps_once_every_step_has_returned(
    ending: str, expected: list[str]
) -> None:
    """The runner's cue (``steps_ended``: note the run's end, wait out the peal) comes once the
    last step has returned, ``after`` included; a run that ends otherwise does without it."""
    calls: list[str] = []

    class Steps(Handler):
        def before(self, ctx: Context) -> None:
            calls.append("before")
            if ending == "cancelled between before and do":
                ctx.event.set()

        def do(self, ctx: Context) -> None:
            calls.append("do")
            if ending == "do fails":
                raise ValueError("boom")
            if ending == "do is cancelled":
                ctx.event.set()

        def after(self, ctx: Context) -> None:
            calls.append("after")

    once = DefaultRetryPolicy(non_retryable_error_types=(ValueError,))
    settings = Worker(Steps, handle_signals=False, retry_policy=once).validate()
    steps = RunSteps(
        settings,
        Shard(0, 1),
        host=None,  # type: ignore[arg-type]
        logger=settings.logger,
        steps_ended=lambda: calls.append("steps ended"),
    )
    result = steps.perform(make_context())
    assert result.ok is (ending == "every step returns")
    assert result.cancelled is ending.startswith(("do is cancelled", "cancelled"))
    assert calls == expected


def test_raise_if_cancelled_in_do_still_runs_after(workers: WorkerTracker) -> None:
    """Leaving ``do`` with ``ctx.raise_if_cancelled()`` is cooperation, not failure."""
    steps: list[str] = []
    reports: list[BaseException] = []
    in_do = threading.Event()

    class Cooperative(Handler):
        def before(self, ctx: Context) -> None:
            steps.append("before")

        def do(self, ctx: Context) -> None:
            steps.append("do")
            while True:
                in_do.set()
                ctx.wait(0.05)
                ctx.raise_if_cancelled()

        def after(self, ctx: Context) -> None:
            steps.append("after")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    worker = workers.make(Cooperative)
    worker.run()
    assert in_do.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["before", "do", "after"]
    assert reports == []


def test_raise_if_cancelled_in_before_skips_do_and_after(workers: WorkerTracker) -> None:
    steps: list[str] = []
    in_before = threading.Event()

    class Cooperative(Handler):
        def before(self, ctx: Context) -> None:
            in_before.set()
            ctx.wait(30)
            ctx.raise_if_cancelled()
            steps.append("before done")

        def do(self, ctx: Context) -> None:
            steps.append("do")

        def after(self, ctx: Context) -> None:
            steps.append("after")

    worker = workers.make(Cooperative)
    worker.run()
    assert in_before.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == []


def test_do_failing_after_cancel_skips_after(workers: WorkerTracker) -> None:
    steps: list[str] = []
    in_do = threading.Event()

    class FailsOnCancel(Handler):
        def do(self, ctx: Context) -> None:
            in_do.set()
            ctx.wait(30)
            raise Boom("connection closed under me")

        def after(self, ctx: Context) -> None:
            steps.append("after")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            steps.append(type(err).__name__)

    worker = workers.make(FailsOnCancel, retry_policy=DefaultRetryPolicy(initial_interval=30))
    worker.run()
    assert in_do.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["Boom"]


def test_every_shard_is_cancelled_and_waited_for(workers: WorkerTracker) -> None:
    finished: list[int] = []
    lock = threading.Lock()
    started = threading.Semaphore(0)

    class Sharded(Handler):
        def do(self, ctx: Context) -> None:
            started.release()
            ctx.wait(30)
            time.sleep(0.1)  # a little cleanup after the cancellation
            with lock:
                finished.append(ctx.shard.index)

    worker = workers.make(Sharded, sharding_total_count=4, name="four")
    worker.run()
    for _ in range(4):
        assert started.acquire(timeout=5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    # wait() returned only after every shard's in-flight step returned
    assert sorted(finished) == [0, 1, 2, 3]
    wait_until(lambda: not [t for t in shard_threads() if t.name.startswith("goworker:four:")], 5)
