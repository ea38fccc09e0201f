"""Hand-overs never abandon a fire (SPEC 4.3), on a real ZooKeeper.

A shard that must move lets its in-flight run finish (up to ``handover_timeout``) before its
claim is released; a run cut short by a hand-over or a graceful stop is re-run once, at once,
by the shard's next owner with its original fire time; a shard never run before, and fire
times that passed while paused, are recorded so that a new owner neither skips nor makes up a
fire. User callbacks never hold up the supervisor.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import ManualClock, wait_until

from goworker_py import Context, Handler, WorkerConfig
from goworker_py.cluster.sharding import ShardingStrategy, StickyStrategy

from .conftest import Cluster, Ledger, Observer

pytestmark = pytest.mark.timeout(60)


def config_with(cluster: Cluster, **settings: Any) -> WorkerConfig:
    config = cluster.config()
    for name, value in settings.items():
        setattr(config, name, value)
    return config


def test_a_moving_shard_lets_its_run_finish_before_the_new_owner_starts(
    cluster: Cluster, observer: Observer
) -> None:
    """The join moves shards; their runs (1.5 s, in flight) complete on the old owner, the new
    owner starts each only once its run is done, and no fire is re-run."""
    ledger = Ledger()
    handler = ledger.handler(duration=1.5)
    first = cluster.make(handler, total=4, cron="@every 2s")
    observer.wait_settled(4, 1, workers=[first])
    wait_until(lambda: len(ledger.in_flight()) == 4, 5.0, what="four runs in flight")
    joined = time.monotonic()
    second = cluster.make(handler, total=4, cron="@every 2s")
    owners = observer.wait_settled(4, 2, workers=[first, second])
    moved = {s for s, o in owners.items() if o == second.host.instance.id}
    assert len(moved) == 2
    wait_until(
        lambda: (
            {r.shard for r in ledger.snapshot() if r.instance == second.host.instance.id} >= moved
        ),
        10.0,
        what="runs of the moved shards on their new owner",
    )
    cluster.stop(second)
    cluster.stop(first)
    records = ledger.snapshot()
    drained = [r for r in records if r.shard in moved and r.start < joined]
    assert len(drained) == 2 and not any(r.cancelled for r in drained), drained
    assert all(r.end - r.start >= 1.4 for r in drained), "the runs were cut short"
    later = [r for r in records if r.instance == second.host.instance.id]
    assert not any(r.failover for r in later), "a completed fire was re-run"
    for shard in moved:
        old_end = max(r.end for r in drained if r.shard == shard)
        new_start = min(r.start for r in later if r.shard == shard)
        assert new_start >= old_end, f"shard {shard} ran on two instances at once"


def test_a_run_longer_than_the_handover_timeout_is_cancelled_and_re_run_once_elsewhere(
    cluster: Cluster, observer: Observer
) -> None:
    ledger = Ledger()
    handler = ledger.handler(duration=30.0)
    config = config_with(cluster, handover_timeout=0.3)
    first = cluster.make(handler, total=2, cron="0 0 1 1 *", config=config)
    observer.wait_settled(2, 1, workers=[first])
    first.trigger()
    wait_until(lambda: len(ledger.in_flight()) == 2, 5.0, what="two runs in flight")
    second = cluster.make(handler, total=2, cron="0 0 1 1 *", config=config)
    owners = observer.wait_settled(2, 2, workers=[first, second])
    (moved,) = [s for s, o in owners.items() if o == second.host.instance.id]
    wait_until(
        lambda: (moved, second.host.instance.id) in ledger.in_flight(), 5.0, what="the re-run"
    )
    cut = [r for r in ledger.snapshot() if r.shard == moved]
    assert len(cut) == 1 and cut[0].cancelled and cut[0].instance == first.host.instance.id
    assert cut[0].end - cut[0].start < 2.0
    cluster.stop(first)  # (second last: nobody is left to re-run what stopping it cuts short)
    cluster.stop(second)
    runs = [r for r in ledger.snapshot() if r.shard == moved]
    assert len(runs) == 2
    rerun = runs[1]
    assert rerun.failover and rerun.instance == second.host.instance.id
    assert rerun.scheduled == cut[0].scheduled, "the re-run serves the cut run's fire time"
    assert rerun.start >= cut[0].end


def test_a_consumer_loop_without_a_schedule_moves_at_once(
    cluster: Cluster, observer: Observer
) -> None:
    """A run with no schedule never finishes on its own: it is cancelled at once, not after
    the hand-over timeout."""
    ledger = Ledger()
    handler = ledger.handler(duration=60.0)
    first = cluster.make(handler, total=2, cron=None)
    observer.wait_settled(2, 1, workers=[first])
    wait_until(lambda: len(ledger.in_flight()) == 2, 5.0, what="two consumer loops")
    began = time.monotonic()
    second = cluster.make(handler, total=2, cron=None)
    observer.wait_settled(2, 2, workers=[first, second])
    wait_until(lambda: len(ledger.in_flight()) == 2 and ledger.snapshot(), 5.0)
    assert time.monotonic() - began < 4.0  # shutdown_timeout (the default hand-over) is 5 s
    (cut,) = ledger.snapshot()
    assert cut.cancelled


class Blocking(StickyStrategy):
    """A sharding strategy (user code, on the supervisor) that can be made to block."""

    def __init__(self) -> None:
        self.block = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def assign(self, members: Any, total: int, claims: Any) -> Any:
        if self.block.is_set() and not self.release.is_set():
            self.entered.set()
            self.release.wait(30)
        return super().assign(members, total, claims)


def test_a_shard_that_moves_at_its_first_fire_time_keeps_that_fire(
    cluster: Cluster, observer: Observer
) -> None:
    """The first owner claims the shard and stops as its first fire time comes due, before
    running it; the next owner claims it just after that fire time: it runs it (it used to
    start from its own start and skip it, for no marker existed)."""
    clock = ManualClock(start=1_800_000_000.5)
    ledger = Ledger()
    handler = ledger.handler()
    first = cluster.make(handler, total=1, cron="* * * * * *", clock=clock)
    observer.wait_settled(1, 1, workers=[first])
    marker = observer.marker(0)
    assert marker is not None and marker["state"] == "claimed"
    assert marker["fire_time"] == pytest.approx(clock.time())
    cluster.stop(first)
    clock.advance(0.6)  # 1_800_000_001.1: the first fire time passed with nobody to run it
    second = cluster.make(handler, total=1, cron="* * * * * *", clock=clock)
    wait_until(lambda: ledger.snapshot(), 5.0, what="a run on the new owner")
    (run,) = ledger.snapshot()
    assert run.scheduled == 1_800_000_001.0
    assert run.instance == second.host.instance.id


def test_fire_times_passed_while_paused_are_not_made_up_by_the_next_owner(
    cluster: Cluster, observer: Observer
) -> None:
    clock = ManualClock(start=1_800_000_000.5)
    ledger = Ledger()
    handler = ledger.handler()
    config = config_with(cluster, misfire_policy="run_once")
    first = cluster.make(handler, total=1, cron="* * * * * *", clock=clock, config=config)
    observer.wait_settled(1, 1, workers=[first])
    first.pause()
    for second in range(1, 4):
        clock.advance(1.0)
        wait_until(
            lambda s=second: (observer.marker(0) or {}).get("fire_time") == 1_800_000_000 + s,
            5.0,
            what=f"the paused fire time {second} recorded",
        )
    assert observer.marker(0)["state"] == "paused"  # type: ignore[index]
    cluster.stop(first)
    # Now 1_800_000_003.5: the paused fire time 3 is within the misfire grace, but was no
    # miss: the next owner must not run it.
    second = cluster.make(handler, total=1, cron="* * * * * *", clock=clock, config=config)
    observer.wait_settled(1, 1, workers=[second])
    clock.advance(0.5)  # 1_800_000_004.0 is due
    wait_until(lambda: ledger.snapshot(), 5.0, what="a run on the new owner")
    time.sleep(0.3)  # a made-up run would follow at once
    assert [r.scheduled for r in ledger.snapshot()] == [1_800_000_004.0]


def test_a_slow_watch_does_not_hold_up_re_balancing(cluster: Cluster, observer: Observer) -> None:
    """watch() on membership changes is user code: it runs on a callback thread, so the
    supervisor keeps following the cluster while it blocks."""
    release = threading.Event()
    watching = threading.Event()

    class SlowWatch(Handler):
        def do(self, ctx: Context) -> None:
            pass

        def watch(self, info: Any) -> None:
            watching.set()
            release.wait(15)

    try:
        first = cluster.make(SlowWatch, total=4, cron="0 0 1 1 *")
        watching.wait(10)
        assert watching.is_set(), "watch() was not called on a membership change"
        second = cluster.make(SlowWatch, total=4, cron="0 0 1 1 *")
        observer.wait_settled(4, 2, workers=[first, second], timeout=10)
        assert not release.is_set()
    finally:
        release.set()


def test_the_watchdog_stops_pinging_while_the_supervisor_is_stuck(
    cluster: Cluster, observer: Observer, tmp_path: Any
) -> None:
    from helpers import NotifySocket

    from goworker_py.systemd import SystemdNotifier

    strategy: ShardingStrategy = Blocking()
    assert isinstance(strategy, Blocking)
    path = str(tmp_path / "notify.sock")
    sock = NotifySocket(path, path)
    worker = cluster.make(total=2, cron="0 0 1 1 *", sharding_strategy=strategy)
    notifier = SystemdNotifier(
        worker, environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    ).start()
    try:
        wait_until(lambda: len(sock.times_of("WATCHDOG=1")) >= 2, 5, what="pings")
        strategy.block.set()
        cluster.make(total=2, cron="0 0 1 1 *")  # a join: the supervisor's next pass blocks
        assert strategy.entered.wait(5), "the supervisor's pass did not start"
        # Pings may go on for one watchdog interval (0.4 s) into the stuck pass, then stop.
        stuck_at = time.monotonic() + 0.45
        time.sleep(1.45)  # two and a half watchdog periods after that
        assert worker.health.name == "GREEN"
        assert not [t for t in sock.times_of("WATCHDOG=1") if t > stuck_at]
        strategy.release.set()
        resumed = time.monotonic()
        wait_until(lambda: [t for t in sock.times_of("WATCHDOG=1") if t > resumed], 5)
    finally:
        strategy.release.set()
        notifier.stop()
        sock.close()
