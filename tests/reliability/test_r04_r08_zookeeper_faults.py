"""R4-R8 and issue #4 item 4: faults of ZooKeeper itself, or of the network in front of it.

Setup (RELIABILITY.md): a private ZooKeeper (tick 100 ms), worker processes, session timeout
T = 2 s. ZooKeeper is frozen (SIGSTOP: a silent server, as a partition looks to clients),
killed and restarted with its data, or cut off from one instance by a TCP proxy; a 3-server
ensemble loses its leader. The independent checker judges every history.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from goworker_py.testing import ZooKeeperEnsemble

from .harness import Instance, Scenario, percentile, wait_for

T = 2.0
TICK = 0.1
PERIOD = 1.0


def health_events(scenario: Scenario, since: float, who: Instance | None = None) -> list[dict]:
    return [
        e
        for e in scenario.history()
        if e["event"] == "health" and e["t"] >= since and (who is None or e["instance"] == who.name)
    ]


def first_health(
    scenario: Scenario, who: Instance, health: str, since: float, timeout: float
) -> float:
    """When ``who`` first reported ``health`` after ``since``."""

    def found(history: list[dict[str, Any]]) -> float | None:
        return next(
            (
                e["t"]
                for e in history
                if e["event"] == "health"
                and e["instance"] == who.name
                and e["health"] == health
                and e["t"] >= since
            ),
            None,
        )

    return scenario.wait_history(found, timeout, f"{who.name} {health} after {since:.3f}")


def first_unhealthy(scenario: Scenario, who: Instance, since: float, timeout: float) -> float:
    """When ``who`` first reported anything but GREEN after ``since`` (YELLOW, or RED when it
    fenced itself before kazoo noticed anything)."""

    def found(history: list[dict[str, Any]]) -> float | None:
        return next(
            (
                e["t"]
                for e in history
                if e["event"] == "health"
                and e["instance"] == who.name
                and e["health"] != "GREEN"
                and e["t"] >= since
            ),
            None,
        )

    return scenario.wait_history(found, timeout, f"{who.name} not GREEN after {since:.3f}")


def state_events(scenario: Scenario, since: float) -> list[dict[str, Any]]:
    return [e for e in scenario.history() if e["event"] == "zk_state" and e["t"] >= since]


def runs_after(
    scenario: Scenario, since: float, per_shard: int, shards: int = 3, timeout: float = 10.0
) -> None:
    """Wait until every shard has ``per_shard`` scheduled (not failover) runs that started
    after ``since``."""
    scenario.wait_runs(
        lambda runs: all(
            sum(1 for r in runs if r["shard"] == s and r["start"] > since and not r["failover"])
            >= per_shard
            for s in range(shards)
        ),
        timeout,
        f"{per_shard} scheduled run(s) of every shard after {since:.3f}",
    )


def sessions_of(scenario: Scenario) -> dict[str, str | None]:
    return {i.name: i.session for i in scenario.instances if i.alive}


def all_green_since(scenario: Scenario, since: float) -> float | None:
    """When every live instance was last seen turning GREEN, if all are GREEN now."""
    latest: dict[str, tuple[str, float]] = {}
    for event in scenario.history():
        if event["event"] == "health":
            latest[event["instance"]] = (event["health"], event["t"])
    live = [i.name for i in scenario.instances if i.alive]
    if not all(latest.get(name, ("", 0.0))[0] == "GREEN" for name in live):
        return None
    return max((latest[name][1] for name in live), default=since)


# -- R4: ZooKeeper silent for half the session timeout -----------------------------------------


@pytest.mark.timeout(60)
def test_r4_zookeeper_silent_for_less_than_two_thirds_of_the_session_timeout(
    scenario: Scenario,
) -> None:
    """R4: SIGSTOP ZooKeeper 1 s (T/2) while runs are in flight.

    Asserted: every session survives, no shard changes owner, nothing runs twice or at once,
    every shard runs again after. Recorded (not asserted - see the module notes in the
    report): the client state events and the runs cut by self-fencing. A 1 s silence can be
    noticed by kazoo (it pings T/3 minus up to 0.4 s of jitter after its last send, and drops
    the connection when a ping is still unanswered at the next tick: from about 0.54 s of
    silence on). And a client may have heard last from the server up to T/3 before the pause,
    so a 1 s pause can be up to 5T/6 of silence, past the point where an instance must fence
    itself to keep a margin of T/4 before its session can expire (R4b): "no run interrupted"
    and "margin >= T/4" cannot both hold for every 1 s pause.
    """
    scenario.defaults.update(run_seconds=0.6)
    scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    before = observer.claim_nodes()
    sessions = sessions_of(scenario)
    scenario.wait_runs(
        lambda runs: [r for r in runs if r["end"] is None and time.time() - r["start"] < 0.1],
        5.0,
        "a run in flight",
    )
    paused = scenario.pause_zookeeper()
    time.sleep(1.0)  # the fault: a silence of T/2
    resumed = scenario.resume_zookeeper()
    runs_after(scenario, resumed, 2)
    events = state_events(scenario, paused)
    cut = [r for r in scenario.runs() if r["outcome"] == "cancelled"]
    scenario.figure(
        "r4_client_state_events",
        len(events),
        f"{len(events)} ({', '.join(e['instance'] + ' ' + e['state'] for e in events) or '-'})",
    )
    scenario.figure("r4_runs_cut_by_fencing", len(cut))
    assert [e for e in events if e["state"] == "LOST"] == []
    assert sessions_of(scenario) == sessions, "a session was lost"
    assert observer.claim_nodes() == before, "a shard changed owner"
    scenario.check(lost_ok_between=[(paused - PERIOD, resumed + PERIOD)])


# -- R4b: one instance partitioned ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_r4b_partitioned_instance_fences_itself_before_its_session_expires(
    scenario: Scenario,
) -> None:
    """R4b, three times: a proxy blackholes one instance's connection while its run is going.

    It starts no run after the partition, notices it (YELLOW, or RED at once) and fences itself
    (RED) before the server expires its session; the others take its shards only after the
    expiry; no two runs of a shard overlap. The self-fencing margin (expiry - fence) is recorded
    per trial: positive, and at least T/4 (RELIABILITY.md's bound).
    """
    victim = scenario.spawn(1, via_proxy=True)[0]
    scenario.spawn(2)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    margins, suspensions, fences, expiries = [], [], [], []
    for trial in range(3):
        session = victim.session
        scenario.wait_runs(
            lambda runs: [
                r
                for r in runs
                if r["instance"] == victim.name
                and r["end"] is None
                and time.time() - r["start"] < 0.1
            ],
            5.0,
            f"trial {trial}: a run of the victim in flight",
        )
        cut = scenario.blackhole(victim)
        wait_for(
            lambda old=session: old not in observer.member_sessions(),
            3 * T,
            f"trial {trial}: the victim's session expires",
            interval=0.002,
        )
        expired = time.time()
        suspended = first_unhealthy(scenario, victim, cut, 1.0)
        fenced = first_health(scenario, victim, "RED", cut, 1.0)
        runs = scenario.runs()
        late_starts = [r for r in runs if r["session"] == session and r["start"] > cut]
        assert late_starts == [], f"trial {trial}: runs started after the partition"
        takers = [r for r in runs if r["session"] != session and r["start"] > cut]
        assert all(r["start"] >= expired - 0.05 for r in takers if r["failover"]), takers
        margins.append(expired - fenced)
        suspensions.append(suspended - cut)
        fences.append(fenced - cut)
        expiries.append(expired - cut)
        scenario.heal(victim)
        scenario.wait_history(
            lambda history, old=session: [
                e
                for e in history
                if e["event"] == "registered"
                and e["instance"] == victim.name
                and e["session"] != old
            ],
            10.0,
            f"trial {trial}: the victim re-registers",
        )
        observer.wait_settled(3, 3)
    scenario.figure("r4b_not_green_after_s", [round(x, 3) for x in suspensions])
    scenario.figure("r4b_fenced_after_s", [round(x, 3) for x in fences])
    scenario.figure("r4b_expired_after_s", [round(x, 3) for x in expiries])
    scenario.figure(
        "r4b_fencing_margin_s",
        [round(x, 3) for x in margins],
        f"{[round(x, 3) for x in margins]} (min {min(margins):.3f} s; T/4 = {T / 4} s); "
        f"not GREEN (YELLOW: SUSPENDED, or RED) after {[round(x, 3) for x in suspensions]} s "
        f"(2T/3 = {2 * T / 3:.2f} s)",
    )
    assert all(m > 0 for m in margins), f"fenced after the session expired: margins {margins}"
    assert all(m >= T / 4 for m in margins), f"margins {margins} below T/4 = {T / 4} s"
    scenario.check(lost_ok_between=[tuple(w) for w in scenario.cut_off_windows()[victim.name]])


@pytest.mark.timeout(60)
def test_r4b_runs_ending_during_a_partition_do_not_delay_the_fence(
    scenario: Scenario,
) -> None:
    """R4b, worst case: the partitioned instance owns 7 shards whose runs end one after the
    other during the partition (each end sends a marker write), and one long run.

    Each end restarts kazoo's ping clock, so kazoo notices the partition only well after the
    session expired (about 2.6 s here, T = 2 s): the fence must not wait for it. It must still
    come before the session expires, with the margin of T/4, and no shard may run on two
    instances at once.
    """
    lengths = {k: 0.25 * (k + 1) for k in range(6)}
    lengths[6] = 5.0
    scenario.defaults.update(
        shards=7, shard_run_seconds=",".join(f"{k}={v}" for k, v in lengths.items())
    )
    victim = scenario.spawn(1, via_proxy=True)[0]
    observer = scenario.observer
    observer.wait_settled(7, 1)
    session = victim.session
    # All seven start together at a fire time they share: the first one, if the observer
    # settles in time, else the next, six seconds later (shard 6 runs 5 s and skips the rest).
    scenario.wait_runs(
        lambda runs: (
            len([r for r in runs if r["end"] is None and time.time() - r["start"] < 0.15]) == 7
        ),
        8.0,
        "all seven runs just started",
    )
    cut = scenario.blackhole(victim)
    scenario.spawn(1)
    wait_for(lambda: session not in observer.member_sessions(), 3 * T, "expiry", interval=0.002)
    expired = time.time()
    fenced = first_health(scenario, victim, "RED", cut, 3 * T)
    suspended = first_unhealthy(scenario, victim, cut, 1.0)
    scenario.figure(
        "r4b_worst_case",
        round(expired - fenced, 3),
        f"not GREEN {suspended - cut:.3f} s, fenced {fenced - cut:.3f} s, session expired "
        f"{expired - cut:.3f} s after the partition: margin {expired - fenced:.3f} s",
    )
    scenario.heal(victim)
    observer.wait_settled(7, 2)
    scenario.check(lost_ok_between=[(cut - PERIOD, time.time())])
    assert expired - fenced > 0, f"fenced {fenced - expired:.3f} s after the session expired"
    assert expired - fenced >= T / 4, f"margin {expired - fenced:.3f} s below T/4"


# -- R5: ZooKeeper silent for between 2T/3 and T ---------------------------------------------

MISFIRE_GRACE = 1.0  # WorkerConfig.misfire_grace_time's default
HEALTH_POLL_LAG = 0.02  # instance_main.py writes health changes it polls every 10 ms


def late_runs(runs: list[dict[str, Any]], since: float) -> list[dict[str, Any]]:
    """Scheduled runs after ``since`` that started more than the misfire grace after their fire
    time (a failover re-run repeats an old fire time by design)."""
    return [
        r
        for r in runs
        if r["start"] > since and not r["failover"] and r["start"] - r["fire"] > MISFIRE_GRACE
    ]


@pytest.mark.timeout(60)
def test_r5_zookeeper_silent_for_most_of_the_session_timeout(scenario: Scenario) -> None:
    """R5: SIGSTOP ZooKeeper 1.7 s (between 2T/3 and T).

    Every instance is SUSPENDED (and fences itself), then CONNECTED again with the same
    session; no shard changes owner; no run starts while its instance is not GREEN; runs
    resume after; nothing runs twice.

    The schedule fires every 200 ms so that the server heard from every client just before
    the pause: the sessions' deadlines then fall after the resume (a client quiet for up to
    T/3 before the pause could lose its session at resume: that is R6).
    """
    scenario.defaults.update(cron="@every 200ms", run_seconds=0.05)
    scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    before = observer.claim_nodes()
    sessions = sessions_of(scenario)
    runs_after(scenario, time.time(), 2)
    paused = scenario.pause_zookeeper()
    time.sleep(1.7)  # the fault: a silence between 2T/3 and T
    resumed = scenario.resume_zookeeper()
    green = wait_for(lambda: all_green_since(scenario, resumed), 10.0, "every instance GREEN")
    runs_after(scenario, max(green, resumed), 3)
    events = state_events(scenario, paused)
    for instance in scenario.instances:
        states = [e["state"] for e in events if e["instance"] == instance.name]
        assert states[:1] == ["SUSPENDED"] and states[-1] == "CONNECTED", (instance.name, states)
        assert "LOST" not in states, (instance.name, states)
    assert sessions_of(scenario) == sessions, "a session was lost"
    assert observer.claim_nodes() == before, "a shard changed owner"
    # No run started while its instance was not GREEN.
    history = scenario.history()
    for instance in scenario.instances:
        unhealthy: list[tuple[float, float]] = []
        down: float | None = None
        for event in history:
            if event["event"] != "health" or event["instance"] != instance.name:
                continue
            if event["health"] != "GREEN" and down is None:
                down = event["t"]
            elif event["health"] == "GREEN" and down is not None:
                unhealthy.append((down, event["t"]))
                down = None
        starts = [r["start"] for r in scenario.pair_runs(history) if r["instance"] == instance.name]
        # The instance writes its health when it polls it (every 10 ms): allow for that lag.
        bad = [s for s in starts for a, b in unhealthy if a < s < b - HEALTH_POLL_LAG]
        assert bad == [], f"{instance.name} started runs while not GREEN: {bad}"
    runs = scenario.runs()
    gaps = []
    for shard in range(3):
        starts = sorted(r["start"] for r in runs if r["shard"] == shard)
        gaps.append(max(b - a for a, b in itertools.pairwise(starts)))
    scenario.figure(
        "r5_pause_to_resume_gap_s",
        [round(g, 3) for g in gaps],
        f"longest gap between runs per shard {[round(g, 3) for g in gaps]} s "
        f"(ZooKeeper silent {resumed - paused:.3f} s); ownership changes 0",
    )
    # Recorded, not asserted here: a run whose begin was in flight when the connection dropped
    # may start once it is back, beyond the misfire grace (whether it happens depends on when
    # kazoo drops the connection). test_r10_a_begin_whose_reply_was_lost_respects_the_misfire_
    # grace reproduces it deterministically.
    late = late_runs(runs, paused)
    scenario.figure(
        "r5_runs_beyond_misfire_grace",
        len(late),
        f"{len(late)} {[round(r['start'] - r['fire'], 3) for r in late]}",
    )
    scenario.check(lost_ok_between=[(paused - 0.2, resumed + 0.5)])


# -- R6: ZooKeeper silent for longer than the session timeout: mass expiry --------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["skip", "run_once"])
def test_r6_zookeeper_silent_for_longer_than_the_session_timeout(
    scenario: Scenario, policy: str
) -> None:
    """R6: SIGSTOP ZooKeeper 5 s while runs are in flight: mass expiry.

    A stopped server still accepts connections into its backlog, and at resume it may serve a
    queued reconnect before it expires that session - a real partition would not let the
    client through. So the instances reach ZooKeeper through proxies, blackholed with the
    pause until 0.5 s after the resume: every session expires at the resume, as in the spec.

    Every instance fences itself (RED) during the silence, sees LOST, re-registers, and the
    cluster re-converges. Never two runs of a shard at once, no fire run twice (but for
    at-least-once failover re-runs), and the fire times that fell in the outage follow the
    misfire policy: ``skip`` runs none of them late, ``run_once`` runs each shard once for all
    of them. The schedule fires every 2 s (the misfire grace is 1 s).
    """
    scenario.defaults.update(cron="*/2 * * * * *", run_seconds=0.5, misfire_policy=policy)
    scenario.spawn(3, via_proxy=True)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    sessions = sessions_of(scenario)
    scenario.wait_runs(
        lambda runs: [r for r in runs if r["end"] is None and time.time() - r["start"] < 0.1],
        5.0,
        "runs in flight",
    )
    for instance in scenario.instances:
        scenario.blackhole(instance)
    paused = scenario.pause_zookeeper()
    for instance in scenario.instances:
        first_health(scenario, instance, "RED", paused, 2 * T)
    time.sleep(max(0.0, paused + 5.0 - time.time()))  # the fault: 5 s of silence
    resumed = scenario.resume_zookeeper()
    time.sleep(0.5)  # the partition outlasts the pause a little: the server expires sessions
    for instance in scenario.instances:
        scenario.heal(instance)
    healed = time.time()
    observer.wait_owned(3, 10.0)
    owned = time.time()
    green = wait_for(lambda: all_green_since(scenario, healed), 10.0, "every instance GREEN")
    runs_after(scenario, green, 1)
    lost = [e for e in state_events(scenario, paused) if e["state"] == "LOST"]
    assert len({e["instance"] for e in lost}) == 3, f"sessions lost: {lost}"
    assert all(i.session != sessions[i.name] for i in scenario.instances)
    runs = scenario.runs()
    # Per shard, the fire times no run could start for: from the silence until its first
    # scheduled run after it (later fire times that pass while that run goes are ordinary
    # misfires of a run that overran).
    per_shard: dict[int, list[dict[str, Any]]] = {}
    for shard in range(3):
        scheduled = [r for r in runs if r["shard"] == shard and not r["failover"]]
        back = min(r["start"] for r in scheduled if r["start"] > healed)
        per_shard[shard] = [r for r in scheduled if paused < r["fire"] <= back]
    scenario.figure(
        f"r6_{policy}_recovery_s",
        round(owned - healed, 3),
        f"all shards owned {owned - healed:.3f} s after the partition healed "
        f"({owned - resumed:.3f} s after ZooKeeper resumed), every instance GREEN after "
        f"{green - healed:.3f} s; sessions lost 3/3; runs of fire times in the outage per "
        f"shard { {s: len(v) for s, v in per_shard.items()} }",
    )
    assert owned - healed <= 2.0, f"shards owned again only {owned - healed:.3f} s after"
    if policy == "skip":
        late = late_runs(runs, paused)
        assert late == [], "skip ran missed fire times late:\n" + scenario.runs_table(late)
    else:
        # Coalesced: at most one run for all the fire times missed (when the latest of them is
        # still within the grace at recovery, both policies run it; else only run_once does).
        for shard, shard_runs in per_shard.items():
            assert len(shard_runs) <= 1, (
                f"shard {shard}: {len(shard_runs)} runs for the fire times missed in the "
                "outage (run_once: one at most)\n" + scenario.runs_table(shard_runs)
            )
    # Either way every shard runs again promptly: within a period (after a failover re-run).
    for shard in range(3):
        first = min(
            r["start"]
            for r in runs
            if r["shard"] == shard and r["start"] > green and not r["failover"]
        )
        assert first - green <= 2.0 + 0.5 + 0.2, f"shard {shard} idle {first - green:.3f} s"
    scenario.check(lost_ok_between=[(paused - 0.5, green + 2 * PERIOD)])


# -- R7: ZooKeeper restarted with its data ----------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("down", [1.0, 3.0], ids=["D<T", "D>T"])
def test_r7_zookeeper_restart_keeps_sessions_and_detects_a_dead_peer(
    scenario: Scenario, down: float
) -> None:
    """R7: kill -9 ZooKeeper and start it again on the same data after ``down`` seconds.

    A restarted server reloads its sessions with a fresh timeout, so sessions survive the
    outage either way: every live instance reconnects with its session and keeps its shards.
    A peer killed just before the outage is detected (its session expires) about D + T after
    its death, and only its shards move.
    """
    scenario.spawn(4)  # 3 owners, 1 standby
    observer = scenario.observer
    claims = observer.wait_settled(3, 4)
    before = observer.claim_nodes()
    owners = set(claims.values())
    peer = next(i for i in scenario.instances if i.session in owners)
    peer_shards = sorted(s for s, owner in claims.items() if owner == peer.session)
    peer_session = peer.session
    peer_died = peer.sigkill()
    died = scenario.kill_zookeeper()
    time.sleep(down)  # the fault: the outage
    serving = scenario.start_zookeeper()
    back = wait_for(
        lambda: all_green_since(scenario, serving), 10.0, "every live instance GREEN again"
    )
    wait_for(
        lambda: peer_session not in observer.member_sessions(),
        down + 3 * T,
        "the dead peer's session expires",
        interval=0.005,
    )
    detected = time.time()
    after = observer.wait_owned(3, 5.0)
    survivors = [i for i in scenario.instances if i.alive]
    assert [e for e in state_events(scenario, died) if e["state"] == "LOST"] == []
    for instance in survivors:
        assert len(instance.events("registered")) == 1, f"{instance.name} re-registered"
    kept = {s: node for s, node in before.items() if s not in peer_shards}
    now = observer.claim_nodes()
    assert all(now.get(s) == node for s, node in kept.items()), (kept, now)
    assert all(after[s] != peer_session for s in peer_shards)
    runs_after(scenario, detected, 1)
    scenario.figure(
        f"r7_down_{down:g}s",
        round(detected - peer_died, 3),
        f"down {down} s: server serving {serving - died:.3f} s after the kill; every instance "
        f"GREEN {max(back, serving) - serving:.3f} s after it served; dead peer detected "
        f"{detected - peer_died:.3f} s after its death (D + T + restart = "
        f"{down + T + (serving - died - down):.3f} s)",
    )
    assert detected - peer_died >= down + T - 0.5, "the dead peer was detected too early"
    assert detected - serving <= T + 1.0, "the dead peer was detected too late"
    scenario.check(lost_ok_between=[(peer_died - PERIOD, detected + 2 * PERIOD)])


# -- R8: ZooKeeper down for a long time -------------------------------------------------------

_CONNECTING = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) .*Connecting to ")


def connect_attempts(instance: Instance, since: float, until: float) -> list[float]:
    """Times of kazoo's connection attempts (from the instance's log) between two instants."""
    day = datetime.fromtimestamp(since).date()
    times = []
    for line in Path(instance.stderr_path).read_text(errors="replace").splitlines():
        match = _CONNECTING.match(line)
        if match:
            clock = datetime.strptime(match.group(1), "%H:%M:%S.%f").time()
            at = datetime.combine(day, clock).timestamp()
            if since <= at <= until:
                times.append(at)
    return times


@pytest.mark.timeout(90)
def test_r8_zookeeper_down_for_long(scenario: Scenario) -> None:
    """R8 (60 s shortened to 10 s): ZooKeeper killed and kept down.

    Cluster runs stop at once (no run starts without ZooKeeper; in-flight runs are cut by the
    fence within 2T/3), every process stays up and reports RED, reconnection attempts keep
    going at most ~1.4 s apart (kazoo's backoff, capped at 1 s, plus 40 % jitter), and when
    ZooKeeper returns every instance is GREEN and running its shards within a few seconds.
    """
    scenario.defaults.update(run_seconds=0.6)
    scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    sessions = sessions_of(scenario)
    scenario.wait_runs(
        lambda runs: [r for r in runs if r["end"] is None and time.time() - r["start"] < 0.1],
        5.0,
        "runs in flight",
    )
    died = scenario.kill_zookeeper()
    for instance in scenario.instances:
        first_health(scenario, instance, "RED", died, 2 * T / 3 + 0.5)
    time.sleep(max(0.0, died + 10.0 - time.time()))  # the fault: a long outage
    assert all(i.alive for i in scenario.instances), "a process died during the outage"
    runs = scenario.runs()
    last_start = max(r["start"] for r in runs)
    in_flight_at_end = [r for r in runs if r["end"] is None]
    ends = [r["end"] for r in runs if r["end"] is not None and r["start"] < died < r["end"]]
    attempts = {i.name: connect_attempts(i, died, time.time()) for i in scenario.instances}
    gaps = [b - a for times in attempts.values() for a, b in itertools.pairwise(times)]
    serving = scenario.start_zookeeper()
    back = wait_for(lambda: all_green_since(scenario, serving), 10.0, "every instance GREEN")
    green = max(back, serving) - serving
    observer.wait_settled(3, 3)
    runs_after(scenario, serving, 1)
    resumed = min(r["start"] for r in scenario.runs() if r["start"] > serving) - serving
    scenario.figure(
        "r8_stop_latency_s",
        round(max([last_start - died, *[e - died for e in ends]]), 3),
        f"last run start {last_start - died:+.3f} s after ZooKeeper died; in-flight runs "
        f"ended {[round(e - died, 3) for e in ends]} s after",
    )
    scenario.figure(
        "r8_recovery_s",
        round(green, 3),
        f"every instance GREEN {green:.3f} s after ZooKeeper served again, first run "
        f"{resumed:.3f} s after; reconnect attempts per instance "
        f"{ {k: len(v) for k, v in attempts.items()} }, longest gap {max(gaps):.3f} s",
    )
    assert last_start <= died + 2 * T / 3
    assert all(e <= died + 2 * T / 3 for e in ends), ends
    assert in_flight_at_end == []
    assert max(gaps) <= 1.5, f"reconnection attempts {max(gaps):.3f} s apart"
    assert min(len(v) for v in attempts.values()) >= 5, attempts
    assert green <= 3.0, f"GREEN only {green:.3f} s after ZooKeeper returned"
    assert sessions_of(scenario) == sessions, "sessions were lost (the server kept them)"
    scenario.check(lost_ok_between=[(died - PERIOD, serving + 2 * PERIOD)])


# -- issue #4 item 4: an ensemble loses its leader ------------------------------------------


@pytest.fixture
def ensemble_scenario(
    zookeeper_ensemble: ZooKeeperEnsemble, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Scenario]:
    built = Scenario(zookeeper_ensemble, tmp_path / "scenario", request=request)
    try:
        yield built
    finally:
        built.close()
        for index, server in enumerate(zookeeper_ensemble.servers):
            if not server.is_running:
                zookeeper_ensemble.start(index)


@pytest.mark.timeout(120)
def test_ensemble_leader_killed(
    ensemble_scenario: Scenario, zookeeper_ensemble: ZooKeeperEnsemble
) -> None:
    """Issue #4 item 4: kill -9 the leader of a 3-server ensemble.

    Workers continue: every session survives the election (the new leader takes the sessions
    over), no shard changes owner, nothing runs twice or at once, and every shard runs again.
    """
    scenario = ensemble_scenario
    scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    before = observer.claim_nodes()
    sessions = sessions_of(scenario)
    runs_after(scenario, time.time(), 1)
    killed = scenario.note("zk_leader_kill")
    leader = zookeeper_ensemble.stop_leader(kill=True, wait=True)
    elected = scenario.note("zk_leader_elected", old_leader=leader)
    back = wait_for(lambda: all_green_since(scenario, killed), 15.0, "every instance GREEN")
    runs_after(scenario, elected, 2)
    events = state_events(scenario, killed)
    assert [e for e in events if e["state"] == "LOST"] == []
    assert sessions_of(scenario) == sessions, "a session was lost"
    assert observer.claim_nodes() == before, "a shard changed owner"
    first = [
        min(r["start"] for r in scenario.runs() if r["start"] > elected and r["shard"] == s)
        for s in range(3)
    ]
    scenario.figure(
        "ensemble_leader_kill",
        round(elected - killed, 3),
        f"new leader serving {elected - killed:.3f} s after the kill; every instance GREEN "
        f"{max(back, killed) - killed:.3f} s after; state events {len(events)}; first runs "
        f"{percentile([f - elected for f in first], 1.0):.3f} s after the election",
    )
    scenario.check(lost_ok_between=[(killed - PERIOD, elected + 2 * PERIOD)])
