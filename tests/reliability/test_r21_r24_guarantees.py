"""R21-R24 (issue #9): the cluster's guarantees under faults built to break them.

Setup (RELIABILITY.md): a private ZooKeeper (tick 100 ms), worker processes, session timeout
T = 2 s, an independent checker. SPEC 4.2/4.4: an instance cut off from ZooKeeper cancels its
runs *before* the server can expire its session, whatever the link does and whatever user code
is doing; a resumed instance never works on, or reports GREEN for, a lease it lost. SPEC 4.3: a
hand-over never abandons a fire.

- R21: one instance partitioned by its proxy: (a) RST at once, and on every new connection;
  (b) silence, then a RST answering the client's next packet; (c) a black hole - (c) also on
  etcd and Redis, two trials each (issue #11).
- R22: an owner frozen (SIGSTOP) mid-run for 1.15 T and for 2 T, then resumed.
- R23: a partition landing while the handler's ``watch()`` blocks for seconds.
- R24: churn - instances started and SIGTERMed at random for 90 s, shards firing every second;
  also on etcd and Redis, for 30 s each (issue #11).

Runs in R21-R23 tick (``--tick``): ``do`` checks ``ctx.cancelled``, makes a fenced write, sleeps
a little, again - so work done by an owner that should have stopped shows as ticks.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from ._r21_r24_support import (
    cut_when_quiet,
    events_of,
    expiry_seen,
    first_health,
    reregistered,
    run_in_flight,
    summary,
    wait_until,
)
from .checker import check_fires_completed, check_overlaps, fire_figures
from .harness import Instance, Scenario, on_backends, wait_for
from .proxy import PartitionMode

T = 2.0
#: RELIABILITY.md's bound on the self-fencing margin (session expiry - fence).
MARGIN = T / 4
#: A new owner's run may start this long before the observer saw the old session go (the
#: observer polls; the new owner is told by a watch).
OBSERVER_LAG = 0.05


def problems_of_check(scenario: Scenario, **kwargs: Any) -> list[str]:
    """The checker's verdict as a list of problems (empty when sound), not an exception: each
    test reports all it measured before it fails."""
    try:
        scenario.check(**kwargs)
    except AssertionError as exc:
        return [f"checker: {exc}"]
    return []


# -- R21: a partition, three ways ----------------------------------------------------------------

R21_VARIANTS: dict[str, PartitionMode] = {
    "a_rst_at_once": "reset",
    "b_rst_on_next_packet": "reset_on_next_packet",
    "c_blackhole": "drop",
}
R21_TRIALS = 3
#: Trials of variant (c) on etcd and Redis (the suite's time budget).
R21_OTHER_TRIALS = 2
R21_PERIOD = 4.0  # fires every 4 s, runs of 3 s: a run is in flight most of the time
R21_QUIET = 0.3  # the cut comes after the victim's link was quiet this long


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variant", sorted(R21_VARIANTS))
def test_r21_partition_fences_before_the_session_can_expire(
    scenario: Scenario, variant: str
) -> None:
    """R21, three trials per variant: one instance is partitioned through its proxy while a run
    of its is in flight and its link has been quiet for 0.3 s (the worst instant, see
    :func:`cut_when_quiet`).

    Asserted per trial: the victim fences itself (RED) at least T/4 before the server expires
    its session - a read that finds the link reset is no word from the server; it starts no run
    after the cut and ticks no more after the expiry; its shards' new owner starts them only
    after the expiry. Over the whole history: no overlapping runs, no stale fenced write
    accepted. Figures: the margin per trial (min, median), when the RSTs came.
    """
    r21_partition(scenario, variant, R21_TRIALS)


@pytest.mark.timeout(120)
@on_backends("etcd", "redis")
def test_r21c_blackhole_fences_before_the_lease_can_expire(scenario: Scenario) -> None:
    """R21 (c) on etcd and Redis, two trials each: the victim's proxy drops everything (its
    keep-alives or refreshes get no answer at all), with the assertions of
    :func:`test_r21_partition_fences_before_the_session_can_expire` - fenced at least T/4
    before the server expires the lease, no run started after the cut, no tick after the
    expiry, no take-over before it, no overlap, no stale fenced write accepted.

    Variants (a) and (b), the RSTs, apply to both backends as well and run on ZooKeeper only,
    for the suite's time budget: an error is no reply on any backend (a lease counts from
    answered requests only), so a reset link fences by the same clock as a silent one.
    """
    r21_partition(scenario, "c_blackhole", R21_OTHER_TRIALS)


def r21_partition(scenario: Scenario, variant: str, trials: int) -> None:
    """R21's scenario: ``trials`` partitions of one instance the way ``variant`` says."""
    mode = R21_VARIANTS[variant]
    scenario.defaults.update(cron=f"*/{R21_PERIOD:g} * * * * *", run_seconds=3.0, tick=0.1)
    victim = scenario.spawn(1, via_proxy=True, fence_dir=True)[0]
    scenario.spawn(2, fence_dir=True)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    assert victim.proxy is not None
    margins: list[float] = []
    problems: list[str] = []
    details: list[str] = []
    for trial in range(trials):
        session = victim.session
        assert session is not None
        shards = sorted(s for s, owner in observer.claims().items() if owner == session)
        resets_before = len(victim.proxy.client_resets)
        cut, run, silence = cut_when_quiet(
            scenario, victim, mode, quiet=R21_QUIET, run_age=(0.3, 0.6), timeout=3 * R21_PERIOD
        )
        expired = expiry_seen(scenario, session, 3 * T)
        fence = first_health(scenario, victim, "RED", cut, 3 * T)
        fenced = fence["t"] if fence is not None else float("inf")
        margin = expired - fenced
        margins.append(margin)
        resets = [round(t - cut, 3) for t in victim.proxy.client_resets[resets_before:]]
        history = scenario.history()
        runs = scenario.pair_runs(history)
        late_starts = [r for r in runs if r["session"] == session and r["start"] > cut]
        early_takers = [
            r
            for r in runs
            if r["shard"] in shards
            and r["session"] != session
            and cut < r["start"] < expired - OBSERVER_LAG
        ]
        stale_ticks = events_of(history, "tick", since=expired, session=session)
        details.append(
            f"trial {trial}: run {run['shard']} {run['start'] - cut:+.3f} s, link quiet "
            f"{silence:.3f} s; RSTs at {resets[:3]}{'...' if len(resets) > 3 else ''} s; fenced "
            f"{fenced - cut:.3f} s, expired {expired - cut:.3f} s after the cut: margin "
            f"{margin:.3f} s; victim ticks after the expiry: {len(stale_ticks)}"
        )
        if margin < MARGIN:
            problems.append(
                f"trial {trial}: fence margin {margin:.3f} s < T/4 = {MARGIN} s "
                f"({'fenced after the session expired' if margin < 0 else 'too late'})"
            )
        if late_starts:
            problems.append(f"trial {trial}: the victim started runs after the cut: {late_starts}")
        if early_takers:
            problems.append(f"trial {trial}: taken over before the expiry: {early_takers}")
        if stale_ticks:
            problems.append(
                f"trial {trial}: the victim worked on after its session expired: "
                f"{len(stale_ticks)} tick(s), up to {stale_ticks[-1]['t'] - expired:.3f} s after"
            )
        scenario.heal(victim)
        reregistered(scenario, victim, session, 15.0)
        observer.wait_settled(3, 3, timeout=20.0)
    scenario.figure(f"r21_{variant}_margin_min_s", round(min(margins), 3))
    scenario.figure(f"r21_{variant}_margin_median_s", round(statistics.median(margins), 3))
    scenario.figure(
        f"r21_{variant}_margins_s",
        [round(m, 3) for m in margins],
        f"{summary(margins)} (goal >= T/4 = {MARGIN} s)\n  " + "\n  ".join(details),
    )
    problems += problems_of_check(
        scenario,
        cron_period=None,  # 3 s runs of a 4 s schedule: a failover re-run makes fires skip
        fenced_writes=True,
        lost_ok_between=[
            (a - R21_PERIOD, b + R21_PERIOD)
            for a, b in scenario.cut_off_windows().get(victim.name, [])
        ],
    )
    assert not problems, "\n".join(problems + details)


