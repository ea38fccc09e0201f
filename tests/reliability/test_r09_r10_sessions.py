"""R9-R10: what happens to one instance's ZooKeeper session: expired by the server, or its
connection reset.

Setup (RELIABILITY.md): a private ZooKeeper (tick 100 ms), worker processes, session timeout
T = 2 s, a schedule firing every second; the independent checker judges every history.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from .harness import Instance, Scenario, wait_for

T = 2.0
PERIOD = 1.0


def zk_state_after(
    scenario: Scenario, who: Instance, state: str, since: float, timeout: float
) -> float:
    """When ``who`` first reported kazoo ``state`` after ``since``."""

    def found(history: list[dict[str, Any]]) -> float | None:
        return next(
            (
                e["t"]
                for e in history
                if e["event"] == "zk_state"
                and e["instance"] == who.name
                and e["state"] == state
                and e["t"] >= since
            ),
            None,
        )

    return scenario.wait_history(found, timeout, f"{who.name} {state} after {since:.3f}")


def expire_from_outside(scenario: Scenario, victim: Instance, timeout: float = 15.0) -> float:
    """Expire ``victim``'s session on the server; return when the session was closed.

    The victim is another process, so its session is joined with the id and password it wrote
    at registration: a second client connects with them (the server moves the session to it)
    and closes it (the server ends the session and deletes its ephemerals). If the victim
    wins its session back in between, the round is repeated.
    """
    registered = victim.events("registered")[-1]
    client_id = (int(registered["session_id"], 16), bytes.fromhex(registered["session_passwd"]))
    began = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        twin = KazooClient(hosts=scenario.server.hosts, client_id=client_id, timeout=T)
        closed = time.time()
        try:
            twin.start(timeout=5.0)
            closed = time.time()
        except KazooTimeoutError:
            pass
        finally:
            twin.stop()
            twin.close()
        scenario.note("session_closed", instance=victim.name, at=closed)
        try:
            zk_state_after(scenario, victim, "LOST", began, 2.0)
            return closed
        except AssertionError:
            continue  # the victim reconnected first: try again
    raise AssertionError(f"could not expire {victim.name}'s session within {timeout} s")


@pytest.mark.timeout(60)
def test_r9_server_side_session_expiry(scenario: Scenario) -> None:
    """R9: expire an owner's session on the server while its run is in flight.

    The victim sees LOST, fences itself, re-registers with a new session and owns shards
    again; its old member node and claims are gone; no claim ever belongs to a non-member;
    runs of one shard overlap only while the victim cannot know yet (its run is cut by the
    fence) and the newer run holds a larger fencing token.
    """
    scenario.defaults.update(run_seconds=0.6)
    scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(3, 3)

    def fresh(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
        now = time.time()
        return next(
            (r for r in reversed(runs) if r["end"] is None and now - r["start"] < 0.2), None
        )

    victim_run = scenario.wait_runs(fresh, 5.0, "a run in flight")
    victim = next(i for i in scenario.instances if i.name == victim_run["instance"])
    old_session = victim.session
    with observer.sample_claims() as samples:
        closed = expire_from_outside(scenario, victim)
        lost = zk_state_after(scenario, victim, "LOST", closed - 1.0, 5.0)
        scenario.wait_history(
            lambda history: [
                e
                for e in history
                if e["event"] == "registered"
                and e["instance"] == victim.name
                and e["session"] != old_session
            ],
            10.0,
            "the victim re-registers",
        )
        claims = observer.wait_settled(3, 3)
        owned = time.time()
    assert victim.session != old_session
    assert any(session == victim.session for session in claims.values()), claims
    stale = [
        (s.t, s.claims)
        for s in samples.samples
        if s.t > closed + 0.05 and old_session in s.claims.values()
    ]
    assert stale == [], f"claims of the expired session after it closed: {stale[:3]}"
    assert old_session not in observer.member_sessions()
    assert samples.orphans() == [], f"claims held by non-members: {samples.orphans()[:5]}"
    assert len(samples.samples) >= 5
    runs = scenario.runs()
    cut = [r for r in runs if r["session"] == old_session and r["end"] and r["end"] > closed]
    overlap = 0.0
    for run in cut:
        later = [
            r
            for r in runs
            if r["shard"] == run["shard"] and r["session"] != old_session and r["start"] > closed
        ]
        if later:
            overlap = max(overlap, run["end"] - min(r["start"] for r in later))
    scenario.figure(
        "r9_lost_to_reowned_s",
        round(owned - lost, 3),
        f"session closed -> victim LOST {lost - closed:.3f} s; LOST -> every shard owned by the "
        f"new membership {owned - lost:.3f} s; the victim's run overlapped the new owner's by "
        f"{max(overlap, 0.0):.3f} s before its fence cut it",
    )
    scenario.check(
        fenced_overlap_tolerance=0.5,
        lost_ok_between=[(closed - PERIOD, owned + PERIOD)],
    )


@pytest.mark.timeout(60)
def test_r10_connection_reset_keeps_the_session(scenario: Scenario) -> None:
    """R10, three times: a proxy resets (RST) one instance's connection to ZooKeeper.

    SUSPENDED, then CONNECTED again with the same session; no shard changes owner; nothing
    runs twice or at once.
    """
    victim = scenario.spawn(1, via_proxy=True)[0]
    scenario.spawn(2)
    observer = scenario.observer
    observer.wait_settled(3, 3)
    before = observer.claim_nodes()
    sessions = {i.name: i.session for i in scenario.instances}
    gaps = []
    began = time.time()
    with observer.sample_claims() as samples:
        for _ in range(3):
            reset = scenario.note("proxy_reset", instance=victim.name)
            victim.proxy.reset()
            suspended = zk_state_after(scenario, victim, "SUSPENDED", reset, 5.0)
            connected = zk_state_after(scenario, victim, "CONNECTED", reset, 5.0)
            gaps.append(connected - suspended)
            scenario.wait_runs(
                lambda runs, since=connected: [
                    r for r in runs if r["instance"] == victim.name and r["start"] > since
                ],
                5.0,
                "a run of the victim after it reconnected",
            )
    events = [e for e in victim.events("zk_state") if e["t"] >= began]
    changes = samples.ownership_changes()
    scenario.figure(
        "r10_suspended_to_connected_s",
        [round(g, 3) for g in gaps],
        f"{[round(g, 3) for g in gaps]} s; events {[e['state'] for e in events]}; "
        f"ownership changes {sum(changes.values())}",
    )
    assert [e["state"] for e in events] == ["SUSPENDED", "CONNECTED"] * 3
    assert {i.name: i.session for i in scenario.instances} == sessions
    assert changes == {} and observer.claim_nodes() == before
    wait_for(lambda: observer.settled(3, 3), 5.0, "settled")
    scenario.check(lost_ok_between=[(began, time.time())])


# -- lost replies of the run marker writes (R10 with a reply lost in the broken connection) ----

MISFIRE_GRACE = 1.0  # WorkerConfig.misfire_grace_time's default


def lone_instance_via_proxy(scenario: Scenario, run_seconds: float = 0.1) -> Instance:
    """One instance owning the only shard, through its own proxy, with a run done already."""
    scenario.defaults.update(shards=1, run_seconds=run_seconds)
    victim = scenario.spawn(1, via_proxy=True)[0]
    scenario.observer.wait_settled(1, 1)
    scenario.wait_runs(lambda runs: [r for r in runs if r["end"]], 5.0, "a first run")
    return victim


@pytest.mark.timeout(60)
def test_r10_a_begin_whose_reply_was_lost_respects_the_misfire_grace(
    scenario: Scenario,
) -> None:
    """The reply to a run's begin (the marker transaction) is lost and the broken connection
    goes unnoticed for 1.5 s. Once reconnected, the run may start only if its fire time is
    still within the misfire grace; else the misfire policy (skip) drops it."""
    victim = lone_instance_via_proxy(scenario)
    assert victim.proxy is not None
    rule = victim.proxy.drop_next_reply(op="multi", reset_after=False)
    assert rule.wait(5.0), "no run began"
    swallowed = scenario.note("reply_swallowed", instance=victim.name)
    time.sleep(1.5)  # the fault: the connection is broken and nobody knows yet
    victim.proxy.reset()
    scenario.wait_runs(
        lambda runs: [r for r in runs if r["start"] > swallowed + 1.5 and r["end"]],
        5.0,
        "a run after the reconnect",
    )
    late = [
        r for r in scenario.runs() if not r["failover"] and r["start"] - r["fire"] > MISFIRE_GRACE
    ]
    scenario.figure(
        "r10_lost_begin_reply_lateness_s",
        [round(r["start"] - r["fire"], 3) for r in late],
        f"runs started beyond the misfire grace: "
        f"{[round(r['start'] - r['fire'], 3) for r in late]} s after their fire time",
    )
    assert late == [], "a run started beyond the misfire grace:\n" + scenario.runs_table(late)


@pytest.mark.timeout(60)
def test_r10_an_end_whose_reply_was_lost_does_not_cost_the_next_run(
    scenario: Scenario,
) -> None:
    """The reply to a run's end (the record's fenced write, a transaction) is lost with its
    connection. The write may have been applied: the next run's begin must not be refused for
    it (a lost fire)."""
    victim = lone_instance_via_proxy(scenario, run_seconds=0.5)
    assert victim.proxy is not None
    # A run in flight (it began: its transaction is answered): the next transaction is its end.
    scenario.wait_runs(
        lambda runs: [r for r in runs if r["end"] is None and time.time() - r["start"] < 0.2],
        5.0,
        "a run just begun",
    )
    rule = victim.proxy.drop_next_reply(op="multi")
    assert rule.wait(5.0), "no run ended"
    lost_at = scenario.note("end_reply_lost", instance=victim.name)
    scenario.wait_runs(
        lambda runs: len([r for r in runs if r["start"] > lost_at and r["end"]]) >= 2,
        6.0,
        "two runs after the lost reply",
    )
    log = victim.stderr_tail(200)
    assert "no longer holds the claim" not in log, log
    scenario.check(window=(lost_at - PERIOD, time.time() - PERIOD))
