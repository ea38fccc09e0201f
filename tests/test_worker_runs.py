"""What happens inside runs on real shard threads: handler semantics, errors, retries, cron."""

from __future__ import annotations

import gc
import itertools
import threading
import time
import weakref
from datetime import datetime, timedelta, timezone

import pytest
from helpers import WorkerTracker, wait_until

from goworker_py import (
    RETRY_DONE,
    AttemptsExhausted,
    Context,
    DefaultRetryPolicy,
    ExitReason,
    Handler,
    RunFailed,
    TryAgain,
    WatchInfo,
    Worker,
    WorkerConfig,
    WorkerState,
)
from goworker_py.clock import FakeClock

pytestmark = pytest.mark.timeout(30)

UTC = WorkerConfig(timezone="UTC")
FAST = DefaultRetryPolicy(initial_interval=0.01)


class Boom(Exception):
    pass


# -- handler class vs instance --------------------------------------------------------------------


def test_handler_class_gets_a_fresh_instance_per_run(workers: WorkerTracker) -> None:
    seen: list[tuple[int, str, str, bool]] = []

    class Stateful(Handler):
        def before(self, ctx: Context) -> None:
            assert not hasattr(self, "token"), "state leaked from a previous run"
            self.token = ctx.run_id

        def do(self, ctx: Context) -> None:
            seen.append((id(self), "do", self.token, self.token == ctx.run_id))

        def after(self, ctx: Context) -> None:
            seen.append((id(self), "after", self.token, self.token == ctx.run_id))
            if len(seen) >= 6:
                worker.cancel()

    worker = workers.make(Stateful, cron="@every 20ms")
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    assert len(seen) >= 6
    assert all(same for *_, same in seen)
    tokens = [token for _, step, token, _ in seen if step == "do"]
    assert len(set(tokens)) == len(tokens)  # one run id per run
    for do, after in zip(seen[0::2], seen[1::2], strict=False):
        assert do[0] == after[0] and do[2] == after[2]  # same instance within a run


def test_handler_instance_is_reused(workers: WorkerTracker) -> None:
    class Counter(Handler):
        def __init__(self) -> None:
            self.runs = 0
            self.ids: set[int] = set()

        def do(self, ctx: Context) -> None:
            self.runs += 1
            self.ids.add(id(self))
            if self.runs == 3:
                worker.cancel()

    handler = Counter()
    worker = workers.make(handler, cron="@every 20ms")
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    assert handler.runs >= 3
    assert handler.ids == {id(handler)}


def test_plain_object_with_do_is_a_handler(workers: WorkerTracker) -> None:
    calls: list[str] = []

    class Duck:
        def do(self, ctx: Context) -> None:
            calls.append(ctx.run_id)

    worker = workers.make(Duck())
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert len(calls) == 1


# -- errors, error_message, retries ---------------------------------------------------------------


def test_error_message_order_when_do_fails_twice_then_succeeds(workers: WorkerTracker) -> None:
    events: list[tuple[str, object]] = []

    class Flaky(Handler):
        attempts = 0

        def before(self, ctx: Context) -> None:
            events.append(("before", ctx.attempt))

        def do(self, ctx: Context) -> None:
            events.append(("do", ctx.attempt))
            Flaky.attempts += 1
            if Flaky.attempts <= 2:
                raise Boom(f"fail {Flaky.attempts}")

        def after(self, ctx: Context) -> None:
            events.append(("after", ctx.attempt))

        def error_message(self, ctx: Context, err: BaseException) -> None:
            events.append(("error", f"{ctx.step}:{ctx.attempt}:{err}"))

    worker = workers.make(Flaky, retry_policy=FAST)
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


