"""Many workers in one process: each has its own threads, all start and stop cleanly."""

from __future__ import annotations

import gc
import re
import threading
import time
from collections import Counter
from datetime import datetime

import pytest
from helpers import WorkerTracker, shard_threads, wait_until

from goworker_py import Context, DefaultRetryPolicy, ExitReason, Handler, WorkerState
from goworker_py.chime import CHIME

pytestmark = pytest.mark.timeout(60)

COUNT = 200


@pytest.mark.parametrize("cron", ["@every 500ms", "*/1 * * * * *"])
def test_many_cron_workers_start_run_and_stop_cleanly(workers: WorkerTracker, cron: str) -> None:
    baseline = threading.active_count()
    stragglers = CHIME.stragglers
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            with lock:
                runs[ctx.worker_name] += 1

    fleet = [workers.make(Tick, cron=cron, name=f"w{i:03d}") for i in range(COUNT)]
    for worker in fleet:
        worker.run()
    assert all(worker.state is WorkerState.RUNNING for worker in fleet)
    # One shard thread each, and no other: a local worker has no supervisor thread.
    names = [t.name for t in shard_threads() if re.match(r"goworker:w\d{3}:", t.name)]
    assert len(names) == COUNT and all(name.endswith(":shard-0") for name in names)

    wait_until(lambda: len(runs) == COUNT, 20, what=f"every one of {COUNT} workers ran")
    # Shards firing at one instant are woken by its peal, one after the other: none had to
    # wake on its own timeout (see goworker_py.chime).
    assert CHIME.stragglers == stragglers

    stop_at = time.monotonic()
    for worker in fleet:
        worker.cancel()
    for worker in fleet:
        assert worker.wait(timeout=15) is ExitReason.CANCELLED
    assert time.monotonic() - stop_at < 15
    assert all(worker.state is WorkerState.SHUTDOWN for worker in fleet)

    wait_until(
        lambda: threading.active_count() <= baseline,
        10,
        what=f"thread count back to {baseline} (now {threading.active_count()})",
    )
    assert shard_threads() == []  # no shard thread left: nothing can run any more


def test_a_herd_whose_runs_fail_or_are_cancelled_rings_every_shard(workers: WorkerTracker) -> None:
    """Runs that fail, or are cancelled before do, keep their herd whole (goworker_py.runner:
    their wait at the peal's end comes from execute's finally): every worker fires instant
    after instant, no shard is left to wake on its own timeout, and no place stays behind in
    a peal once the workers stop."""
    stragglers = CHIME.stragglers
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    class Mixed(Handler):
        def before(self, ctx: Context) -> None:
            if ctx.worker_name.startswith("cancelled"):
                ctx.event.set()  # cancelled between before and do: after still runs

        def do(self, ctx: Context) -> None:
            with lock:
                runs[ctx.worker_name] += 1
            if ctx.worker_name.startswith("failing"):
                raise ValueError("boom")

        def after(self, ctx: Context) -> None:
            with lock:
                runs[ctx.worker_name] += 1

    once = DefaultRetryPolicy(non_retryable_error_types=(ValueError,))
    kinds = ("ok", "failing", "cancelled")
    fleet = [
        workers.make(Mixed, cron="*/1 * * * * *", name=f"{kinds[i % 3]}{i}", retry_policy=once)
        for i in range(60)
    ]
    for worker in fleet:
        worker.run()
    wait_until(
        lambda: len(runs) == 60 and min(runs.values()) >= 2,
        20,
        what="two instants' runs of every worker",
    )
    assert CHIME.stragglers == stragglers
    for worker in fleet:
        worker.cancel()
    for worker in fleet:
        worker.wait(timeout=15)
    wait_until(lambda: CHIME.pending == 0, 10, what="no place left in a peal")
    assert CHIME.stragglers == stragglers


def test_a_herd_leaves_the_garbage_collector_nothing_to_collect(workers: WorkerTracker) -> None:
    """From the first shard of a herd to reach ``do`` to the last, the runs allocate no more
    objects than they free (CPython's young-generation count does not rise): a garbage
    collection started by the herd would hold up every shard behind it, and the objects young
    at its start would age towards a full collection (tens of milliseconds with a thousand
    workers). Their allocations come after the herd, with the runs' bookkeeping."""
    stragglers = CHIME.stragglers
    # 300 entries hold two whole herds of 100, whatever part of a herd the first one caught.
    entries: list[tuple[datetime, int]] = []
    recording = False
    recorded = threading.Event()
    lock = threading.Lock()

    class Counting(Handler):
        def do(self, ctx: Context) -> None:
            with lock:
                if recording and len(entries) < 300:
                    entries.append((ctx.scheduled_time, gc.get_count()[0]))
                    if len(entries) == 300:
                        recorded.set()

    fleet = [workers.make(Counting, cron="*/1 * * * * *", name=f"g{i}") for i in range(100)]
    for worker in fleet:
        worker.run()
    gc.disable()  # the count is reset by a collection: none during the measurement
    try:
        recording = True
        assert recorded.wait(20), f"{len(entries)} runs recorded"
    finally:
        gc.enable()
    herds: dict[datetime, list[int]] = {}
    for instant, young in entries:
        herds.setdefault(instant, []).append(young)
    whole = {instant: counts for instant, counts in herds.items() if len(counts) == 100}
    assert len(whole) >= 2, {instant.isoformat(): len(counts) for instant, counts in herds.items()}
    growth = {instant.isoformat(): counts[-1] - counts[0] for instant, counts in whole.items()}
    assert all(grown <= 0 for grown in growth.values()), growth
    assert CHIME.stragglers == stragglers  # every shard was rung in its herd, none woke late


def test_many_run_once_workers_complete(workers: WorkerTracker) -> None:
    baseline = threading.active_count()
    done: Counter[int] = Counter()
    lock = threading.Lock()

    class Once(Handler):
        def do(self, ctx: Context) -> None:
            with lock:
                done[ctx.shard.index] += 1

    fleet = [workers.make(Once, sharding_total_count=2, name=f"o{i}") for i in range(100)]
    for worker in fleet:
        worker.run()
    for worker in fleet:
        assert worker.wait(timeout=15) is ExitReason.COMPLETED
    assert done == Counter({0: 100, 1: 100})
    wait_until(lambda: threading.active_count() <= baseline, 10)


def test_workers_are_independent(workers: WorkerTracker) -> None:
    """Cancelling one worker leaves the others running."""
    ticks: Counter[str] = Counter()
    lock = threading.Lock()

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            with lock:
                ticks[ctx.worker_name] += 1

    a = workers.make(Tick, cron="@every 20ms", name="a")
    b = workers.make(Tick, cron="@every 20ms", name="b")
    a.run()
    b.run()
    wait_until(lambda: ticks["a"] >= 2 and ticks["b"] >= 2, 10)
    a.cancel()
    assert a.wait(timeout=5) is ExitReason.CANCELLED
    seen = ticks["b"]
    wait_until(lambda: ticks["b"] >= seen + 3, 10, what="b keeps running after a stopped")
    assert b.state is WorkerState.RUNNING
    b.cancel()
    assert b.wait(timeout=5) is ExitReason.CANCELLED
