"""WorkerGroup: many workers in one process, added and removed while running, with depends_on."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from helpers import wait_until

from goworker_py import (
    ConfigError,
    Context,
    DefaultRetryPolicy,
    DiscoveryConfig,
    ExitReason,
    GoWorkerError,
    Handler,
    Model,
    RunFailed,
    Worker,
    WorkerConfig,
    WorkerGroup,
    WorkerState,
)

pytestmark = pytest.mark.timeout(30)

UTC = WorkerConfig(timezone="UTC")


class Journal:
    """Thread-safe record of runs: (worker, shard, fire time, start, end)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, int, datetime, float, float]] = []

    def handler(self, duration: float = 0.0, fail_on: set[int] | None = None) -> type[Handler]:
        journal = self

        class Recorded(Handler):
            def do(self, ctx: Context) -> None:
                start = time.monotonic()
                if duration:
                    ctx.wait(duration)
                if fail_on and ctx.shard.index in fail_on:
                    raise RuntimeError(f"shard {ctx.shard.index} fails")
                with journal.lock:
                    journal.runs.append(
                        (
                            ctx.worker_name,
                            ctx.shard.index,
                            ctx.scheduled_time,
                            start,
                            time.monotonic(),
                        )
                    )

        return Recorded

    def of(self, name: str) -> list[tuple[str, int, datetime, float, float]]:
        with self.lock:
            return [r for r in self.runs if r[0] == name]


@pytest.fixture
def group() -> Iterator[WorkerGroup]:
    g = WorkerGroup(handle_signals=False)
    yield g
    g.cancel()
    with contextlib.suppress(RunFailed, GoWorkerError):
        g.wait(15)


NO_RETRY = DefaultRetryPolicy(initial_interval=0.01, non_retryable_error_types=(Exception,))


def make(handler: type[Handler], name: str, cron: str | None = None, **kwargs: object) -> Worker:
    return Worker(handler, UTC, cron, name=name, handle_signals=False, **kwargs)  # type: ignore[arg-type]


# -- many workers, added and removed while running -----------------------------------------------


def test_workers_run_side_by_side_and_can_be_added_and_removed(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "a", "@every 50ms"))
    group.add(make(journal.handler(), "b", "@every 50ms"))
    group.run()
    wait_until(lambda: journal.of("a") and journal.of("b"), 5)
    late = group.add(make(journal.handler(), "c", "@every 50ms"))
    assert late.state is WorkerState.RUNNING, "added to a running group: started at once"
    wait_until(lambda: journal.of("c"), 5)
    assert group.remove("a", timeout=5) is ExitReason.CANCELLED
    assert "a" not in group and set(group.workers) == {"b", "c"}
    count = len(journal.of("a"))
    time.sleep(0.2)
    assert len(journal.of("a")) == count, "a removed worker runs no more"
    group.cancel()
    assert group.wait(10) == {"b": ExitReason.CANCELLED, "c": ExitReason.CANCELLED}


def test_a_group_of_run_once_workers_completes(group: WorkerGroup) -> None:
    journal = Journal()
    for name in ("x", "y", "z"):
        group.add(make(journal.handler(), name))
    group.run()
    assert group.wait(10) == dict.fromkeys("xyz", ExitReason.COMPLETED)
    assert sorted(r[0] for r in journal.runs) == ["x", "y", "z"]


def test_a_failed_run_once_worker_raises_run_failed_after_the_others_end(
    group: WorkerGroup,
) -> None:
    journal = Journal()
    group.add(make(journal.handler(fail_on={0}), "bad", retry_policy=NO_RETRY))
    group.add(make(journal.handler(duration=0.2), "good"))
    group.run()
    with pytest.raises(RunFailed, match="shard 0 fails"):
        group.wait(10)
    assert journal.of("good"), "the other worker ran to its end"


