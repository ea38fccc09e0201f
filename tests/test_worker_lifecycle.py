"""Worker lifecycle on real threads: states, run/wait/cancel contracts, shards, bad input."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from helpers import WorkerTracker, new_threads

import goworker_py.worker as worker_module
from goworker_py import (
    ConfigError,
    Context,
    DiscoveryConfig,
    DiscoveryError,
    ExitReason,
    GoWorkerError,
    Handler,
    InvalidHandlerError,
    InvalidParamsError,
    InvalidScheduleError,
    Model,
    Worker,
    WorkerConfig,
    WorkerState,
)

pytestmark = pytest.mark.timeout(30)

NEVER_SOON = "0 0 1 1 *"  # once a year: a cron worker that stays idle for the whole test


class Noop(Handler):
    def do(self, ctx: Context) -> None:
        pass


class Recording(Handler):
    """Records what each run saw; shared across the fresh per-run instances."""

    calls: list[tuple[str, str, int, str, str]] = []
    lock = threading.Lock()

    def do(self, ctx: Context) -> None:
        with self.lock:
            self.calls.append(
                (
                    "do",
                    threading.current_thread().name,
                    ctx.shard.index,
                    ctx.shard.param,
                    ctx.params,
                )
            )


# -- states and contracts ------------------------------------------------------------------------


def test_states_in_order(workers: WorkerTracker, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[WorkerState] = []

    class SpyHost(worker_module.LocalHost):
        def prepare(self) -> None:
            seen.append(worker.state)  # shards are set up while the worker is PENDING
            super().prepare()

    monkeypatch.setattr(worker_module, "LocalHost", SpyHost)

    class Observe(Handler):
        def do(self, ctx: Context) -> None:
            seen.append(worker.state)

    worker = workers.make(Observe)
    seen.append(worker.state)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    seen.append(worker.state)
    assert seen == [
        WorkerState.INITIALIZED,
        WorkerState.PENDING,
        WorkerState.RUNNING,
        WorkerState.SHUTDOWN,
    ]


def test_run_twice_raises(workers: WorkerTracker) -> None:
    worker = workers.make(Noop, cron=NEVER_SOON)
    worker.run()
    with pytest.raises(GoWorkerError, match="already started"):
        worker.run()
    assert worker.state is WorkerState.RUNNING
    worker.cancel()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    with pytest.raises(GoWorkerError, match="already started"):
        worker.run()


def test_wait_before_run_raises(workers: WorkerTracker) -> None:
    worker = workers.make(Noop)
    with pytest.raises(GoWorkerError, match="run\\(\\) first"):
        worker.wait(timeout=0.1)


def test_cancel_before_run_ends_promptly_without_a_run(workers: WorkerTracker) -> None:
    runs: list[str] = []

    class Tracked(Handler):
        def before(self, ctx: Context) -> None:
            runs.append("before")

        def do(self, ctx: Context) -> None:
            runs.append("do")

    for _ in range(20):  # the race between the supervisor and the shard thread is short
        worker = workers.make(Tracked)
        worker.cancel()
        worker.cancel()  # idempotent
        worker.run()
        assert worker.wait(timeout=5) is ExitReason.CANCELLED
    assert runs == []


def test_cancel_is_idempotent_and_thread_safe(workers: WorkerTracker) -> None:
    worker = workers.make(Noop, cron=NEVER_SOON)
    worker.run()
    threads = [threading.Thread(target=worker.cancel) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    worker.cancel()
    assert worker.wait(timeout=1) is ExitReason.CANCELLED


def test_wait_timeout_raises_and_leaves_worker_running(workers: WorkerTracker) -> None:
    worker = workers.make(Noop, cron=NEVER_SOON)
    worker.run()
    with pytest.raises(TimeoutError):
        worker.wait(timeout=0.2)
    assert worker.state is WorkerState.RUNNING
    assert worker.shards == (0,)
    worker.cancel()
    assert worker.wait(timeout=10) is ExitReason.CANCELLED
    assert worker.state is WorkerState.SHUTDOWN


def test_worker_timeout_gives_timed_out_for_cron_worker(workers: WorkerTracker) -> None:
    worker = workers.make(Noop, cron=NEVER_SOON, timeout=0.5)
    started = time.monotonic()
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.TIMED_OUT
    assert time.monotonic() - started >= 0.45
    assert worker.state is WorkerState.SHUTDOWN


def test_worker_timeout_cancels_the_in_flight_run(workers: WorkerTracker) -> None:
    seen: list[bool] = []

    class Long(Handler):
        def do(self, ctx: Context) -> None:
            seen.append(ctx.wait(20))

    worker = workers.make(Long, timeout=0.5)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.TIMED_OUT
    assert seen == [True]


def test_run_once_success_completes(workers: WorkerTracker) -> None:
    order: list[str] = []

    class Steps(Handler):
        def before(self, ctx: Context) -> None:
            order.append("before")

        def do(self, ctx: Context) -> None:
            order.append("do")

        def after(self, ctx: Context) -> None:
            order.append("after")

    worker = workers.make(Steps)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert order == ["before", "do", "after"]
    # wait() can be called again and answers the same.
    assert worker.wait(timeout=0) is ExitReason.COMPLETED


def test_three_shards_run_on_three_threads_with_their_params(workers: WorkerTracker) -> None:
    Recording.calls = []
    worker = workers.make(Recording, sharding_total_count=3, params="0=a,1=b,2=c", name="sharded")
    worker.run()
    assert worker.shards == (0, 1, 2)
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    calls = sorted(Recording.calls, key=lambda call: call[2])
    assert [(c[2], c[3]) for c in calls] == [(0, "a"), (1, "b"), (2, "c")]
    assert [c[1] for c in calls] == [f"goworker:sharded:shard-{i}" for i in range(3)]
    assert {c[4] for c in calls} == {"0=a,1=b,2=c"}


def test_shard_without_param_gets_empty_string(workers: WorkerTracker) -> None:
    Recording.calls = []
    worker = workers.make(Recording, sharding_total_count=2, params="1=only")
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert sorted((c[2], c[3]) for c in Recording.calls) == [(0, ""), (1, "only")]


def test_context_fields_in_local_mode(workers: WorkerTracker) -> None:
    contexts: list[Context] = []

    class Look(Handler):
        def do(self, ctx: Context) -> None:
            contexts.append(ctx)

    worker = workers.make(Look, service_name="svc", sharding_total_count=2)
    before = time.time()
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
    assert len(contexts) == 2
    first, second = sorted(contexts, key=lambda c: c.shard.index)
    assert first.run_id != second.run_id
    for ctx in contexts:
        assert ctx.fencing_token is None
        assert ctx.is_failover is False
        assert ctx.attempt == 1
        assert ctx.cancelled is False
        assert ctx.shard.total == 2
        assert ctx.instance.service == "svc"
        assert ctx.instance.shard_index == ctx.shard.index
        assert ctx.instance.shards == (0, 1)
        assert ctx.scheduled_time.timestamp() >= before - 1
        assert isinstance(ctx.event, threading.Event)
    assert worker.instance is not None and worker.instance.shards == (0, 1)


# -- bad input: a specific error before any thread starts -------------------------------------


def _with_discovery(protocol: str) -> WorkerConfig:
    return WorkerConfig(discovery=DiscoveryConfig(protocol=protocol, hosts="127.0.0.1:1"))


def _bad_worker_cases() -> list[tuple[str, dict[str, Any], type[Exception], str]]:
    class Missing:
        pass

    bad_config = WorkerConfig()
    bad_config.shutdown_timeout = -1
    return [
        ("bad cron", {"cron": "******"}, InvalidScheduleError, "expected 5 fields"),
        ("bad cron field", {"cron": "61 * * * *"}, InvalidScheduleError, "61"),
        ("never fires", {"cron": "0 0 30 2 *"}, InvalidScheduleError, "never fires"),
        ("bad descriptor", {"cron": "@fortnightly"}, InvalidScheduleError, "@every"),
        ("bad duration", {"cron": "@every 5 parsecs"}, InvalidScheduleError, "duration"),
        ("malformed params", {"params": "0=a,b"}, InvalidParamsError, "'b'"),
        ("params bad index", {"params": "x=a"}, InvalidParamsError, "integer"),
        (
            "params key >= shards",
            {"params": "0=a,3=d", "sharding_total_count": 3},
            InvalidParamsError,
            "shard(s) 3",
        ),
        ("shards 0", {"sharding_total_count": 0}, ConfigError, "sharding_total_count"),
        ("shards '2'", {"sharding_total_count": "2"}, ConfigError, "sharding_total_count"),
        ("shards True", {"sharding_total_count": True}, ConfigError, "sharding_total_count"),
        ("retry policy", {"retry_policy": Missing()}, ConfigError, "compute_next_delay"),
        ("model", {"model": 7}, ConfigError, "Model.LOCAL"),
        ("model str", {"model": "local"}, ConfigError, "Model.LOCAL"),
        ("misfire", {"misfire_policy": "sometimes"}, ConfigError, "misfire_policy"),
        ("config dict", {"config": {"shutdown_timeout": 1}}, ConfigError, "WorkerConfig"),
        ("config value", {"config": bad_config}, ConfigError, "shutdown_timeout"),
        ("timezone", {"config": WorkerConfig(timezone="Mars/Olympus")}, ConfigError, "zone"),
        (
            "cluster without discovery",
            {"model": Model.CLUSTER, "service_name": "svc"},
            DiscoveryError,
            "discovery",
        ),
        (
            "cluster without service",
            {"model": Model.CLUSTER, "config": _with_discovery("zookeeper")},
            ConfigError,
            "service_name",
        ),
        (
            "unknown discovery protocol",
            {"model": Model.CLUSTER, "service_name": "svc", "config": _with_discovery("consul")},
            DiscoveryError,
            "consul",
        ),
        ("negative timeout", {"timeout": -1}, ConfigError, "timeout"),
        ("zero timeout", {"timeout": 0}, ConfigError, "timeout"),
        ("bool timeout", {"timeout": True}, ConfigError, "timeout"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in _bad_worker_cases()],
)
def test_bad_input_fails_at_run_before_any_thread(
    workers: WorkerTracker, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    threads_before = set(threading.enumerate())
    worker = workers.make(Noop, **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        worker.run()
    assert new_threads(threads_before) == []
    assert worker.state is WorkerState.INITIALIZED


@pytest.mark.parametrize(
    "handler",
    [None, "module:Handler", 42, object(), Handler, Handler()],
    ids=["none", "str", "int", "object", "base-class", "base-instance"],
)
def test_non_handler_rejected_at_construction(handler: Any) -> None:
    threads_before = set(threading.enumerate())
    with pytest.raises(InvalidHandlerError, match="do"):
        Worker(handler, handle_signals=False)
    assert new_threads(threads_before) == []


def test_handler_class_needing_arguments_rejected() -> None:
    class NeedsArgs(Handler):
        def __init__(self, url: str) -> None:
            self.url = url

        def do(self, ctx: Context) -> None:
            pass

    with pytest.raises(InvalidHandlerError, match="pass an instance"):
        Worker(NeedsArgs, handle_signals=False)


def test_failed_validation_leaves_no_thread_and_cancel_still_works(
    workers: WorkerTracker,
) -> None:
    threads_before = set(threading.enumerate())
    worker = workers.make(Noop, cron="not a cron")
    with pytest.raises(InvalidScheduleError):
        worker.run()
    worker.cancel()
    assert new_threads(threads_before) == []
    with pytest.raises(GoWorkerError, match="run\\(\\) first"):
        worker.wait(timeout=0.1)