# -- R22: owners frozen past their sessions, then resumed ----------------------------------------

R22_PERIOD = 8.0  # fires every 8 s, runs of 6 s: a frozen run still has work left when resumed
R22_TICK = 0.04
R22_TRIALS = 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("freeze", [1.15, 2.0], ids=["1.15T", "2T"])
def test_r22_a_resumed_owner_sees_its_lease_lapsed_at_once(
    scenario: Scenario, freeze: float
) -> None:
    """R22, two trials: SIGSTOP every owner of 3 shards mid-run (their runs fire together and
    tick for 0.1-0.4 s already) for ``freeze`` x T - and until the observer saw their sessions
    expire - then SIGCONT them.

    6 instances: 3 own a shard each, 3 stand by and take the frozen owners' shards; the
    resumed ones rejoin as standbys (nothing else moves), and are the next trial's standbys.
    Among each trial's victims, one handler does CPU work between its ticks (it was frozen
    holding the GIL and goes on with it), two sleep in ``ctx.wait``. Each resumed process
    races its own supervisor: the handler's check of ``ctx.cancelled`` must know the lease
    lapsed by itself (SPEC 4.2, issue #9 item 3), so every victim is a sample.

    Asserted per victim: the resumed handler's first check of ``ctx.cancelled`` is true (no
    tick checked after the resume; at most one written after it - one checked before the
    freeze); its run ends cancelled; the instance never reports GREEN on the expired session
    (``health`` events carry the session read with them), nor starts a run on it. Over the
    history: no overlapping runs of live processes beyond two ticks (80 ms: a handler checks
    ``ctx.cancelled`` once per tick - the CPU-bound one may have been frozen just before its
    40 ms of work - then ends its run), no stale fenced write accepted. Figures: resume ->
    cancel seen (goal <= 5 ms), ticks after the resume.
    """
    scenario.defaults.update(cron=f"*/{R22_PERIOD:g} * * * * *", run_seconds=6.0, tick=R22_TICK)
    observer = scenario.observer
    busy: set[str] = set()
    for index in range(6):  # one at a time: the first three own the shards, in spawn order
        instance = scenario.spawn(1, fence_dir=True, tick_busy=index % 3 == 0)[0]
        if index % 3 == 0:
            busy.add(instance.name)
        observer.wait_settled(3, index + 1)
    latencies: list[float] = []
    stale_counts: list[int] = []
    problems: list[str] = []
    details: list[str] = []
    freezes: list[tuple[float, float]] = []
    for trial in range(R22_TRIALS):
        owners = set(observer.claims().values())
        victims = [i for i in scenario.instances if i.alive and i.session in owners]
        sessions = {v.name: v.session for v in victims}
        assert len(victims) == 3, f"trial {trial}: owners {victims}"

        def fresh_runs(
            runs: list[dict[str, Any]], sessions: dict[str, str | None] = sessions
        ) -> dict[str, dict[str, Any]] | None:
            found: dict[str, dict[str, Any]] = {}
            for name, session in sessions.items():
                run = run_in_flight(runs, {name}, min_age=0.1, max_age=0.4, session=session)
                if run is None:
                    return None
                found[name] = run
            return found

        runs = scenario.wait_runs(fresh_runs, 2 * R22_PERIOD, f"trial {trial}: fresh runs")
        stopped = {v.name: v.sigstop() for v in victims}
        thaw_at = max(stopped.values()) + freeze * T
        old = {str(session) for session in sessions.values()}

        def thawing(thaw_at: float = thaw_at, old: set[str] = old) -> bool:
            return time.time() >= thaw_at and not old & observer.member_sessions()

        wait_for(
            thawing, 4 * T, f"trial {trial}: {freeze} T frozen and the sessions expired", 0.005
        )
        resumed = {v.name: v.sigcont() for v in victims}
        freezes.append((min(stopped.values()), max(resumed.values())))
        for victim in victims:
            run_id = str(runs[victim.name]["run_id"])

            def run_ended(
                history: list[dict[str, Any]], run_id: str = run_id
            ) -> list[dict[str, Any]]:
                return events_of(history, "end", run_id=run_id)

            scenario.wait_history(
                run_ended, 10.0, f"trial {trial}: the resumed run of {victim.name} ends"
            )
            reregistered(scenario, victim, sessions[victim.name], 15.0)
        history = scenario.history()
        for victim in victims:
            name, session, run = victim.name, sessions[victim.name], runs[victim.name]
            kind = "busy" if name in busy else "sleeping"
            since, mine = resumed[name], {"run_id": run["run_id"]}
            ended = events_of(history, "end", **mine)[0]
            ticks = events_of(history, "tick", since=since, **mine)
            checked_after = [e for e in ticks if e["checked"] > since]
            seen = events_of(history, "cancel_seen", since=since, **mine)
            green = [
                e
                for e in events_of(history, "health", since=since, instance=name)
                if e["health"] == "GREEN" and e.get("session") in (session, None)
            ]
            starts = [
                e
                for e in events_of(history, "start", since=stopped[name], session=session)
                if e["run_id"] != run["run_id"]
            ]
            latency = seen[0]["t"] - since if seen else float("inf")
            latencies.append(latency)
            stale_counts.append(len(ticks))
            who = f"trial {trial}, {name} ({kind} handler)"
            details.append(
                f"{who}: frozen {since - stopped[name]:.3f} s; after the resume {len(ticks)} "
                f"tick(s) ({len(checked_after)} checked after it), cancel seen after "
                f"{latency * 1000:.1f} ms, run ended {ended['outcome']} after "
                f"{(ended['t'] - since) * 1000:.1f} ms; GREEN on the expired session: "
                f"{[round(e['t'] - since, 4) for e in green]}"
            )
            if checked_after:
                problems.append(
                    f"{who}: the resumed handler found ctx.cancelled false {len(checked_after)} "
                    f"time(s), up to {checked_after[-1]['checked'] - since:.3f} s after the resume"
                )
            if len(ticks) > 1:
                problems.append(f"{who}: {len(ticks)} ticks after the resume (at most 1)")
            if ended["outcome"] != "cancelled" or not seen:
                problems.append(f"{who}: the resumed run was not cancelled: {ended}")
            if green:
                problems.append(f"{who}: GREEN on the expired session after the resume: {green}")
            if starts:
                problems.append(f"{who}: runs started on the expired session: {starts}")
        observer.wait_settled(3, 6, timeout=20.0)
    finite = [x for x in latencies if x != float("inf")]
    scenario.figure(
        f"r22_{freeze:g}T_resume_to_cancel_ms",
        [round(x * 1000, 1) for x in latencies],
        f"{[round(x * 1000, 1) for x in latencies]} ms (goal <= 5 ms; median "
        f"{statistics.median(finite) * 1000 if finite else float('nan'):.1f} ms)",
    )
    scenario.figure(
        f"r22_{freeze:g}T_ticks_after_resume",
        stale_counts,
        f"{stale_counts} (at most 1)\n  " + "\n  ".join(details),
    )
    problems += problems_of_check(
        scenario,
        # 6 s runs of an 8 s schedule: a re-run after a hand-over (the joins of the set-up) or
        # a failover makes the next fire skip, as the misfire policy says.
        cron_period=None,
        fenced_writes=True,
        fenced_overlap_tolerance=2 * R22_TICK,
        lost_ok_between=[(a - R22_PERIOD, b + 2 * R22_PERIOD) for a, b in freezes],
    )
    assert not problems, "\n".join(problems + details)