def test_bad_additions_are_clear_errors(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "a", "@every 1h"))
    with pytest.raises(ConfigError, match="already has a worker named 'a'"):
        group.add(make(journal.handler(), "a", "@every 1h"))
    with pytest.raises(ConfigError, match="takes a Worker"):
        group.add("a")  # type: ignore[arg-type]
    started = make(journal.handler(), "started", "@every 1h")
    started.run()
    try:
        with pytest.raises(ConfigError, match="already started"):
            group.add(started)
    finally:
        started.cancel()
        started.wait(5)
    with pytest.raises(KeyError, match="no worker named 'nope'"):
        group.remove("nope")
    group.run()
    with pytest.raises(GoWorkerError, match="already started"):
        group.run()


def test_signals_stop_the_whole_group() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    journal = Journal()
    group = WorkerGroup()
    group.add(make(journal.handler(), "a", "@every 50ms"))
    group.add(make(journal.handler(), "b", "@every 50ms"))
    previous = signal.getsignal(signal.SIGTERM)
    group.run()
    try:
        wait_until(lambda: journal.of("a") and journal.of("b"), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        assert group.wait(10) == {"a": ExitReason.SIGNALLED, "b": ExitReason.SIGNALLED}
    finally:
        group.cancel()
    assert signal.getsignal(signal.SIGTERM) == previous, "the previous handler is back"


# -- dependencies -------------------------------------------------------------------------------


def test_a_downstream_runs_after_its_upstream_for_the_same_fire(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(duration=0.05), "extract", "@every 200ms"))
    group.add(make(journal.handler(), "load"), depends_on=["extract"])
    group.run()
    wait_until(lambda: len(journal.of("load")) >= 3, 10, what="three load runs")
    extracts = {r[2]: r for r in journal.of("extract")}
    for _, _, fire, start, _ in journal.of("load"):
        upstream = extracts[fire]  # the same fire time
        assert start >= upstream[4], "load starts only after extract's run for that fire ended"


def test_shard_by_shard_when_shard_counts_match(group: WorkerGroup) -> None:
    journal = Journal()
    # Shard 1 of the upstream always fails: only shard 0 of the downstream ever runs.
    group.add(
        make(
            journal.handler(fail_on={1}),
            "up",
            "@every 100ms",
            sharding_total_count=2,
            retry_policy=NO_RETRY,
        )
    )
    group.add(make(journal.handler(), "down", sharding_total_count=2), depends_on=["up"])
    group.run()
    wait_until(lambda: len(journal.of("down")) >= 3, 10)
    assert {r[1] for r in journal.of("down")} == {0}


def test_different_shard_counts_wait_for_every_upstream_shard(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "up", "@every 150ms", sharding_total_count=3))
    group.add(make(journal.handler(), "down"), depends_on=["up"])
    group.run()
    wait_until(lambda: len(journal.of("down")) >= 2, 10)
    ups = journal.of("up")
    for _, _, fire, start, _ in journal.of("down"):
        same = [r for r in ups if r[2] == fire]
        assert sorted(r[1] for r in same) == [0, 1, 2]
        assert start >= max(r[4] for r in same)


def test_several_upstreams_all_must_succeed(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "a", "@every 100ms"))
    group.add(make(journal.handler(fail_on={0}), "b", "@every 100ms", retry_policy=NO_RETRY))
    group.add(make(journal.handler(), "c", "@every 100ms"))
    group.add(make(journal.handler(), "after_a_b"), depends_on=["a", "b"])
    group.add(make(journal.handler(), "after_a_c"), depends_on=["a", "c"])
    group.run()
    wait_until(lambda: len(journal.of("after_a_c")) >= 3, 10)
    assert journal.of("after_a_b") == [], "b always fails: its downstream never runs"


def test_chains_and_run_once_upstreams_complete(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "third"), depends_on=["second"])  # upstream added later
    group.add(make(journal.handler(), "second"), depends_on=["first"])
    group.add(make(journal.handler(), "first"))
    group.run()
    assert group.wait(10) == dict.fromkeys(("first", "second", "third"), ExitReason.COMPLETED)
    order = [r[0] for r in sorted(journal.runs, key=lambda r: r[3])]
    assert order == ["first", "second", "third"]
    assert len({r[2] for r in journal.runs}) == 1, "every run serves the first one's fire time"


