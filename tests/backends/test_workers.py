"""Cluster-mode workers in normal operation on every server backend (ZooKeeper, etcd, Redis).

The worker-level proofs of ``tests/cluster/`` (written against ZooKeeper) repeated on each
backend of ``SERVER_BACKENDS``, with real ``Worker``s and real servers, observed through
:class:`~goworker_py.cluster.admin.ClusterAdmin` only (``workers.AdminObserver``): joins and
leaves, instances as OS processes (SIGTERM hand-over, kill -9 fail-over), the service settings,
pause / resume / trigger / stop-run (through the admin and the command line), and a
``depends_on`` across instances. Server faults are another suite's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from cluster.conftest import (
    SERVICE,
    Book,
    Cluster,
    Ledger,
    RunRecord,
    check_ledger,
    owners_by,
    poll,
)
from helpers import Process, wait_until

from goworker_py import (
    Context,
    DefaultRetryPolicy,
    Handler,
    Model,
    ServiceConfigConflict,
    WatchInfo,
    Worker,
    WorkerGroup,
    WorkerInstance,
)
from goworker_py.cli import main
from goworker_py.cluster.backend import RunRecord as BackendRunRecord
from goworker_py.cluster.backend import RunState
from goworker_py.errors import GoWorkerError, ServicePaused

from .workers import WORKER, AdminObserver, BackendCluster, owners_of, ran, read_ledger, tokens_of

HOURLY = "@every 1h"
SESSION_TIMEOUT = 2.0


def loads_of(owners: Mapping[int, str], members: list[str]) -> dict[str, int]:
    """``{member: how many of the shards it owns}``, for each of ``members``."""
    held = owners_by(owners)
    return {m: len(held.get(m, [])) for m in members}


# -- joins and leaves ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_join_and_leave_one_to_five_and_back(worker_cluster: BackendCluster) -> None:
    """At each settled step every shard is owned once, by a member that runs it; a join moves
    shards only to the joiner, taken from the most loaded members, a leave only the leaver's,
    given to the least loaded; a moved claim's fencing token grows, an unmoved one stays; runs
    never overlap per shard."""
    cluster = worker_cluster
    total = 7
    ledger = Ledger()
    handler = ledger.handler(duration=0.03)
    observer = cluster.observer()
    workers: list[Worker] = []
    before: dict[int, str] = {}
    tokens_before: dict[int, int] = {}

    def step(moved_to: set[str], moving: set[int] | None) -> set[int]:
        """Wait until settled, check the step; the shards it moved."""
        nonlocal before, tokens_before
        status = observer.wait_settled(total, len(workers), workers=workers)
        settled = time.monotonic()
        after, tokens_after = owners_of(status), tokens_of(status)
        ranked = [m.instance.id for m in status.instances]
        assert ranked == [w.host.instance.id for w in workers], "members not in join order"
        assert all(m.instance.health.name == "GREEN" for m in status.instances)
        held = [s for w in workers for s in w.shards]
        assert sorted(held) == list(range(total)), f"shards run by the workers: {held}"
        moved = {s for s in range(total) if before and after[s] != before[s]}
        if before:
            assert {after[s] for s in moved} <= moved_to, "shards moved to a bystander"
            if moving is not None:
                assert moved == moving
            for shard in range(total):
                if shard in moved:
                    assert tokens_after[shard] > tokens_before[shard], f"shard {shard}'s token"
                else:
                    assert tokens_after[shard] == tokens_before[shard], "an unmoved claim changed"
            # A join takes shards from the most loaded members, a leave gives them to the
            # least loaded (loads as they were before the step).
            members = [w.host.instance.id for w in workers]
            if moving is None:  # a join (moved_to: the joiner)
                load = loads_of(before, [m for m in members if m not in moved_to])
                donors = {before[s] for s in moved}
                keepers = set(load) - donors
                if keepers:
                    assert min(load[d] for d in donors) >= max(load[k] for k in keepers), (
                        f"a join took from a less loaded member: {load}, donors {donors}"
                    )
            else:
                load = loads_of(before, members)
                receivers = {after[s] for s in moved}
                others = set(load) - receivers
                if others:
                    assert max(load[r] for r in receivers) <= min(load[o] for o in others), (
                        f"a leave gave shards to a more loaded member: {load}, "
                        f"receivers {receivers}"
                    )
        wait_until(lambda: ran(ledger.snapshot(), after, settled), 5.0, what="a run of every shard")
        before, tokens_before = after, tokens_after
        return moved

    for count in range(1, 6):
        joiner = cluster.make(handler, total=total, cron="@every 100ms")
        workers.append(joiner)
        moved = step({joiner.host.instance.id}, None)
        if count > 1:
            assert moved == set(joiner.shards), "a join moved shards between old members"
            assert len(joiner.shards) == total // count  # 7 shards: 3, 2, 1, 1 move to it
    for leaver in [workers[0], workers[4], workers[2], workers[3]]:
        leaving = set(leaver.shards)
        workers.remove(leaver)
        cluster.stop(leaver)
        step({w.host.instance.id for w in workers}, leaving)
    assert workers[0].shards == tuple(range(total))
    assert workers[0].host.shards_moved > 0 and workers[0].host.rebalances > 0
    cluster.stop(workers[0])
    records = ledger.snapshot()
    check_ledger(records)
    assert len({r.instance for r in records}) == 5


@pytest.mark.timeout(60)
def test_runs_never_overlap_across_churn(worker_cluster: BackendCluster) -> None:
    """Churn for ~10 s with 80 ms runs every 100 ms (a cancelled run takes 100 ms more to
    return), leaves overlapping the next join or leave: never two owners inside one shard's
    run, fencing tokens never go back."""
    cluster = worker_cluster
    observer = cluster.observer()
    total = 6
    ledger = Ledger()
    handler = ledger.handler(duration=0.08, linger=0.1)
    rng = random.Random(11)
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
        time.sleep(rng.uniform(0.0, 0.4))  # pacing of the churn, not a condition
    observer.wait_settled(total, len(live), workers=live)
    for worker in live:
        cluster.stop(worker)
    records = ledger.snapshot()
    check_ledger(records)
    assert events >= 15
    assert {r.shard for r in records} == set(range(total))
    assert len({r.instance for r in records}) >= 5, "runs happened on few instances"


class WatchLog(Handler):
    """Records the members each ``watch`` call saw, and the shard of each run (none is due).
    (Class attributes: a subclass per test.)"""

    seen: list[tuple[int, tuple[str, ...]]]
    ran: list[int]

    def watch(self, info: WatchInfo) -> None:
        ids = tuple(i.id for i in info.cluster_instances)
        self.seen.append((info.current_instance.shard_index, ids))

    def do(self, ctx: Context) -> None:
        self.ran.append(ctx.shard.index)


@pytest.mark.timeout(60)
def test_watch_is_called_on_membership_changes(worker_cluster: BackendCluster) -> None:
    """With no run due, joins and leaves still reach ``watch`` (the backend's member changes
    wake every instance)."""
    cluster = worker_cluster
    observer = cluster.observer()
    handler: type[WatchLog] = type("OwnWatchLog", (WatchLog,), {"seen": [], "ran": []})
    first = cluster.make(handler, total=3, cron=HOURLY)
    observer.wait_settled(3, 1, workers=[first])
    a = first.host.instance.id

    def seen(members: tuple[str, ...], shards: set[int]) -> bool:
        return shards <= {shard for shard, ids in list(handler.seen) if ids == members}

    wait_until(lambda: seen((a,), {0, 1, 2}), 5.0, what="watch with the first member alone")
    second = cluster.make(handler, total=3, cron=HOURLY)
    b = second.host.instance.id
    status = observer.wait_settled(3, 2, workers=[first, second])
    assert [m.instance.id for m in status.instances] == [a, b], "members not in join order"
    owners = owners_of(status)
    wait_until(lambda: seen((a, b), {0, 1, 2}), 5.0, what="watch on every shard, both members")
    kept = {s for s, o in owners.items() if o == a}
    mark = len(handler.seen)
    cluster.stop(second)
    observer.wait_settled(3, 1, workers=[first])
    wait_until(
        lambda: {s for s, ids in handler.seen[mark:] if ids == (a,)} >= kept | {0, 1, 2},
        5.0,
        what="watch after the leave",
    )
    assert handler.ran == [], "no run was due"


# -- instances as OS processes ---------------------------------------------------------------------


def start_process(cluster: BackendCluster, ledger: Path) -> Process:
    return Process(
        [
            WORKER,
            "--discovery",
            cluster.url,
            "--namespace",
            cluster.kit.namespace,
            "--ledger",
            str(ledger),
            "--shards",
            "6",
            "--session-timeout",
            str(SESSION_TIMEOUT),
            # Runs back to back (300 ms, an overrun runs again at once): a crash always
            # interrupts runs in flight.
            "--duration",
            "0.3",
            "--cron",
            "@every 100ms",
            "--misfire-policy",
            "run_once",
        ]
    )


@pytest.mark.timeout(90)
def test_processes_hand_over_on_sigterm_and_fail_over_after_kill(
    worker_cluster: BackendCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = worker_cluster
    path = tmp_path / "ledger.jsonl"
    procs = [start_process(cluster, path) for _ in range(3)]
    try:
        for proc in procs:
            proc.wait_for_stdout("ready", 30.0)
        observer = cluster.observer()
        status = observer.wait_settled(6, 3, timeout=30.0)
        before = owners_of(status)
        ids = {m.instance.pid: m.instance.id for m in status.instances}
        assert sorted(ids) == sorted(p.proc.pid for p in procs)
        assert sorted(len(s) for s in owners_by(before).values()) == [2, 2, 2]
        # `status --json` shows each instance's host and pid.
        assert main(["status", "--json", *cluster.cli_args()]) == 0
        shown = json.loads(capsys.readouterr().out)["instances"]
        assert {(i["id"], i["pid"], i["host"]) for i in shown} == {
            (iid, pid, socket.gethostname()) for pid, iid in ids.items()
        }
        poll(lambda: ran(read_ledger(path), before, 0.0), 5.0, "a run of every shard by its owner")

        # SIGTERM: exit code 0; only its shards move, through the clean path (not expiry).
        stopped, crashed, survivor = procs
        stopped_id = ids[stopped.proc.pid]
        stopped.proc.send_signal(signal.SIGTERM)

        def handed_over() -> bool:
            owners = observer.owners()
            return len(owners) == 6 and stopped_id not in owners.values()

        handover = poll(handed_over, 3 * SESSION_TIMEOUT + 2, "shards of the stopped process")
        assert stopped.finish(10.0) == 0, stopped.report()
        assert "exit signalled" in stopped.stdout
        after = owners_of(observer.wait_settled(6, 2))
        moved = {s for s in range(6) if after[s] != before[s]}
        assert moved == {s for s, o in before.items() if o == stopped_id}
        assert handover < SESSION_TIMEOUT / 2, f"clean hand-over took {handover:.3f} s"
        # (The fires SIGTERM cut short are re-run, to the end, before the new owners' runs.)
        settled = time.monotonic()
        poll(lambda: ran(read_ledger(path), after, settled), 5.0, "runs on the new owners")

        # kill -9 while each of its shards is in the middle of a run: each interrupted fire is
        # re-run once by the survivor, as a failover with the same fire time, once the lease
        # expired.
        crashed_id, survivor_id = ids[crashed.proc.pid], ids[survivor.proc.pid]
        crashed_lease = observer.leases()[crashed.proc.pid]
        crashed_shards = {s for s, o in after.items() if o == crashed_id}

        def interrupted() -> dict[int, float]:
            """``{shard: fire time}`` of the crashed process's runs in flight."""
            found: dict[int, float] = {}
            for shard in crashed_shards:
                record = observer.record(shard)
                if record and record.state is RunState.RUNNING and record.lease == crashed_lease:
                    found[shard] = record.fire_time
            return found

        def frozen_inside_runs() -> bool:
            """Stop the process (SIGSTOP); True if each of its shards is inside a run then,
            else let it go on (a shard was between two runs) and False."""
            crashed.proc.send_signal(signal.SIGSTOP)
            if len(interrupted()) == len(crashed_shards):
                return True
            crashed.proc.send_signal(signal.SIGCONT)
            return False

        poll(frozen_inside_runs, 5.0, "every shard of the process inside a run")
        crashed.proc.kill()
        killed = time.monotonic()
        # Read at once: nobody may take the shards over before the lease expires.
        cut = interrupted()
        assert set(cut) == crashed_shards, "the kill interrupted a run of each of its shards"

        def taken_over() -> bool:
            owners = observer.owners()
            return len(owners) == 6 and set(owners.values()) == {survivor_id}

        takeover = poll(taken_over, SESSION_TIMEOUT + 3, "shards of the killed process")
        assert crashed.finish(5.0) == -signal.SIGKILL
        observer.wait_settled(6, 1)
        # Not before the server could know: it last heard of the process at most T/3 ago.
        assert takeover > SESSION_TIMEOUT / 2, f"takeover after {takeover:.3f} s: too early"

        def reruns() -> list[RunRecord]:
            return [r for r in read_ledger(path) if r.failover and r.start > killed]

        poll(lambda: {r.shard for r in reruns()} >= crashed_shards, 5.0, "failover runs")
        survivor.proc.send_signal(signal.SIGTERM)
        assert survivor.finish(10.0) == 0, survivor.report()
    except BaseException:
        for proc in procs:
            print(f"==== process {proc.proc.pid}\n{proc.report()}")
        raise
    finally:
        for proc in procs:
            proc.kill()

    records = read_ledger(path)
    check_ledger(records)
    assert {r.pid for r in records} == {p.proc.pid for p in procs}
    # Fires SIGTERM cut short are re-run at once by the shards' next owners (SPEC 4.3), with
    # their fire times, before the kill; no other run is a failover, except the crash's.
    cut_short = {
        (r.shard, r.scheduled) for r in records if r.pid == stopped.proc.pid and r.cancelled
    }
    failovers = [r for r in records if r.failover]
    handed = [r for r in failovers if r.start < killed]
    assert cut_short <= {(r.shard, r.scheduled) for r in handed}, "fires cut short by SIGTERM"
    assert all(r.instance != stopped_id and before[r.shard] == stopped_id for r in handed)
    # Besides: a run SIGTERM cancelled between its beginning and do() left no ledger line, but
    # is owed all the same: a later fire of the stopped process's shard than it recorded.
    last_seen: dict[int, float] = {}
    for r in records:
        if r.pid == stopped.proc.pid:
            last_seen[r.shard] = max(last_seen.get(r.shard, 0.0), r.scheduled)
    for r in handed:
        if (r.shard, r.scheduled) not in cut_short:
            assert r.scheduled > last_seen[r.shard], f"a fire that had run, run again: {r}"
    # The fires the kill interrupted: each re-run once, on the survivor, as a failover.
    crash_reruns = [r for r in records if r.failover and r.start > killed]
    assert all(r.instance == survivor_id for r in crash_reruns)
    assert {r.shard for r in crash_reruns} == crashed_shards, "failovers of the crashed shards"
    for shard, fire in cut.items():
        again = [r for r in crash_reruns if r.shard == shard and abs(r.scheduled - fire) < 1e-3]
        assert len(again) == 1, f"shard {shard}'s interrupted fire re-run {len(again)} times"
    latencies = sorted(r.start - killed for r in crash_reruns if r.shard in cut)
    assert latencies[-1] < SESSION_TIMEOUT + 3.0
    print(
        f"{cluster.name}, T = {SESSION_TIMEOUT} s: SIGTERM hand-over {handover * 1000:.0f} ms; "
        f"kill -9 takeover seen {takeover:.3f} s; interrupted fires re-run "
        f"{latencies[0]:.3f}-{latencies[-1]:.3f} s after the kill "
        f"(lease + {latencies[-1] - SESSION_TIMEOUT:+.3f} s)"
    )


