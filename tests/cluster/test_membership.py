"""Membership against a real ZooKeeper: joins, leaves, standbys, watch, service settings."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from helpers import LogCapture

from goworker_py import Context, Handler, ServiceConfigConflict, WatchInfo, Worker

from .conftest import Cluster, Ledger, Observer, check_ledger, owners_by, poll, wait_until

pytestmark = pytest.mark.timeout(90)


def loads_of(owners: Mapping[int, str], members: list[str]) -> dict[str, int]:
    held = owners_by(owners)
    return {m: len(held.get(m, [])) for m in members}


def test_join_and_leave_one_to_five_and_back(cluster: Cluster, observer: Observer) -> None:
    total = 7
    workers: list[Worker] = []
    before: dict[int, str] = {}
    tokens_before: dict[int, int] = {}
    for count in range(1, 6):
        joiner = cluster.make(total=total)
        workers.append(joiner)
        after = observer.wait_settled(total, count, workers=workers)
        tokens_after = {s: c.token for s, c in observer.claims().items()}
        new = joiner.host.instance.id
        if before:
            old_members = [w.host.instance.id for w in workers[:-1]]
            moved = {s for s in range(total) if after[s] != before[s]}
            assert {after[s] for s in moved} == {new}, "a join moved shards between old members"
            assert moved == set(owners_by(after)[new])
            load = loads_of(before, old_members)
            donors = {before[s] for s in moved}
            keepers = set(old_members) - donors
            if keepers:
                assert min(load[d] for d in donors) >= max(load[k] for k in keepers), (
                    f"join took from a less loaded member: {load}, donors {donors}"
                )
            for shard in set(range(total)) - moved:
                assert tokens_after[shard] == tokens_before[shard], "an unmoved claim changed"
            assert len(moved) == total // count  # 7 shards: 3, 2, 1, 1 move to the joiner
        before, tokens_before = after, tokens_after

    # Leave in a mixed order: the oldest, the newest, a middle one, and so on.
    for leaver in [workers[0], workers[4], workers[2], workers[3]]:
        gone = leaver.host.instance.id
        workers.remove(leaver)
        cluster.stop(leaver)
        after = observer.wait_settled(total, len(workers), workers=workers)
        tokens_after = {s: c.token for s, c in observer.claims().items()}
        remaining = [w.host.instance.id for w in workers]
        moved = {s for s in range(total) if after[s] != before[s]}
        assert moved == {s for s, o in before.items() if o == gone}, "a leave moved other shards"
        load = loads_of(before, remaining)
        receivers = {after[s] for s in moved}
        others = set(remaining) - receivers
        if others:
            assert max(load[r] for r in receivers) <= min(load[o] for o in others), (
                f"a leave gave shards to a more loaded member: {load}, receivers {receivers}"
            )
        for shard in set(range(total)) - moved:
            assert tokens_after[shard] == tokens_before[shard], "an unmoved claim changed"
        before, tokens_before = after, tokens_after
    assert workers[0].shards == tuple(range(total))
    assert workers[0].host.shards_moved > 0 and workers[0].host.rebalances > 0


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


def test_runs_never_overlap_across_joins_and_leaves(cluster: Cluster, observer: Observer) -> None:
    """Churn for ~10 s with 80 ms runs every 100 ms (a cancelled run takes 100 ms more to
    return): never two owners inside one shard's run, fencing tokens never go back."""
    total = 6
    ledger = Ledger()
    handler = ledger.handler(duration=0.08, linger=0.1)
    rng = random.Random(3)
    live = [cluster.make(handler, total=total, cron="@every 100ms") for _ in range(2)]
    observer.wait_settled(total, 2, workers=live)
    events = 0
    ends = time.monotonic() + 10.0
    while time.monotonic() < ends:
        if len(live) < 2 or (len(live) < 5 and rng.random() < 0.5):
            live.append(cluster.make(handler, total=total, cron="@every 100ms"))
        else:
            leaver = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.5:
                cluster.stop(leaver)
            else:
                leaver.cancel()  # do not wait: the next event overlaps this leave
        events += 1
        time.sleep(rng.uniform(0.0, 0.6))  # pacing of the churn, not a condition
    observer.wait_settled(total, len(live), workers=live)
    for worker in live:
        cluster.stop(worker)
    records = ledger.snapshot()
    check_ledger(records)
    assert events >= 15
    assert {r.shard for r in records} == set(range(total))
    assert len({r.instance for r in records}) >= 5, "runs happened on few instances"


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