def test_always_failing_before_gives_run_failed(workers: WorkerTracker) -> None:
    wait_returned = threading.Event()
    reports: list[tuple[BaseException, str, bool]] = []
    steps: list[str] = []

    class Hopeless(Handler):
        def before(self, ctx: Context) -> None:
            steps.append("before")
            raise Boom(f"attempt {ctx.attempt}")

        def do(self, ctx: Context) -> None:
            steps.append("do")

        def after(self, ctx: Context) -> None:
            steps.append("after")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append((err, threading.current_thread().name, wait_returned.is_set()))

    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=3)
    worker = workers.make(Hopeless, retry_policy=policy, name="hopeless")
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    wait_returned.set()
    for thread in threading.enumerate():
        if thread.name.startswith("goworker:hopeless:"):
            thread.join(5)

    assert steps == ["before"] * 4
    errors = [err for err, _, _ in reports]
    assert [str(err) for err in errors[:4]] == [f"attempt {n}" for n in range(1, 5)]
    assert all(isinstance(err, Boom) for err in errors[:4])
    assert len(errors) == 5
    exhausted = errors[4]
    assert isinstance(exhausted, AttemptsExhausted)
    assert exhausted.step == "before" and exhausted.attempts == 4
    assert exhausted.last_error is errors[3]
    assert failed.value.last_error is errors[3]
    assert set(failed.value.errors) == {0}
    assert {name for _, name, _ in reports} == {"goworker:hopeless:shard-0"}
    assert not any(after_wait for _, _, after_wait in reports)


def test_failing_do_skips_after(workers: WorkerTracker) -> None:
    steps: list[str] = []

    class FailingDo(Handler):
        def before(self, ctx: Context) -> None:
            steps.append("before")

        def do(self, ctx: Context) -> None:
            steps.append("do")
            raise Boom("no")

        def after(self, ctx: Context) -> None:
            steps.append("after")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            steps.append(type(err).__name__)

    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=1)
    worker = workers.make(FailingDo, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed):
        worker.wait(timeout=10)
    assert steps == ["before", "do", "Boom", "do", "Boom", "AttemptsExhausted"]


def test_failing_after_is_reported_and_fails_the_run(workers: WorkerTracker) -> None:
    reports: list[str] = []

    class FailingAfter(Handler):
        def do(self, ctx: Context) -> None:
            pass

        def after(self, ctx: Context) -> None:
            raise Boom("cleanup failed")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(f"{ctx.step}:{type(err).__name__}")

    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=1)
    worker = workers.make(FailingAfter, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert reports == ["after:Boom", "after:Boom", "after:AttemptsExhausted"]
    assert str(failed.value.last_error) == "cleanup failed"


def test_failures_on_several_shards_are_all_in_run_failed(workers: WorkerTracker) -> None:
    class FailOnOdd(Handler):
        def do(self, ctx: Context) -> None:
            if ctx.shard.index % 2:
                raise Boom(f"shard {ctx.shard.index}")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            pass

    policy = DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=1)
    worker = workers.make(FailOnOdd, retry_policy=policy, sharding_total_count=4)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert sorted(failed.value.errors) == [1, 3]
    assert str(failed.value.last_error) == "shard 3"


def test_error_message_raising_is_logged_and_swallowed(workers: WorkerTracker) -> None:
    reports: list[str] = []

    class BadReporter(Handler):
        attempts = 0

        def do(self, ctx: Context) -> None:
            BadReporter.attempts += 1
            if BadReporter.attempts < 3:
                raise Boom("transient")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(str(err))
            raise RuntimeError("the reporter itself is broken")

    from helpers import LogCapture

    with LogCapture("ERROR") as log:
        worker = workers.make(BadReporter, retry_policy=FAST)
        worker.run()
        assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert reports == ["transient", "transient"]
    assert BadReporter.attempts == 3
    assert log.contains("error_message() raised")