# -- the service settings --------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_different_settings_fail_at_run_naming_the_setting(
    worker_cluster: BackendCluster,
) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
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
    status = observer.status()
    assert [m.instance.id for m in status.instances] == [first.host.instance.id], (
        "a refused instance registered anyway"
    )
    assert status.settings == {
        "sharding_total_count": 4,
        "params": "0=a",
        "schedule": "@every 200ms",
    }


@pytest.mark.timeout(60)
def test_overwrite_rewrites_the_settings_and_the_cluster_follows(
    worker_cluster: BackendCluster,
) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
    seen: list[tuple[str, int, int, str]] = []

    class Recording(Handler):
        def do(self, ctx: Context) -> None:
            seen.append((ctx.instance.id, ctx.shard.index, ctx.shard.total, ctx.shard.param))

    first = cluster.make(Recording, total=4, cron="@every 100ms")
    observer.wait_settled(4, 1, workers=[first])
    second = cluster.make(Recording, total=6, params="5=x", cron="@every 100ms", overwrite=True)
    assert observer.status().settings == {
        "sharding_total_count": 6,
        "params": "5=x",
        "schedule": "@every 100ms",
    }
    # Every instance re-balances on the new settings (none is left on the old shard count).
    observer.wait_settled(6, 2, workers=[first, second])
    assert sorted(first.shards + second.shards) == list(range(6))
    adopted = len(seen)
    a = first.host.instance.id

    def first_ran_all() -> bool:
        return {(s, t) for i, s, t, _ in seen[adopted:] if i == a} >= {(s, 6) for s in first.shards}

    wait_until(first_ran_all, 5.0, what="the first instance runs with the new shard count")
    assert all(t == 6 for _, _, t, _ in seen[adopted:]), "a run with the old shard count"
    assert {(s, p) for _, s, _, p in seen[adopted:] if s == 5} <= {(5, "x")}