def test_cycles_and_bad_dependencies_are_rejected_at_add(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "a"), depends_on=["c"])
    group.add(make(journal.handler(), "b"), depends_on=["a"])
    with pytest.raises(ConfigError, match="cycle: c -> b -> a -> c"):
        group.add(make(journal.handler(), "c"), depends_on=["b"])
    assert "c" not in group
    with pytest.raises(ConfigError, match="cannot depend on itself"):
        group.add(make(journal.handler(), "d"), depends_on=["d"])
    with pytest.raises(ConfigError, match="give it no cron"):
        group.add(make(journal.handler(), "e", "@every 1s"), depends_on=["a"])
    cluster = Worker(
        journal.handler(),
        WorkerConfig(discovery=DiscoveryConfig(hosts="127.0.0.1:1")),
        name="f",
        model=Model.CLUSTER,
        service_name="f",
        handle_signals=False,
    )
    with pytest.raises(ConfigError, match="both must be local-mode workers or both cluster"):
        group.add(cluster, depends_on=["a"])
    with pytest.raises(ConfigError, match="names worker\\(s\\) not in the group: 'c'"):
        group.run()


def test_an_upstream_cannot_be_removed_before_its_downstream(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "up", "@every 1h"))
    group.add(make(journal.handler(), "down"), depends_on=["up"])
    group.run()
    with pytest.raises(ConfigError, match="'down' depend"):
        group.remove("up")
    group.remove("down", timeout=5)
    group.remove("up", timeout=5)
    assert group.workers == {}


def test_a_triggered_upstream_run_cascades_downstream(group: WorkerGroup) -> None:
    journal = Journal()
    up = group.add(make(journal.handler(), "up", "@every 1h"))
    group.add(make(journal.handler(), "down"), depends_on=["up"])
    group.run()
    up.trigger()
    wait_until(lambda: journal.of("down"), 5, what="the downstream of a triggered run")
    assert journal.of("down")[0][2] == journal.of("up")[0][2]


def test_a_paused_downstream_skips_what_its_upstreams_complete(group: WorkerGroup) -> None:
    journal = Journal()
    group.add(make(journal.handler(), "up", "@every 100ms"))
    down = group.add(make(journal.handler(), "down"), depends_on=["up"])
    down.pause()
    group.run()
    wait_until(lambda: len(journal.of("up")) >= 3, 5)
    assert journal.of("down") == []
    down.resume()
    wait_until(lambda: journal.of("down"), 5)


def unreachable_cluster_worker(name: str) -> Worker:
    return Worker(
        Journal().handler(),
        WorkerConfig(discovery=DiscoveryConfig(hosts="127.0.0.1:1", connect_timeout=0.5)),
        "@every 1h",
        name=name,
        model=Model.CLUSTER,
        service_name=name,
        handle_signals=False,
    )


def test_a_worker_that_cannot_start_leaves_nothing_running(group: WorkerGroup) -> None:
    from goworker_py import ZooKeeperUnavailable

    journal = Journal()
    local = group.add(make(journal.handler(), "local", "@every 50ms"))
    group.add(unreachable_cluster_worker("remote"))
    with pytest.raises(ZooKeeperUnavailable):
        group.run()
    assert local.state is WorkerState.SHUTDOWN, "the worker started first was stopped again"


def test_adding_a_worker_that_cannot_start_keeps_the_group_as_it_was(group: WorkerGroup) -> None:
    from goworker_py import ZooKeeperUnavailable

    journal = Journal()
    group.add(make(journal.handler(), "local"))
    group.run()
    with pytest.raises(ZooKeeperUnavailable):
        group.add(unreachable_cluster_worker("remote"))
    assert "remote" not in group
    assert group.wait(10) == {"local": ExitReason.COMPLETED}
