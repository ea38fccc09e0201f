"""Membership against a real ZooKeeper: standbys, watch before each run, what a leave counts,
ZooKeeper writes per run. (Joins and leaves, churn, watch on membership changes and the service
settings, on every backend: ``tests/backends/test_workers.py``.)"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from helpers import LogCapture

from goworker_py import Context, Handler, WatchInfo

from .conftest import Cluster, Ledger, Observer, poll, wait_until

pytestmark = pytest.mark.timeout(90)


def test_standby_takes_over_when_an_owner_leaves(cluster: Cluster, observer: Observer) -> None:
    workers = [cluster.make(total=2) for _ in range(3)]
    owners = observer.wait_settled(2, 3, workers=workers)
    standby = next(w for w in workers if not w.shards)
    leaver = next(w for w in workers if w.shards)
    stayer = next(w for w in workers if w.shards and w is not leaver)
    kept = stayer.shards
    moving = leaver.shards
    cluster.stop(leaver)
    took = poll(lambda: standby.shards == moving, 5.0, "the standby takes over")
    after = observer.wait_settled(2, 2, workers=[standby, stayer])
    assert stayer.shards == kept
    assert {s: o for s, o in after.items() if s in kept} == {
        s: o for s, o in owners.items() if s in kept
    }
    assert took < 2.0, f"clean handover to the standby took {took:.3f} s"


# -- watch ----------------------------------------------------------------------------------------


class WatchLog:
    """What a handler's ``watch`` and ``do`` saw, by thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, int, int, tuple[str, ...], str]] = []

    def handler(self) -> type[Handler]:
        log = self

        class Watching(Handler):
            def watch(self, info: WatchInfo) -> None:
                ids = tuple(i.id for i in info.cluster_instances)
                with log.lock:
                    log.events.append(
                        (
                            "watch",
                            threading.get_ident(),
                            info.current_instance.shard_index,
                            ids,
                            info.param,
                        )
                    )

            def do(self, ctx: Context) -> None:
                with log.lock:
                    log.events.append(
                        ("do", threading.get_ident(), ctx.shard.index, (), ctx.shard.param)
                    )

        return Watching

    def snapshot(self) -> list[tuple[str, int, int, tuple[str, ...], str]]:
        with self.lock:
            return list(self.events)


def test_watch_is_called_before_each_run(cluster: Cluster, observer: Observer) -> None:
    log = WatchLog()
    worker = cluster.make(log.handler(), total=2, params="0=zero,1=one", cron="@every 100ms")
    observer.wait_settled(2, 1, workers=[worker])

    def runs() -> int:
        return sum(1 for e in log.snapshot() if e[0] == "do")

    wait_until(lambda: runs() >= 8, 10.0, what="8 runs")
    cluster.stop(worker)
    by_thread: dict[int, list[tuple[str, int, int, tuple[str, ...], str]]] = {}
    for event in log.snapshot():
        by_thread.setdefault(event[1], []).append(event)
    checked = 0
    for events in by_thread.values():
        for previous, event in itertools.pairwise(events):
            if event[0] == "do":
                assert previous[0] == "watch", f"run without a watch before it: {events}"
                assert previous[2] == event[2], "watch saw another shard than the run"
                assert previous[3] == (worker.host.instance.id,)
                checked += 1
        assert events[0][0] == "watch"
    assert checked >= 6
    params = {e[2]: e[4] for e in log.snapshot()}
    assert params == {0: "zero", 1: "one"}


# -- the service settings node --------------------------------------------------------------------


# -- ZooKeeper traffic per run --------------------------------------------------------------------


_WRITES = {"Create", "Create2", "Delete", "SetData", "Transaction", "SetACL", "CheckVersion"}


def test_at_most_two_zookeeper_writes_per_run(cluster: Cluster, observer: Observer) -> None:
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=2, cron="@every 50ms")
    observer.wait_settled(2, 1, workers=[worker])
    wait_until(lambda: len(ledger.snapshot()) >= 4, 5.0, what="first runs")
    client: Any = worker.host.backend.client
    requests: list[str] = []
    original = client._call

    def counting(request: Any, async_object: Any) -> Any:
        requests.append(type(request).__name__)
        return original(request, async_object)

    client._call = counting
    try:
        runs_before = len(ledger.snapshot())
        wait_until(lambda: len(ledger.snapshot()) >= runs_before + 40, 15.0, what="40 runs")
    finally:
        client._call = original
    runs = len(ledger.snapshot()) - runs_before
    writes = [r for r in requests if r in _WRITES]
    # One transaction (check claim + member, mark running) at the start, one (the same checks,
    # mark how it ended) at the end: a stale owner can overwrite neither. The runs in flight
    # when counting began and ended may add one of each per shard.
    assert len(writes) <= 2 * runs + 4, f"{len(writes)} writes for {runs} runs: {requests}"
    assert set(writes) <= {"Transaction"}, f"unexpected writes: {set(writes)}"
    assert len(requests) == len(writes), f"reads during steady runs: {requests}"


def test_a_leave_counts_the_shards_it_moves(cluster: Cluster, observer: Observer) -> None:
    """The shards of a member that left are no longer published by anyone: they move all the
    same, and the log line and ``shards_moved`` must say so (not "moves 0 shard(s)")."""
    stays = cluster.make(total=4, cron="@every 1h")
    leaves = cluster.make(total=4, cron="@every 1h")
    observer.wait_settled(4, 2, workers=[stays, leaves])
    moved_before = stays.host.shards_moved
    with LogCapture("INFO") as logs:
        cluster.stop(leaves)
        observer.wait_settled(4, 1, workers=[stays])
        wait_until(lambda: logs.contains("member(s); the new assignment moves"), 5)
    assert logs.contains("membership changed: 1 member(s); the new assignment moves 2 shard(s)")
    assert stays.host.shards_moved - moved_before == 2