# -- pause, resume, trigger, stop-run --------------------------------------------------------------


class Gate(Handler):
    """Records each run in ``ledger``; a run started while ``hold`` is set waits (up to 30 s)
    until it is cancelled, and goes to ``held`` as (shard, seconds, cancelled) instead.
    (Class attributes: each test makes a subclass of its own with :func:`gate`.)"""

    ledger: Ledger
    hold: threading.Event
    held: list[tuple[int, float, bool]]

    def do(self, ctx: Context) -> None:
        start = time.monotonic()
        if self.hold.is_set():
            ctx.wait(30)
            self.held.append((ctx.shard.index, time.monotonic() - start, ctx.cancelled))
            ctx.raise_if_cancelled()
            return
        self.ledger.add(RunRecord.of(ctx, start))


def gate() -> type[Gate]:
    return type("OwnGate", (Gate,), {"ledger": Ledger(), "hold": threading.Event(), "held": []})


def states(observer: AdminObserver) -> dict[int, str | None]:
    return {s.shard: s.state for s in observer.status().shards}


@pytest.mark.timeout(60)
def test_admin_trigger_runs_every_shard_once_and_stop_run_cancels_runs_in_flight(
    worker_cluster: BackendCluster,
) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
    handler = gate()
    ledger = handler.ledger
    workers = [cluster.make(handler, total=6, cron=HOURLY) for _ in range(3)]
    status = observer.wait_settled(6, 3, workers=workers)
    owners, tokens = owners_of(status), tokens_of(status)
    admin = observer.admin
    assert admin.trigger()["trigger"] == 1
    wait_until(lambda: len(ledger.snapshot()) == 6, 5, what="six triggered runs")
    wait_until(lambda: set(states(observer).values()) == {"done"}, 5, what="the runs to end")
    time.sleep(0.3)  # time for a run too many to show
    records = ledger.snapshot()
    assert sorted(r.shard for r in records) == list(range(6)), "every shard once"
    for record in records:
        assert record.instance == owners[record.shard]
        assert record.token == tokens[record.shard]
    assert admin.trigger()["trigger"] == 2
    wait_until(lambda: len(ledger.snapshot()) == 12, 5, what="a second round")
    assert sorted(r.shard for r in ledger.snapshot()) == sorted(list(range(6)) * 2)
    check_ledger(ledger.snapshot())

    # stop-run: every run in flight is cancelled; the workers keep running, claims kept.
    handler.hold.set()
    wait_until(lambda: set(states(observer).values()) == {"done"}, 5, what="the runs to end")
    assert admin.trigger()["trigger"] == 3
    wait_until(lambda: set(states(observer).values()) == {"running"}, 5, what="runs in flight")
    assert not handler.held
    assert admin.stop_run()["stop_run"] == 1
    wait_until(lambda: len(handler.held) == 6, 5, what="six runs cancelled")
    assert sorted(shard for shard, _, _ in handler.held) == list(range(6))
    assert all(cancelled and took < 10 for _, took, cancelled in handler.held)
    wait_until(
        lambda: set(states(observer).values()) == {"cancelled"}, 5, what="records say cancelled"
    )
    assert all(w.state.name == "RUNNING" for w in workers)
    after = observer.wait_settled(6, 3, workers=workers)
    assert owners_of(after) == owners and tokens_of(after) == tokens


