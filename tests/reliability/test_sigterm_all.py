"""Issue #4, item 5 (and #9, item 4): SIGTERM to every instance while their runs are in flight.

Every instance exits 0 within ``shutdown_timeout``, unregisters itself (its member node and
claims are gone at once, not at session expiry), and records every run it cut short as
interrupted in its run marker — so when the service starts again each of those fires is re-run
once, at once, with its original fire time (SPEC 4.3), and no other run is a failover.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .harness import Scenario

T = 2.0


@pytest.mark.timeout(60)
def test_sigterm_to_every_instance_during_runs_owes_each_cut_fire_to_the_restart(
    scenario: Scenario,
) -> None:
    shards, grace = 6, 3.0
    scenario.defaults.update(
        shards=shards, cron="@every 200ms", run_seconds=30.0, shutdown_timeout=grace
    )
    instances = scenario.spawn(3)
    scenario.observer.wait_settled(shards, 3)
    pids = {instance.pid for instance in instances}

    def all_in_flight(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        going = [r for r in runs if r["pid"] in pids and r["end"] is None]
        return going if {r["shard"] for r in going} == set(range(shards)) else None

    in_flight = scenario.wait_runs(all_in_flight, 10.0, "a run of every shard in flight")
    sent = scenario.note("sigterm", instance="all")
    for instance in instances:
        instance.sigterm()
    for instance in instances:
        assert instance.wait_exit(grace + 2.0) == 0, instance.stderr_tail()
    exited = time.time() - sent
    assert exited < grace, f"the instances took {exited:.2f} s to exit (grace {grace} s)"
    # Unregistered by themselves: nothing is left for a session expiry to clean up.
    assert scenario.observer.member_sessions(2.0) == set()
    assert scenario.observer.claims(2.0) == {}
    ended = {r["run_id"]: r for r in scenario.runs()}
    interrupted = [ended[r["run_id"]] for r in in_flight]
    assert all(r["outcome"] == "cancelled" for r in interrupted), interrupted

    # The service starts again: the first run of each shard re-runs the fire SIGTERM cut short.
    restarted = time.time()
    scenario.spawn(2)
    scenario.observer.wait_settled(shards, 2)

    def every_shard_again(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        later = [r for r in runs if r["start"] > restarted]
        return later if {r["shard"] for r in later} == set(range(shards)) else None

    again = scenario.wait_runs(every_shard_again, 10.0, "a run of every shard after the restart")
    firsts = {}
    for run in sorted(again, key=lambda r: r["start"]):
        firsts.setdefault(run["shard"], run)
    assert {s: (r["failover"], r["fire"]) for s, r in firsts.items()} == {
        r["shard"]: (True, r["fire"]) for r in interrupted
    }, "each shard's first run after the restart re-runs the fire SIGTERM cut short"
    # (Whoever takes a shard over from the first instance to restart — the second one, on
    # joining — re-runs that fire again if the hand-over cut it short too: the same fire.)
    owed = {r["shard"]: r["fire"] for r in interrupted}
    assert all(r["fire"] == owed[r["shard"]] for r in again if r["failover"]), again
    scenario.figure(
        "sigterm_all_exit_ms",
        round(exited * 1000, 1),
        f"SIGTERM to 3 instances with {len(in_flight)} runs in flight: all exited 0 within "
        f"{exited * 1000:.0f} ms (grace {grace:.0f} s); each cut fire re-run once after the "
        "restart",
    )
    scenario.check(cron_period=None)