def test_try_again_reruns_at_once_without_counting(workers: WorkerTracker) -> None:
    attempts: list[int] = []
    reports: list[BaseException] = []

    class Busy(Handler):
        def do(self, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if len(attempts) < 4:
                raise TryAgain()

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    # A 30 s retry interval: finishing quickly proves TryAgain never waited on the policy.
    policy = DefaultRetryPolicy(initial_interval=30, maximum_attempts=1)
    worker = workers.make(Busy, retry_policy=policy)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert attempts == [1, 1, 1, 1]
    assert reports == []


def test_try_again_after_a_real_failure_keeps_the_attempt_count(workers: WorkerTracker) -> None:
    attempts: list[int] = []
    reports: list[str] = []

    class Mixed(Handler):
        def do(self, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if len(attempts) == 1:
                raise Boom("real")
            if len(attempts) < 4:
                raise TryAgain()

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(str(err))

    worker = workers.make(Mixed, retry_policy=FAST)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert attempts == [1, 2, 2, 2]
    assert reports == ["real"]


def test_non_retryable_error_types_stop_at_first_occurrence(workers: WorkerTracker) -> None:
    reports: list[BaseException] = []
    calls: list[int] = []

    class Strict(Handler):
        def do(self, ctx: Context) -> None:
            calls.append(ctx.attempt)
            raise KeyError("missing")  # a subclass of the listed LookupError

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    policy = DefaultRetryPolicy(initial_interval=30, non_retryable_error_types=(LookupError,))
    worker = workers.make(Strict, retry_policy=policy)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert calls == [1]
    assert len(reports) == 2
    assert isinstance(reports[0], KeyError)
    assert isinstance(reports[1], AttemptsExhausted)
    assert reports[1].reason == "non-retryable error"
    assert failed.value.last_error is reports[0]


def test_custom_retry_policy_like_the_seed_sample(workers: WorkerTracker) -> None:
    """The seed's custom-retry-policy example at small scale: 5 tries of before, then give up."""
    asked: list[int] = []
    steps: list[tuple[str, int]] = []
    reports: list[BaseException] = []

    class EveryBit:
        def compute_next_delay(self, attempt: int) -> float:
            asked.append(attempt)
            return 0.02 if attempt < 5 else RETRY_DONE

    class FailingBefore(Handler):
        def before(self, ctx: Context) -> None:
            steps.append(("before", ctx.attempt))
            raise RuntimeError("unknown error")

        def do(self, ctx: Context) -> None:
            steps.append(("do", ctx.attempt))

        def after(self, ctx: Context) -> None:
            steps.append(("after", ctx.attempt))

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append(err)

    worker = workers.make(FailingBefore, retry_policy=EveryBit())
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert steps == [("before", n) for n in range(1, 6)]
    assert asked == [1, 2, 3, 4, 5]
    assert len(reports) == 6 and isinstance(reports[-1], AttemptsExhausted)
    assert reports[-1].attempts == 5
    assert failed.value.last_error is reports[4]


def test_attempts_count_per_step(workers: WorkerTracker) -> None:
    seen: list[tuple[str, int]] = []

    class TwoFlakySteps(Handler):
        failures = {"before": 1, "do": 2}

        def before(self, ctx: Context) -> None:
            seen.append(("before", ctx.attempt))
            if self.failures["before"]:
                self.failures["before"] -= 1
                raise Boom("before")

        def do(self, ctx: Context) -> None:
            seen.append(("do", ctx.attempt))
            if self.failures["do"]:
                self.failures["do"] -= 1
                raise Boom("do")

        def error_message(self, ctx: Context, err: BaseException) -> None:
            pass

    # maximum_attempts=2 is enough for each step on its own, not for the two together.
    worker = workers.make(
        TwoFlakySteps(), retry_policy=DefaultRetryPolicy(initial_interval=0.01, maximum_attempts=2)
    )
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert seen == [("before", 1), ("before", 2), ("do", 1), ("do", 2), ("do", 3)]


def test_base_exception_in_a_step_fails_the_run_but_not_the_shard(
    workers: WorkerTracker,
) -> None:
    """``SystemExit`` (a library calling ``sys.exit()``) is a failed step, not a dead shard."""
    runs = {0: 0, 1: 0}
    reports: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    class Exits(Handler):
        def do(self, ctx: Context) -> None:
            with lock:
                runs[ctx.shard.index] += 1
                n = runs[ctx.shard.index]
            if ctx.shard.index == 1 and n == 2:
                raise SystemExit(3)

        def error_message(self, ctx: Context, err: BaseException) -> None:
            reports.append((ctx.shard.index, err))

    worker = workers.make(Exits, cron="@every 20ms", sharding_total_count=2, name="exits")
    worker.run()
    wait_until(lambda: runs[1] >= 5, 10, what="shard 1 keeps running after SystemExit")
    assert worker.state is WorkerState.RUNNING
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert [(shard, type(err)) for shard, err in reports] == [
        (1, SystemExit),
        (1, AttemptsExhausted),
    ]
    exhausted = reports[1][1]
    assert isinstance(exhausted, AttemptsExhausted) and exhausted.last_error is reports[0][1]


def test_base_exception_in_a_run_once_worker_is_run_failed(workers: WorkerTracker) -> None:
    class Exits(Handler):
        def do(self, ctx: Context) -> None:
            raise SystemExit(3)

        def error_message(self, ctx: Context, err: BaseException) -> None:
            pass

    worker = workers.make(Exits, retry_policy=FAST)
    worker.run()
    with pytest.raises(RunFailed) as failed:
        worker.wait(timeout=10)
    assert isinstance(failed.value.last_error, SystemExit)


def test_nothing_is_kept_per_run(workers: WorkerTracker) -> None:
    """Handler instances and run events of finished runs are garbage (no per-run leak)."""
    handlers: list[weakref.ref[Handler]] = []
    events: list[weakref.ref[threading.Event]] = []
    threads_seen: set[int] = set()

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            handlers.append(weakref.ref(self))
            events.append(weakref.ref(ctx.event))
            threads_seen.add(threading.active_count())

    worker = workers.make(Tick, cron="@every 10ms")
    worker.run()
    wait_until(lambda: len(handlers) >= 30, 10)
    gc.collect()
    alive = sum(ref() is not None for ref in handlers[:-2])
    assert alive == 0, f"{alive} handler instances of finished runs are still referenced"
    assert sum(ref() is not None for ref in events[:-2]) == 0
    assert len(threads_seen) == 1  # the thread count does not grow with runs
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED


def test_a_shard_runner_keeps_its_attributes_in_a_key_sharing_dict(
    workers: WorkerTracker,
) -> None:
    """CPython (3.11) lets the instances of a class share one table of attribute names only up
    to 29 of them: one more and every shard's ``__dict__`` holds a table of its own, over a KiB
    per shard (issue #12's memory per idle worker). Counted once runs have set all they set."""
    runs: list[int] = []

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            runs.append(ctx.shard.index)

    worker = workers.make(Tick, cron="@every 10ms")
    worker.run()
    wait_until(lambda: len(runs) >= 3, 10)
    runner = worker._host.runners[0]  # type: ignore[union-attr]
    assert len(vars(runner)) <= 29, sorted(vars(runner))
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED


# -- watch ---------------------------------------------------------------------------------------


def test_watch_is_called_before_each_run_with_its_shard(workers: WorkerTracker) -> None:
    events: list[tuple[str, int, str]] = []
    infos: list[WatchInfo] = []
    lock = threading.Lock()

    class Watching(Handler):
        def watch(self, info: WatchInfo) -> None:
            with lock:
                infos.append(info)
                events.append(("watch", info.current_instance.shard_index, info.param))

        def before(self, ctx: Context) -> None:
            with lock:
                events.append(("before", ctx.shard.index, ctx.shard.param))

        def do(self, ctx: Context) -> None:
            with lock:
                events.append(("do", ctx.shard.index, ctx.shard.param))
                done = sum(1 for e in events if e[0] == "do")
            if done >= 6:
                worker.cancel()

    worker = workers.make(
        Watching, cron="@every 30ms", sharding_total_count=2, params="0=x,1=y", service_name="w"
    )
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    for shard, param in ((0, "x"), (1, "y")):
        mine = [e[0] for e in events if e[1] == shard]
        assert all(e[2] == param for e in events if e[1] == shard)
        # every run is watch -> before -> do (a cancelled last run may stop after watch)
        assert mine[:3] == ["watch", "before", "do"]
        for i, step in enumerate(mine):
            if step == "before":
                assert mine[i - 1] == "watch"
    for info in infos:
        assert info.current_instance.service == "w"
        assert info.cluster_instances and info.cluster_instances[0].id == (info.current_instance.id)


def test_failing_watch_does_not_stop_the_run(workers: WorkerTracker) -> None:
    done: list[str] = []

    class BadWatch(Handler):
        def watch(self, info: WatchInfo) -> None:
            raise Boom("watch broke")

        def do(self, ctx: Context) -> None:
            done.append("do")

    worker = workers.make(BadWatch)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert done == ["do"]


# -- cron on the real clock -----------------------------------------------------------------------


def test_every_second_cron_fires_on_the_second(workers: WorkerTracker) -> None:
    starts: list[tuple[datetime, float]] = []

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            starts.append((ctx.scheduled_time, time.time()))

    worker = workers.make(Tick, cron="* * * * * *", config=UTC)
    worker.run()
    wait_until(lambda: len(starts) >= 3, 6, what="3 runs of a per-second schedule")
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    scheduled = [s for s, _ in starts]
    for fire, started in starts:
        assert fire.microsecond == 0
        assert fire.tzinfo is not None
        lateness = started - fire.timestamp()
        assert lateness >= 0, "a run started before its fire time"
        assert lateness < 0.5, f"a run started {lateness:.3f} s after its fire time"
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(scheduled)]
    assert all(gap >= 1 and gap == int(gap) for gap in gaps)
    assert gaps.count(1) >= 1


def test_cron_worker_does_not_run_at_start(workers: WorkerTracker) -> None:
    runs: list[str] = []

    class Once(Handler):
        def do(self, ctx: Context) -> None:
            runs.append(ctx.run_id)

    worker = workers.make(Once, cron="0 0 1 1 *")
    worker.run()
    with pytest.raises(TimeoutError):
        worker.wait(timeout=0.3)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert runs == []


def test_cancel_mid_run_cancels_the_in_flight_run_and_starts_no_new_one(
    workers: WorkerTracker,
) -> None:
    starts: list[float] = []
    outcome: list[bool] = []
    after_ran: list[bool] = []
    in_run = threading.Event()

    class Slow(Handler):
        def do(self, ctx: Context) -> None:
            starts.append(time.monotonic())
            in_run.set()
            outcome.append(ctx.wait(30))
            outcome.append(ctx.cancelled)

        def after(self, ctx: Context) -> None:
            after_ran.append(ctx.cancelled)

    worker = workers.make(Slow, cron="@every 50ms", name="slowcron")
    worker.run()
    assert in_run.wait(5)
    cancelled_at = time.monotonic()
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    for thread in threading.enumerate():
        if thread.name.startswith("goworker:slowcron:"):
            thread.join(5)
            assert not thread.is_alive()
    assert outcome == [True, True]
    assert after_ran == [True]  # do returned (did not fail): after still runs
    assert len(starts) == 1 and starts[0] < cancelled_at


def test_runs_of_one_shard_never_overlap(workers: WorkerTracker) -> None:
    intervals: dict[int, list[tuple[float, float]]] = {0: [], 1: []}
    lock = threading.Lock()

    class Overrunning(Handler):
        def do(self, ctx: Context) -> None:
            start = time.monotonic()
            time.sleep(0.07)  # longer than the 20 ms interval: every run overruns
            with lock:
                intervals[ctx.shard.index].append((start, time.monotonic()))

    worker = workers.make(Overrunning, cron="@every 20ms", sharding_total_count=2)
    worker.run()
    wait_until(lambda: min(len(v) for v in intervals.values()) >= 5, 10)
    worker.cancel()
    assert worker.wait(timeout=5) is ExitReason.CANCELLED
    for shard_intervals in intervals.values():
        for (_, end), (next_start, _) in itertools.pairwise(shard_intervals):
            assert next_start >= end


# -- misfires and clock jumps, with a fake clock --------------------------------------------------

FAKE_START = 1_700_000_000.0  # a whole second


def _fake_cron_worker(
    workers: WorkerTracker,
    clock: FakeClock,
    stop_after: int,
    misfire_policy: str,
    durations: dict[int, float] | None = None,
    jumps: dict[int, float] | None = None,
) -> tuple[Worker, list[tuple[float, float]]]:
    """A per-second worker on ``clock``; records ``(scheduled_time, fake start)`` per run.

    Run ``n`` lasts ``durations[n]`` fake seconds and then steps the wall clock by
    ``jumps[n]``; the worker is cancelled from inside run ``stop_after``.
    """
    runs: list[tuple[float, float]] = []
    durations = durations or {}
    jumps = jumps or {}

    class Timed(Handler):
        def do(self, ctx: Context) -> None:
            runs.append((ctx.scheduled_time.timestamp(), clock.time()))
            n = len(runs)
            if n in durations:
                ctx.wait(durations[n])
            if n in jumps:
                clock.jump(jumps[n])
            if n >= stop_after:
                worker.cancel()
                ctx.event.wait(5)  # really wait for the stop to reach this run

    worker = workers.make(
        Timed, cron="* * * * * *", config=UTC, clock=clock, misfire_policy=misfire_policy
    )
    return worker, runs


def test_misfire_skip_drops_passed_fire_times(workers: WorkerTracker) -> None:
    clock = FakeClock(FAKE_START)
    worker, runs = _fake_cron_worker(workers, clock, 3, "skip", durations={1: 3.5})
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    scheduled = [s - FAKE_START for s, _ in runs[:3]]
    # run 1 (fire +1) lasts until +4.5: fires +2, +3, +4 are skipped; next is +5.
    assert scheduled == [1, 5, 6]
    assert runs[1][1] >= runs[1][0]  # started at (not before) its fire time


def test_misfire_run_once_runs_the_latest_missed_at_once(workers: WorkerTracker) -> None:
    clock = FakeClock(FAKE_START)
    worker, runs = _fake_cron_worker(workers, clock, 3, "run_once", durations={1: 3.5})
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    scheduled = [s - FAKE_START for s, _ in runs[:3]]
    assert scheduled == [1, 4, 5]
    # the catch-up run started immediately after the overrun (fake time did not move)
    assert runs[1][1] - FAKE_START == pytest.approx(4.5)


def test_misfire_policy_from_config(workers: WorkerTracker) -> None:
    clock = FakeClock(FAKE_START)
    runs: list[float] = []

    class Timed(Handler):
        def do(self, ctx: Context) -> None:
            runs.append(ctx.scheduled_time.timestamp() - FAKE_START)
            if len(runs) == 1:
                ctx.wait(2.5)
            if len(runs) >= 2:
                worker.cancel()
                ctx.event.wait(5)

    config = WorkerConfig(timezone="UTC", misfire_policy="run_once")
    worker = workers.make(Timed, cron="* * * * * *", config=config, clock=clock)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    assert runs[:2] == [1, 3]


@pytest.mark.parametrize(("policy", "coalesced"), [("skip", 0), ("run_once", 1)])
def test_wall_clock_jump_forward_runs_at_most_once(
    workers: WorkerTracker, policy: str, coalesced: int
) -> None:
    clock = FakeClock(FAKE_START)
    worker, runs = _fake_cron_worker(workers, clock, 5, policy, jumps={2: 3600.0})
    started = time.monotonic()
    worker.run()
    assert worker.wait(timeout=20) is ExitReason.CANCELLED
    assert time.monotonic() - started < 15, "catching up an hour took too long"
    scheduled = [s - FAKE_START for s, _ in runs[:5]]
    assert scheduled[:2] == [1, 2]
    jumped_to = 2 + 3600  # run 2 started at +2, then the clock read +3602
    in_gap = [s for s in scheduled[2:] if s <= jumped_to]
    assert len(in_gap) == coalesced
    if coalesced:
        assert in_gap == [jumped_to]  # the latest missed fire time, not the first
    after = [s for s in scheduled[2:] if s > jumped_to]
    assert after == sorted(after) and len(set(after)) == len(after)
    assert all(b - a == 1 for a, b in itertools.pairwise(after))
    # no storm: a handful of fake sleeps, not one per missed second
    assert len(clock.waits) < 100


def test_wall_clock_jump_back_reruns_no_completed_slot(workers: WorkerTracker) -> None:
    clock = FakeClock(FAKE_START)
    runs: list[float] = []

    class Jumper(Handler):
        def do(self, ctx: Context) -> None:
            runs.append(ctx.scheduled_time.timestamp() - FAKE_START)
            if len(runs) == 2:
                clock.jump(-3600)
            if len(runs) >= 4:
                worker.cancel()
                ctx.event.wait(5)

    worker = workers.make(Jumper, cron="* * * * * *", config=UTC, clock=clock)
    worker.run()
    assert worker.wait(timeout=20) is ExitReason.CANCELLED
    assert runs[:4] == [1, 2, 3, 4]


def test_every_interval_survives_a_wall_clock_jump_back(workers: WorkerTracker) -> None:
    """``@every`` counts real (elapsed) time: stepping the wall clock back must not stall it."""
    clock = FakeClock(FAKE_START)
    starts: list[float] = []

    class Jumper(Handler):
        def do(self, ctx: Context) -> None:
            starts.append(clock.monotonic())
            if len(starts) == 2:
                clock.jump(-3600)
            if len(starts) >= 4:
                worker.cancel()
                ctx.event.wait(5)

    worker = workers.make(Jumper, cron="@every 10s", clock=clock)
    worker.run()
    assert worker.wait(timeout=20) is ExitReason.CANCELLED
    gaps = [b - a for a, b in itertools.pairwise(starts[:4])]
    assert gaps == [pytest.approx(10)] * 3, f"elapsed time between runs: {gaps}"


def test_fake_clock_scheduled_times_follow_the_cron(workers: WorkerTracker) -> None:
    clock = FakeClock(FAKE_START)
    runs: list[datetime] = []

    class Quarter(Handler):
        def do(self, ctx: Context) -> None:
            runs.append(ctx.scheduled_time)
            if len(runs) >= 4:
                worker.cancel()
                ctx.event.wait(5)

    worker = workers.make(Quarter, cron="*/15 * * * *", config=UTC, clock=clock)
    worker.run()
    assert worker.wait(timeout=20) is ExitReason.CANCELLED
    start = datetime.fromtimestamp(FAKE_START, timezone.utc)
    assert runs[0] > start
    assert all(r.minute % 15 == 0 and r.second == 0 for r in runs[:4])
    assert [b - a for a, b in itertools.pairwise(runs[:4])] == [timedelta(minutes=15)] * 3


def test_run_ids_are_unique_and_differ_in_a_forked_child(workers: WorkerTracker) -> None:
    import os

    from goworker_py.runner import _RUN_IDS

    ids: list[str] = []

    class Ids(Handler):
        def do(self, ctx: Context) -> None:
            ids.append(ctx.run_id)

    worker = workers.make(Ids, UTC, "@every 1ms", sharding_total_count=4)
    worker.run()
    wait_until(lambda: len(ids) >= 400, 10)
    worker.cancel()
    worker.wait(5)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws its next id and reports it
        os.write(write, f"{_RUN_IDS.getrandbits(64):016x}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    assert child != f"{_RUN_IDS.getrandbits(64):016x}", "a forked child must not repeat our ids"


def test_an_instance_may_set_before_and_after_as_attributes(workers: WorkerTracker) -> None:
    calls: list[str] = []

    class Plain(Handler):
        def do(self, ctx: Context) -> None:
            calls.append("do")

    handler = Plain()
    handler.before = lambda ctx: calls.append("before")  # type: ignore[method-assign]
    handler.after = lambda ctx: calls.append("after")  # type: ignore[method-assign]
    worker = workers.make(handler, UTC)
    worker.run()
    worker.wait(5)
    assert calls == ["before", "do", "after"]