@pytest.mark.timeout(60)
def test_admin_pause_and_resume_hold_every_instance(worker_cluster: BackendCluster) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
    ledger = Ledger()
    workers = [cluster.make(ledger.handler(), total=4, cron="@every 100ms") for _ in range(2)]
    observer.wait_settled(4, 2, workers=workers)
    wait_until(lambda: len(ledger.snapshot()) >= 4, 5)
    admin = observer.admin
    admin.pause()
    wait_until(lambda: all(w.paused for w in workers), 5, what="both instances paused")
    time.sleep(0.2)  # runs already begun may end
    mark = len(ledger.snapshot())
    # An instance that joins a paused service starts paused.
    late = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
    status = observer.wait_settled(4, 3, workers=[*workers, late])
    assert late.paused and status.paused
    # A trigger while paused would start nothing: it is refused, and not counted.
    with pytest.raises(ServicePaused, match="is paused"):
        admin.trigger()
    assert admin.control()["trigger"] == 0
    # A local resume() does not undo a cluster-wide pause.
    workers[0].resume()
    assert workers[0].paused
    with pytest.raises(GoWorkerError, match="paused"):
        workers[0].trigger()
    time.sleep(0.8)  # eight fire times pass: none may start a run
    assert len(ledger.snapshot()) == mark, "no run starts anywhere while paused"
    assert owners_of(observer.status()) == owners_of(status), "claims kept while paused"
    admin.resume()
    everyone = [*workers, late]
    wait_until(lambda: not any(w.paused for w in everyone), 5, what="all resumed")
    wait_until(
        lambda: (
            {r.instance for r in ledger.snapshot()[mark:]} == {w.host.instance.id for w in everyone}
        ),
        5,
        what="every instance running again",
    )
    check_ledger(ledger.snapshot())