# -- R23: a partition while watch() blocks ---------------------------------------------------------

R23_SLOW = 8.0  # watch() blocks this long on a new membership
R23_PERIOD = 4.0


@pytest.mark.timeout(120)
def test_r23_a_slow_watch_does_not_delay_self_fencing(scenario: Scenario) -> None:
    """R23: the victim's ``watch()`` blocks 8 s (as slow I/O would) when a third instance joins;
    while it blocks, and while a run of the victim is in flight if one comes within 4.5 s,
    the victim is partitioned (black hole).

    The fence is user-code free (SPEC 1, 4.2): asserted, the victim fences itself at least T/4
    before its session expires, starts no run after the cut and ticks no more after the
    expiry; its shards' new owner starts them only after the expiry; the cut came while
    ``watch()`` was blocking; no overlapping runs, no stale fenced write accepted.
    """
    scenario.defaults.update(cron=f"*/{R23_PERIOD:g} * * * * *", run_seconds=3.0, tick=0.1)
    # The victim's first watch() sees both members: it is quick (only a later change is slow).
    scenario.spawn(1, fence_dir=True)
    victim = scenario.spawn(1, via_proxy=True, fence_dir=True, slow_watch=R23_SLOW)[0]
    observer = scenario.observer
    observer.wait_settled(3, 2)
    assert not any(e["slow"] for e in victim.events("watch")), "a slow watch() before the join"
    scenario.spawn(1, fence_dir=True)
    began = scenario.wait_history(
        lambda history: events_of(history, "watch", instance=victim.name, phase="begin", slow=True),
        10.0,
        "the victim inside its slow watch()",
    )[0]
    session = victim.session
    assert session is not None
    in_flight = wait_until(
        lambda: run_in_flight(scenario.runs(), {victim.name}, max_age=0.8, session=session),
        4.5,
    )
    shards = sorted(s for s, owner in observer.claims().items() if owner == session)
    cut = scenario.blackhole(victim)
    expired = expiry_seen(scenario, session, 3 * T)
    fence = first_health(scenario, victim, "RED", cut, R23_SLOW + 2 * T)
    fenced = fence["t"] if fence is not None else float("inf")
    margin = expired - fenced
    ended = scenario.wait_history(
        lambda history: events_of(history, "watch", instance=victim.name, phase="end", slow=True),
        R23_SLOW + 5.0,
        "the slow watch() returns",
    )[0]
    history = scenario.history()
    runs = scenario.pair_runs(history)
    late_starts = [r for r in runs if r["session"] == session and r["start"] > cut]
    early_takers = [
        r
        for r in runs
        if r["shard"] in shards and r["session"] != session and cut < r["start"] < expired - 0.05
    ]
    stale_ticks = events_of(history, "tick", since=expired, session=session)
    detail = (
        f"watch() on {began['thread']} from {began['t'] - cut:+.3f} s to {ended['t'] - cut:+.3f} s;"
        f" run in flight at the cut: {in_flight['shard'] if in_flight else None}; fenced "
        f"{fenced - cut:.3f} s, expired {expired - cut:.3f} s after the cut: margin "
        f"{margin:.3f} s; victim ticks after the expiry: {len(stale_ticks)}"
    )
    scenario.figure("r23_fence_margin_s", round(margin, 3), f"{margin:.3f} s; {detail}")
    problems: list[str] = []
    if not began["t"] < cut < ended["t"]:
        problems.append("the partition did not land while watch() was blocking")
    if margin < MARGIN:
        problems.append(f"fence margin {margin:.3f} s < T/4 = {MARGIN} s")
    if late_starts:
        problems.append(f"the victim started runs after the cut: {late_starts}")
    if early_takers:
        problems.append(f"taken over before the expiry: {early_takers}")
    if stale_ticks:
        problems.append(
            f"the victim worked on after its session expired: {len(stale_ticks)} tick(s), up "
            f"to {stale_ticks[-1]['t'] - expired:.3f} s after"
        )
    scenario.heal(victim)
    reregistered(scenario, victim, session, 15.0)
    observer.wait_settled(3, 3, timeout=30.0)
    problems += problems_of_check(
        scenario,
        cron_period=None,
        fenced_writes=True,
        lost_ok_between=[(cut - R23_PERIOD, time.time())],
    )
    overlap = [p for p in problems if "in flight at once" in p]
    scenario.figure("r23_overlapping_runs", len(overlap))
    assert not problems, "\n".join([*problems, detail])


