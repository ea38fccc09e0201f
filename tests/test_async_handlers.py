"""``async def`` handler methods: each step runs to completion on its shard's own event loop.

Retries, ``error_message``, ``RunFailed`` and cancellation behave as for plain methods; the
cancellation of a run cancels the task of its coroutine step (goworker_py/aio.py).
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any

import pytest
from helpers import LogCapture, WorkerTracker, wait_until
from loguru import logger

from goworker_py import (
    AttemptsExhausted,
    Context,
    DefaultRetryPolicy,
    ExitReason,
    Handler,
    RunFailed,
    Shard,
    TryAgain,
    WatchInfo,
    WorkerConfig,
    WorkerState,
    aio,
)
from goworker_py.clock import SYSTEM_CLOCK, FakeClock
from goworker_py.errors import RunCancelled
from goworker_py.instance import WorkerInstance
from goworker_py.local import LocalHost
from goworker_py.runner import ShardRunner

pytestmark = pytest.mark.timeout(30)

UTC = WorkerConfig(timezone="UTC")
HOURLY = "@every 1h"
FAST = DefaultRetryPolicy(initial_interval=0.01)


class Boom(Exception):
    pass


def _async(body: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    """``body`` as an ``async def`` method that really suspends once before running it."""

    async def method(self: Any, *args: Any) -> Any:
        await asyncio.sleep(0)
        return body(self, *args)

    return method


def _handler(steps: dict[str, Callable[..., Any]], make_async: set[str]) -> type[Handler]:
    """A Handler class with ``steps``; the ones named in ``make_async`` are ``async def``."""
    methods = {name: _async(body) if name in make_async else body for name, body in steps.items()}
    return type("Mixed", (Handler,), methods)


# -- the body runs --------------------------------------------------------------------------------


def test_async_steps_run_on_the_shard_thread_and_their_effects_are_visible(
    workers: WorkerTracker,
) -> None:
    seen: list[tuple[str, str, int]] = []

    class Fetch(Handler):
        async def before(self, ctx: Context) -> None:
            await asyncio.sleep(0)
            self.rows: list[int] = []
            seen.append(("before", threading.current_thread().name, id(asyncio.get_running_loop())))

        async def do(self, ctx: Context) -> None:
            for n in range(3):
                await asyncio.sleep(0.001)
                self.rows.append(n)
            seen.append(("do", threading.current_thread().name, id(asyncio.get_running_loop())))

        async def after(self, ctx: Context) -> None:
            await asyncio.sleep(0)
            assert self.rows == [0, 1, 2]  # state set in before and do, visible in after
            seen.append(("after", threading.current_thread().name, id(asyncio.get_running_loop())))

    worker = workers.make(Fetch, name="fetch")
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert [step for step, _, _ in seen] == ["before", "do", "after"]
    assert {thread for _, thread, _ in seen} == {"goworker:fetch:shard-0"}
    assert len({loop for _, _, loop in seen}) == 1, "one loop for the steps of one shard"


# -- retries, error_message, RunFailed: exactly as plain methods ----------------------------------


def _flaky_steps(events: list[tuple[str, object]]) -> dict[str, Callable[..., Any]]:
    attempts = [0]

    def before(self: Handler, ctx: Context) -> None:
        events.append(("before", ctx.attempt))

    def do(self: Handler, ctx: Context) -> None:
        events.append(("do", ctx.attempt))
        attempts[0] += 1
        if attempts[0] <= 2:
            raise Boom(f"fail {attempts[0]}")

    def after(self: Handler, ctx: Context) -> None:
        events.append(("after", ctx.attempt))

    def error_message(self: Handler, ctx: Context, err: BaseException) -> None:
        events.append(("error", f"{ctx.step}:{ctx.attempt}:{err}"))

    return {"before": before, "do": do, "after": after, "error_message": error_message}


@pytest.mark.parametrize(
    "make_async",
    [
        set(),
        {"do"},
        {"do", "error_message"},
        {"before", "after"},
        {"before", "do", "after", "error_message"},
    ],
    ids=lambda steps: "+".join(sorted(steps)) or "all-sync",
)
def test_failing_then_succeeding_async_do_is_retried_like_a_plain_one(
    workers: WorkerTracker, make_async: set[str]
) -> None:
    events: list[tuple[str, object]] = []
    worker = workers.make(_handler(_flaky_steps(events), make_async), retry_policy=FAST)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert events == [
        ("before", 1),
        ("do", 1),
        ("error", "do:1:fail 1"),
        ("do", 2),
        ("error", "do:2:fail 2"),
        ("do", 3),
        ("after", 1),
    ]


@pytest.mark.parametrize("error_message_async", [False, True], ids=["sync-report", "async-report"])
def test_always_failing_async_do_gives_run_failed(
    workers: WorkerTracker, error_message_async: bool
) -> None:
    reports: list[BaseException] = []
    after_ran: list[bool] = []

    def do(self: Handler, ctx: Context) -> None:
        raise Boom(f"attempt {ctx.attempt}")

    def after(self: Handler, ctx: Context) -> None:
        after_ran.append(True)

    def error_message(self: Handler, ctx: Context, err: BaseException) -> None:
        reports.append(err)

    handler = _handler(
        {"do": do, "after": after, "error_message": error_message},
        {"do", "after", "error_message"} if error_message_async else {"do", "after"},
    )
    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=2)
    worker = workers.make(handler, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert isinstance(failed.value.last_error, Boom)
    assert str(failed.value.last_error) == "attempt 3"
    assert [str(err) for err in reports[:3]] == ["attempt 1", "attempt 2", "attempt 3"]
    assert len(reports) == 4 and isinstance(reports[3], AttemptsExhausted)
    assert reports[3].attempts == 3 and reports[3].last_error is reports[2]
    assert after_ran == [], "a failed do skips after"


def test_async_error_message_that_raises_is_logged_and_swallowed(workers: WorkerTracker) -> None:
    class Reporter(Handler):
        async def do(self, ctx: Context) -> None:
            raise Boom("do broke")

        async def error_message(self, ctx: Context, err: BaseException) -> None:
            await asyncio.sleep(0)
            raise ValueError("report broke")

    worker = workers.make(
        Reporter, retry_policy=DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=1)
    )
    with LogCapture("ERROR") as log:
        worker.run()
        with pytest.raises(RunFailed):
            worker.wait(timeout=10)
    assert log.contains("error_message() raised ValueError('report broke')")


def test_try_again_from_an_async_do_reruns_at_once_without_counting(
    workers: WorkerTracker,
) -> None:
    seen: list[int] = []
    reports: list[BaseException] = []

    class Eventually(Handler):
        async def do(self, ctx: Context) -> None:
            await asyncio.sleep(0)
            seen.append(ctx.attempt)
            if len(seen) < 4:
                raise TryAgain()

        async def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    worker = workers.make(Eventually, retry_policy=DefaultRetryPolicy(initial_interval=5))
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert seen == [1, 1, 1, 1]
    assert reports == []


def test_non_retryable_error_from_an_async_do_ends_the_step_at_once(
    workers: WorkerTracker,
) -> None:
    attempts: list[int] = []
    reports: list[BaseException] = []

    class Strict(Handler):
        async def do(self, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            raise KeyError("no such row")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    policy = DefaultRetryPolicy(initial_interval=0.01, non_retryable_error_types=(KeyError,))
    worker = workers.make(Strict, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert isinstance(failed.value.last_error, KeyError)
    assert attempts == [1]
    assert isinstance(reports[1], AttemptsExhausted)
    assert reports[1].reason == "non-retryable error"


@pytest.mark.parametrize("do_async", [False, True], ids=["sync", "async"])
def test_a_cancelled_error_the_run_did_not_cause_is_a_failure(
    workers: WorkerTracker, do_async: bool
) -> None:
    """The handler's own ``CancelledError`` (no cancellation of the run) fails the step, like
    any ``BaseException`` from handler code - the same for a plain and an async ``do``."""
    reports: list[BaseException] = []

    def do(self: Handler, ctx: Context) -> None:
        raise asyncio.CancelledError("the handler's own")

    def error_message(self: Handler, ctx: Context, err: BaseException) -> None:
        reports.append(err)

    handler = _handler({"do": do, "error_message": error_message}, {"do"} if do_async else set())
    worker = workers.make(handler, retry_policy=FAST)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert isinstance(failed.value.last_error, asyncio.CancelledError)
    assert [type(err) for err in reports] == [asyncio.CancelledError, AttemptsExhausted]


# -- cancellation cancels the task ----------------------------------------------------------------


def test_cancel_cancels_the_task_of_an_async_do_and_after_still_runs(
    workers: WorkerTracker,
) -> None:
    steps: list[str] = []
    in_do = threading.Event()

    class Consumer(Handler):
        async def before(self, ctx: Context) -> None:
            steps.append("before")

        async def do(self, ctx: Context) -> None:
            in_do.set()
            try:
                await asyncio.sleep(3600)  # a receive that never returns on its own
            except asyncio.CancelledError:
                steps.append(f"do cancelled, ctx.cancelled={ctx.cancelled}")
                raise
            steps.append("do ran on")

        async def after(self, ctx: Context) -> None:
            # Started on a cancelled run to release what before acquired: not cancelled.
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            steps.append(f"after done, ctx.cancelled={ctx.cancelled}")

    worker = workers.make(Consumer, name="consumer")
    worker.run()
    assert in_do.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == [
        "before",
        "do cancelled, ctx.cancelled=True",
        "after done, ctx.cancelled=True",
    ]


def test_cancel_during_an_async_before_skips_do_and_after(workers: WorkerTracker) -> None:
    steps: list[str] = []
    in_before = threading.Event()

    class Connect(Handler):
        async def before(self, ctx: Context) -> None:
            in_before.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                steps.append(f"before cancelled, ctx.cancelled={ctx.cancelled}")
                raise

        async def do(self, ctx: Context) -> None:
            steps.append("do")

        def after(self, ctx: Context) -> None:
            steps.append("after")

    worker = workers.make(Connect)
    worker.run()
    assert in_before.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["before cancelled, ctx.cancelled=True"]


def test_an_async_after_is_cancelled_when_the_run_is_cancelled_during_it(
    workers: WorkerTracker,
) -> None:
    steps: list[str] = []
    in_after = threading.Event()

    class Flush(Handler):
        async def do(self, ctx: Context) -> None:
            steps.append("do")

        async def after(self, ctx: Context) -> None:
            in_after.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                steps.append(f"after cancelled, ctx.cancelled={ctx.cancelled}")
                raise

    worker = workers.make(Flush)
    worker.run()
    assert in_after.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["do", "after cancelled, ctx.cancelled=True"]


def test_an_after_started_on_a_cancelled_run_is_not_cancelled_by_a_later_stop(
    workers: WorkerTracker,
) -> None:
    steps: list[str] = []
    in_do, in_after, proceed = threading.Event(), threading.Event(), threading.Event()

    class Release(Handler):
        async def do(self, ctx: Context) -> None:
            in_do.set()
            await asyncio.sleep(3600)

        async def after(self, ctx: Context) -> None:
            in_after.set()
            await asyncio.to_thread(proceed.wait, 10)  # the worker is stopped meanwhile
            steps.append(f"after done, ctx.cancelled={ctx.cancelled}")

    worker = workers.make(Release(), UTC, HOURLY)
    worker.run()
    assert worker.trigger() == 1
    assert in_do.wait(5)
    assert worker.stop_run() == 1
    assert in_after.wait(5)
    worker.cancel()  # sets the run's (already set) event again
    proceed.set()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["after done, ctx.cancelled=True"]


def test_stop_run_cancels_the_tasks_and_the_worker_goes_on(workers: WorkerTracker) -> None:
    lock = threading.Lock()
    entered: list[int] = []
    cancelled: list[tuple[int, bool]] = []
    completed: list[int] = []
    hold = [True]

    class Job(Handler):
        async def do(self, ctx: Context) -> None:
            with lock:
                entered.append(ctx.shard.index)
            if not hold[0]:
                completed.append(ctx.shard.index)
                return
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                with lock:
                    cancelled.append((ctx.shard.index, ctx.cancelled))
                raise

    worker = workers.make(Job(), UTC, HOURLY, sharding_total_count=2)
    worker.run()
    assert worker.trigger() == 2
    wait_until(lambda: len(entered) == 2, 5, what="two async runs in flight")
    assert worker.stop_run() == 2
    wait_until(lambda: len(cancelled) == 2, 5, what="both tasks cancelled")
    assert sorted(cancelled) == [(0, True), (1, True)]
    assert worker.state is WorkerState.RUNNING
    wait_until(lambda: worker.stop_run() == 0, 5, what="the cancelled runs to end")
    hold[0] = False
    assert worker.trigger() == 2
    wait_until(lambda: len(completed) == 2, 5, what="the next runs to complete")
    worker.cancel()
    assert worker.wait(5) is ExitReason.CANCELLED


# -- ctx.sleep ------------------------------------------------------------------------------------


def test_ctx_sleep_returns_true_when_cancelled_and_the_next_await_is_cancelled(
    workers: WorkerTracker,
) -> None:
    seen: list[str] = []
    sleeping = threading.Event()

    class Poller(Handler):
        async def do(self, ctx: Context) -> None:
            assert await ctx.sleep(0.001) is False  # time up, not cancelled
            sleeping.set()
            seen.append(f"sleep -> {await ctx.sleep(3600)}")
            seen.append(f"again -> {await ctx.sleep(3600)}")  # already cancelled: at once
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                seen.append("next await cancelled")
                raise

    worker = workers.make(Poller)
    worker.run()
    assert sleeping.wait(5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert seen == ["sleep -> True", "again -> True", "next await cancelled"]


def test_a_consumer_loop_on_ctx_sleep_ends_cleanly(workers: WorkerTracker) -> None:
    polls: list[int] = []
    steps: list[str] = []

    class Consumer(Handler):
        async def do(self, ctx: Context) -> None:
            while not await ctx.sleep(0.005):
                polls.append(1)
            steps.append("do saw cancel")

        async def after(self, ctx: Context) -> None:
            steps.append(f"after, sleep -> {await ctx.sleep(3600)}")

    worker = workers.make(Consumer)
    worker.run()
    wait_until(lambda: len(polls) >= 3, 5)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert steps == ["do saw cancel", "after, sleep -> True"]


def test_ctx_sleep_passes_time_through_an_injected_clock(workers: WorkerTracker) -> None:
    clock = FakeClock()
    results: list[bool] = []

    class Waits(Handler):
        async def do(self, ctx: Context) -> None:
            results.append(await ctx.sleep(300))

    worker = workers.make(Waits, clock=clock)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert results == [False]
    assert 300 in clock.waits


def _context(event: threading.Event, step: str = "do") -> Context:
    ctx = Context(
        run_id="unit",
        scheduled_time=datetime.now(timezone.utc),
        shard=Shard(0, 1),
        params="",
        instance=WorkerInstance(id="i", service="s", host="h", pid=1),
        logger=logger,
        event=event,
        clock=SYSTEM_CLOCK,
    )
    ctx.step = step
    return ctx


def test_ctx_sleep_in_a_loop_of_your_own_is_woken_by_cancellation() -> None:
    """Outside the worker (a handler's unit test with asyncio.run) ctx.sleep still wakes."""
    event = threading.Event()
    ctx = _context(event)

    async def sleeper() -> bool:
        asyncio.get_running_loop().call_later(0.01, event.set)
        return await ctx.sleep(3600)

    assert asyncio.run(sleeper()) is True


# -- the step runner itself -----------------------------------------------------------------------


def test_a_step_started_on_a_cancelled_run_is_not_run_unless_it_is_after() -> None:
    event = aio.RunEvent()
    event.set()
    ran: list[str] = []

    async def body(step: str) -> None:
        ran.append(step)

    with pytest.raises(RunCancelled):
        aio.run_step(body("do"), _context(event, "do"))
    with pytest.raises(RunCancelled):
        aio.run_step(body("before"), _context(event, "before"))
    aio.run_step(body("after"), _context(event, "after"))
    aio.run_callback(body("error_message"), event, _context(event).logger)
    assert ran == ["after", "error_message"]


def test_plain_results_are_left_alone() -> None:
    ctx = _context(aio.RunEvent())
    aio.run_step(None, ctx)
    aio.run_step(42, ctx)
    aio.run_step(iter(()), ctx)  # a generator object is no coroutine
    aio.run_callback("ok", ctx.event, ctx.logger)


def test_tasks_a_step_leaves_running_are_cancelled_when_it_ends(workers: WorkerTracker) -> None:
    seen: list[str] = []

    class Spawner(Handler):
        async def do(self, ctx: Context) -> None:
            async def background() -> None:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    seen.append("background cancelled")
                    raise

            self.task = asyncio.get_running_loop().create_task(background())
            await asyncio.sleep(0)
            seen.append("do returned")

        async def after(self, ctx: Context) -> None:
            seen.append(f"after: background done={self.task.done()}")

    worker = workers.make(Spawner)
    with LogCapture("WARNING") as log:
        worker.run()
        assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert seen == ["do returned", "background cancelled", "after: background done=True"]
    assert log.contains("do left 1 task(s) running: cancelled")


def test_a_long_step_keeps_no_finished_task_alive(workers: WorkerTracker) -> None:
    """A consumer starting a task per message must not hold every finished one until it ends."""
    alive: list[bool] = []

    class Consumer(Handler):
        async def do(self, ctx: Context) -> None:
            refs = []
            for n in range(100):
                task = asyncio.get_running_loop().create_task(asyncio.sleep(0, n))
                await task
                refs.append(weakref.ref(task))
                del task
            await asyncio.sleep(0)  # the tasks' done callbacks run
            gc.collect()
            alive.extend(ref() is not None for ref in refs)

    worker = workers.make(Consumer)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert len(alive) == 100 and not any(alive)


def test_async_watch_runs_before_each_run_and_when_notified(workers: WorkerTracker) -> None:
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Watching(Handler):
        async def watch(self, info: WatchInfo) -> None:
            await asyncio.sleep(0)
            with lock:
                events.append(("watch", info.current_instance.shard_index))

        async def do(self, ctx: Context) -> None:
            with lock:
                events.append(("do", ctx.shard.index))
                runs = sum(1 for step, _ in events if step == "do")
            if runs >= 4:
                worker.cancel()

    worker = workers.make(Watching, cron="@every 20ms", sharding_total_count=2)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    for shard in (0, 1):
        mine = [step for step, index in events if index == shard]
        assert mine[:2] == ["watch", "do"]
        assert all(mine[i - 1] == "watch" for i, step in enumerate(mine) if step == "do")

    # Membership changes call watch on another thread (the cluster's): its own loop.
    settings = workers.make(Watching, sharding_total_count=1).validate()
    runner = ShardRunner(settings, 0, LocalHost(settings, threading.Event()))
    events.clear()
    notifier = threading.Thread(target=runner.notify_watch)
    notifier.start()
    notifier.join(5)
    assert events == [("watch", 0)]


# -- instances, loops and threads -----------------------------------------------------------------


def test_a_handler_instance_with_async_methods_keeps_one_loop_per_shard(
    workers: WorkerTracker,
) -> None:
    class Reused(Handler):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.loops: dict[int, list[asyncio.AbstractEventLoop]] = {0: [], 1: []}

        async def do(self, ctx: Context) -> None:
            await asyncio.sleep(0)
            with self.lock:
                self.loops[ctx.shard.index].append(asyncio.get_running_loop())

        def runs(self) -> int:
            with self.lock:
                return min(len(loops) for loops in self.loops.values())

    handler = Reused()
    worker = workers.make(handler, cron="@every 20ms", sharding_total_count=2, name="reused")
    worker.run()
    wait_until(lambda: handler.runs() >= 3, 10, what="three runs on each shard")
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    first = {shard: loops[0] for shard, loops in handler.loops.items()}
    for shard, loops in handler.loops.items():
        assert all(loop is first[shard] for loop in loops), "the loop is reused across runs"
    assert first[0] is not first[1], "each shard thread has its own loop"
    # Each loop is closed when its shard thread ends.
    wait_until(lambda: all(loop.is_closed() for loop in first.values()), 5, what="loops closed")


def test_many_shards_run_in_parallel_each_on_its_own_loop(workers: WorkerTracker) -> None:
    shards = 8
    barrier = threading.Barrier(shards)
    seen: list[tuple[int, str, int]] = []
    lock = threading.Lock()

    class Parallel(Handler):
        async def do(self, ctx: Context) -> None:
            # Passes only when all shards are inside do at the same time.
            await asyncio.to_thread(barrier.wait, 10)
            with lock:
                seen.append(
                    (
                        ctx.shard.index,
                        threading.current_thread().name,
                        id(asyncio.get_running_loop()),
                    )
                )

    worker = workers.make(Parallel, sharding_total_count=shards)
    worker.run()
    assert worker.wait(timeout=20) is ExitReason.COMPLETED
    assert sorted(index for index, _, _ in seen) == list(range(shards))
    assert len({thread for _, thread, _ in seen}) == shards
    assert len({loop for _, _, loop in seen}) == shards