@pytest.mark.timeout(60)
def test_cli_pause_status_trigger_resume_stop_run(
    worker_cluster: BackendCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
    handler = gate()
    ledger = handler.ledger
    worker = cluster.make(handler, total=2, cron=HOURLY)
    status = observer.wait_settled(2, 1, workers=[worker])
    base = cluster.cli_args()
    assert main(["pause", *base]) == 0
    assert "paused" in capsys.readouterr().out
    wait_until(lambda: worker.paused, 5)
    assert main(["status", *base]) == 0
    out = capsys.readouterr().out
    assert "PAUSED" in out and worker.host.instance.id[:12] in out
    assert main(["trigger", *base]) == 3, "a trigger of a paused service is refused"
    assert "is paused" in capsys.readouterr().err
    assert main(["resume", *base]) == 0
    wait_until(lambda: not worker.paused, 5)
    assert main(["trigger", *base]) == 0
    wait_until(lambda: len(ledger.snapshot()) == 2, 5, what="runs from the CLI trigger")
    wait_until(lambda: set(states(observer).values()) == {"done"}, 5, what="the runs to end")
    handler.hold.set()
    assert main(["trigger", *base]) == 0
    wait_until(lambda: set(states(observer).values()) == {"running"}, 5, what="runs in flight")
    assert main(["stop-run", *base]) == 0
    assert "stop-run sent" in capsys.readouterr().out
    wait_until(lambda: set(states(observer).values()) == {"cancelled"}, 5, what="runs cancelled")
    assert main(["status", "--json", *base]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["paused"] is False
    assert data["requests"] == {"trigger": 2, "stop_run": 1}
    assert data["settings"] == {"sharding_total_count": 2, "params": "", "schedule": HOURLY}
    (instance,) = data["instances"]
    assert (instance["id"], instance["pid"], instance["host"]) == (
        worker.host.instance.id,
        os.getpid(),
        socket.gethostname(),
    )
    assert instance["health"] == "GREEN" and instance["shards"] == [0, 1]
    tokens = tokens_of(status)
    for shard in data["shards"]:
        assert shard["owner"] == worker.host.instance.id
        assert shard["token"] == tokens[shard["shard"]]
        assert shard["state"] == "cancelled"
        assert shard["next_fire"] is not None


@pytest.mark.timeout(60)
def test_requests_made_before_an_instance_started_are_not_replayed(
    worker_cluster: BackendCluster,
) -> None:
    cluster = worker_cluster
    observer = cluster.observer()
    handler = gate()
    first = cluster.make(handler, total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[first])
    observer.admin.trigger()
    # Sent at once, stop-run could cancel the triggered runs before their do() started.
    wait_until(lambda: len(handler.ledger.snapshot()) == 2, 5, what="the triggered runs")
    observer.admin.stop_run()
    Cluster.stop(first)
    second = cluster.make(handler, total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[second])
    time.sleep(0.5)
    assert len(handler.ledger.snapshot()) == 2, "an old trigger must not fire on a new instance"
    assert observer.admin.control() == {"paused": False, "trigger": 1, "stop_run": 1}


@pytest.mark.timeout(60)
def test_a_failover_run_waits_while_the_service_is_paused(worker_cluster: BackendCluster) -> None:
    """Shard 0's last run was left running by an instance that is gone, and the service is
    paused before any instance starts: the next owner re-runs that fire only once resumed."""
    cluster = worker_cluster
    gone = cluster.kit.make(SERVICE)
    gone.register(WorkerInstance.create(SERVICE))
    claim = gone.claim(0, "gone")
    assert claim is not None
    fire = time.time() - 0.5
    record = BackendRunRecord(
        shard=0, owner="gone", lease=gone.lease_id, run_id="r0", fire_time=fire, token=claim.token
    )
    assert gone.begin_run(claim, record)
    gone.update_control(lambda state: replace(state, paused=True))
    gone.close()
    observer = cluster.observer()
    assert observer.status().shards[0].state == "interrupted"
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=1, cron=HOURLY)
    status = observer.wait_settled(1, 1, workers=[worker])
    assert worker.paused and status.paused
    assert status.shards[0].token is not None and status.shards[0].token > claim.token
    time.sleep(0.5)
    assert ledger.snapshot() == [], "the failover run must wait for resume"
    observer.admin.resume()
    wait_until(lambda: len(ledger.snapshot()) == 1, 5, what="the failover run after resume")
    (run,) = ledger.snapshot()
    assert run.failover and run.instance == worker.host.instance.id
    assert abs(run.scheduled - fire) < 1e-3
    wait_until(lambda: observer.status().shards[0].state == "done", 5, what="the run recorded")


TOKEN_JOB = """
import json, pathlib
from goworker_py import Handler

class Job(Handler):
    def do(self, ctx):
        pathlib.Path("ran.json").write_text(json.dumps(
            {"token": ctx.fencing_token, "instance": ctx.instance.id, "total": ctx.shard.total}
        ))
"""


@pytest.mark.timeout(60)
def test_cli_run_with_a_discovery_url_is_a_cluster_member(
    worker_cluster: BackendCluster, handler_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``goworker-py run module:Handler --discovery URL --service S``: cluster mode, a fencing
    token from the backend, the run recorded there; settings conflicts name the flag."""
    cluster = worker_cluster
    (handler_dir / "token_job.py").write_text(TOKEN_JOB)
    argv = ["run", "token_job:Job", *cluster.cli_args(), "--shards", "2"]
    # A cluster member runs until stopped (a run-once one too): --timeout stops it.
    assert main([*argv, "--timeout", "1.5"]) == 0
    ran = json.loads((handler_dir / "ran.json").read_text())
    assert isinstance(ran["token"], int) and ran["total"] == 2
    status = cluster.observer().status()
    assert status.settings == {"sharding_total_count": 2, "params": "", "schedule": ""}
    assert [s.state for s in status.shards] == ["done", "done"]
    capsys.readouterr()
    assert main(["run", "token_job:Job", *cluster.cli_args(), "--shards", "3"]) == 2
    err = capsys.readouterr().err
    assert "has --shards 2 but this instance has --shards 3" in err
    assert "pass --overwrite to replace them" in err


# -- depends_on across instances -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_depends_on_across_instances(
    worker_cluster: BackendCluster, groups: list[WorkerGroup]
) -> None:
    """Two instances each run the group extract (4 shards) -> load (4 shards: shard i after
    extract shard i) and -> report (1 shard: after every extract shard, wherever each runs).
    A downstream run follows its upstream runs of the same fire time, only once they all
    succeeded, and never twice; each service's shards are spread over both instances."""
    cluster = worker_cluster
    book = Book()
    config = cluster.config()
    for _ in range(2):
        group = WorkerGroup(handle_signals=False)
        group.add(
            Worker(
                book.handler(fail_shard=3, every_other=True),
                config,
                # Every second, on the second: fire times are the same on every shard (those of
                # an `@every` schedule count from each shard's claim).
                "* * * * * *",
                model=Model.CLUSTER,
                service_name="extract",
                sharding_total_count=4,
                name="extract",
                retry_policy=DefaultRetryPolicy(non_retryable_error_types=(RuntimeError,)),
            )
        )
        for name, total in (("load", 4), ("report", 1)):
            group.add(
                Worker(
                    book.handler(),
                    config,
                    model=Model.CLUSTER,
                    service_name=name,
                    sharding_total_count=total,
                    name=name,
                ),
                depends_on=["extract"],
            )
        groups.append(group)
        group.run()

    def enough() -> bool:
        return (
            len({r.instance for r in book.of("extract")}) == 2
            and len({r.instance for r in book.of("load")}) == 2
            and {r.shard for r in book.of("load")} == {0, 1, 2, 3}
            and len(book.of("report")) >= 1
            and any(not r.ok for r in book.of("extract"))
        )

    try:
        wait_until(enough, 20, what="extract, load on both instances; every load shard; a report")
    except AssertionError:
        with book.lock:
            for run in book.runs:
                print(run)
        raise
    for group in groups:
        group.cancel()
    for group in groups:
        group.wait(20)
    extracts = {(r.shard, r.fire): r for r in book.of("extract")}
    for worker in ("load", "report"):
        runs = book.of(worker)
        pairs = [(r.shard, r.fire) for r in runs]
        assert len(pairs) == len(set(pairs)), f"a {worker} (shard, fire time) ran twice"
        for run in runs:
            needed = [run.shard] if worker == "load" else [0, 1, 2, 3]
            upstream = [extracts[(s, run.fire)] for s in needed]
            assert all(r.ok for r in upstream), f"{worker} {run.shard} ran after a failed extract"
            assert run.start >= max(r.end for r in upstream), f"{worker} began before extract ended"
    # The report waited on extract shards of both instances: a dependency across instances.
    for report in book.of("report"):
        assert len({extracts[(s, report.fire)].instance for s in range(4)}) == 2
    skipped = {r.fire for r in book.of("extract") if r.shard == 3 and not r.ok}
    assert skipped and not skipped & {r.fire for r in book.of("report")}