# -- R24: churn ------------------------------------------------------------------------------------

R24_SEED = 9
#: Seconds of churn per backend: 90 on ZooKeeper, 30 on etcd and Redis (the suite's budget).
R24_CHURN = {"zookeeper": 90.0, "etcd": 30.0, "redis": 30.0}
R24_SHARDS = 4
R24_RUNS = "0=0.3,1=0.4,2=0.5,3=0.6"  # a run is in flight 30-60 % of the time
R24_LIVE = (2, 4)  # instances kept alive (started, not stopped) during the churn
#: Seconds after its fire time by which a settled cluster has started a fire's run (a period
#: of the every-second schedule, and half of one for a loaded machine).
R24_START_WITHIN = 1.5


@pytest.mark.slow
@pytest.mark.timeout(300)
@on_backends("zookeeper", "etcd", "redis")
def test_r24_churn_never_abandons_a_fire(scenario: Scenario) -> None:
    """R24: for 90 s (30 s on etcd and Redis), every 1-2 s (seeded), an instance is started or
    SIGTERMed - 2 to 4 kept alive, a stop only while another registered instance lives - with
    4 shards firing every second and runs of 0.3-0.6 s, so that hand-overs interrupt them.
    Then the churn stops, the cluster settles, and every fire started before then gets time to
    complete.

    Asserted (:func:`check_fires_completed`, :func:`check_overlaps`): 0 overlapping runs, 0
    fires left incomplete (every fire some run started has a run that ended ``ok``: a run
    cut short by a hand-over or a stop is re-run by the next owner), 0 fires completed twice
    (nothing was cut off from the server here: no at-least-once excuse applies); every stopped
    instance exited 0. Figures: fires started, incomplete, re-runs, hand-over latency.
    """
    scenario.defaults.update(shards=R24_SHARDS, cron="* * * * * *", shard_run_seconds=R24_RUNS)
    rng = random.Random(R24_SEED)
    live = scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(R24_SHARDS, len(live))
    stopped: list[Instance] = []
    joins = leaves = 0
    began = time.time()
    churn = R24_CHURN[scenario.backend]
    while time.time() - began < churn:
        time.sleep(rng.uniform(1.0, 2.0))  # the fault schedule: one change every 1-2 s
        registered = [i for i in live if i.session is not None]
        can_stop = len(live) > R24_LIVE[0] and len(registered) >= 2
        if len(live) < R24_LIVE[1] and (not can_stop or rng.random() < 0.5):
            live += scenario.spawn(1, wait=False)
            joins += 1
        elif can_stop:
            leaving = rng.choice(registered)
            leaving.sigterm()
            scenario.note("sigterm", instance=leaving.name)
            live.remove(leaving)
            stopped.append(leaving)
            leaves += 1
    churned = time.time()
    for instance in live:
        scenario.wait_registered(instance)
    observer.wait_settled(R24_SHARDS, len(live), timeout=30.0)
    cutoff = time.time()

    def all_completed() -> bool:
        # A fire just before the cutoff may not have started yet: judged before its runs
        # started, it would pass unseen, then be read with its runs in flight. Judge once
        # every fire before the cutoff had its time to start.
        if time.time() < cutoff + R24_START_WITHIN:
            return False
        return not check_fires_completed(scenario.runs(), before=cutoff)

    completed = wait_until(all_completed, 20.0, interval=0.1)
    exits = {i.name: i.wait_exit(15.0) for i in stopped}
    runs = scenario.runs()
    figures = fire_figures(runs, before=cutoff)
    latencies = figures.handover_latencies
    scenario.figure("r24_joins_leaves", (joins, leaves), f"{joins} joins, {leaves} SIGTERMs")
    scenario.figure("r24_fires_started", figures.started)
    scenario.figure(
        "r24_fires_incomplete",
        figures.incomplete,
        f"{figures.incomplete} of {figures.started} "
        f"({100 * figures.incomplete / max(figures.started, 1):.1f} %)",
    )
    scenario.figure("r24_reruns", figures.reruns)
    scenario.figure("r24_fires_completed_twice", figures.completed_twice)
    scenario.figure(
        "r24_handover_latency_s",
        [round(x, 3) for x in latencies],
        f"interrupted run's end -> re-run elsewhere: {summary(latencies)}",
    )
    problems = check_overlaps(runs) + check_fires_completed(
        runs, before=cutoff, cut_off=scenario.cut_off_windows()
    )
    bad_exits = {name: code for name, code in exits.items() if code != 0}
    if bad_exits:
        problems.append(f"stopped instances that did not exit 0: {bad_exits}")
    shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
    assert not problems, (
        f"{len(problems)} problem(s) after {churned - began:.0f} s of churn "
        f"({'every fire completed' if completed else 'waited 20 s for the rest'}):\n"
        + "\n".join(shown)
    )