def test_watch_is_called_on_membership_changes(cluster: Cluster, observer: Observer) -> None:
    """With no run due (hourly schedule), joins and leaves still reach ``watch``."""
    log = WatchLog()
    first = cluster.make(log.handler(), total=3, cron="@every 1h")
    observer.wait_settled(3, 1, workers=[first])
    a = first.host.instance.id

    def seen(members: tuple[str, ...], shards: set[int]) -> bool:
        got = {e[2] for e in log.snapshot() if e[0] == "watch" and e[3] == members}
        return shards <= got

    wait_until(lambda: seen((a,), {0, 1, 2}), 5.0, what="watch with the first member alone")
    second = cluster.make(log.handler(), total=3, cron="@every 1h")
    owners = observer.wait_settled(3, 2, workers=[first, second])
    b = second.host.instance.id
    assert tuple(observer.instances()) == (a, b)
    wait_until(
        lambda: seen((a, b), set(range(3))), 5.0, what="watch on every shard with both members"
    )
    assert not any(e[0] == "do" for e in log.snapshot()), "no run was due"
    kept = {s for s, o in owners.items() if o == a}
    cluster.stop(second)
    observer.wait_settled(3, 1, workers=[first])
    wait_until(lambda: seen((a,), kept | set(range(3))), 5.0, what="watch after the leave")


# -- the service settings node --------------------------------------------------------------------


def test_different_settings_fail_at_run_naming_the_setting(
    cluster: Cluster, observer: Observer
) -> None:
    first = cluster.make(total=4, params="0=a", cron="@every 200ms")
    observer.wait_settled(4, 1, workers=[first])
    for kwargs, name in [
        ({"total": 5, "params": "0=a"}, "sharding_total_count"),
        ({"total": 4, "params": "0=b"}, "params"),
        ({"total": 4, "params": "0=a", "cron": "@every 1s"}, "schedule"),
    ]:
        other = cluster.make(start=False, **kwargs)
        with pytest.raises(ServiceConfigConflict) as raised:
            other.run()
        message = str(raised.value)
        assert name in message and "overwrite=True" in message
        assert name == "sharding_total_count" or "sharding_total_count" not in message
    assert len(observer.instances()) == 1, "a refused instance registered anyway"
    assert observer.config() == {
        "sharding_total_count": 4,
        "params": "0=a",
        "schedule": "@every 200ms",
    }


def test_overwrite_rewrites_the_settings_and_the_cluster_follows(
    cluster: Cluster, observer: Observer
) -> None:
    seen: list[tuple[str, int, int, str]] = []

    class Recording(Handler):
        def do(self, ctx: Context) -> None:
            seen.append((ctx.instance.id, ctx.shard.index, ctx.shard.total, ctx.shard.param))

    first = cluster.make(Recording, total=4, cron="@every 100ms")
    observer.wait_settled(4, 1, workers=[first])
    second = cluster.make(Recording, total=6, params="5=x", cron="@every 100ms", overwrite=True)
    assert observer.config() == {
        "sharding_total_count": 6,
        "params": "5=x",
        "schedule": "@every 100ms",
    }
    # Every instance re-balances on the new settings: the old instance is not left running a
    # different shard count beside the new one (which would leave shards unowned).
    observer.wait_settled(6, 2, workers=[first, second])
    assert sorted(first.shards + second.shards) == list(range(6))
    adopted = len(seen)
    a = first.host.instance.id

    def first_ran_all() -> bool:
        return {(s, t) for i, s, t, _ in seen[adopted:] if i == a} >= {(s, 6) for s in first.shards}

    wait_until(first_ran_all, 5.0, what="the first instance runs with the new shard count")
    assert all(t == 6 for _, _, t, _ in seen[adopted:]), "a run with the old shard count"
    assert {(s, p) for _, s, _, p in seen[adopted:] if s == 5} <= {(5, "x")}


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
