"""The checker itself, on synthetic histories: it must catch every kind of violation.

A checker that passes everything proves nothing, so each rule is shown to fire on a history
that breaks it, and to stay quiet on the legitimate look-alike (a failover re-run, a fenced
overlap, a frozen zombie, an excused outage).
"""

from __future__ import annotations

from typing import Any

import pytest

from .checker import (
    check_fenced_writes,
    check_fires_completed,
    check_history,
    check_overlaps,
    fire_figures,
    stale_writes,
)
from .harness import Scenario, percentile, period_of

pytestmark = pytest.mark.timeout(30)

T0 = 1_700_000_000.0


def run(
    shard: int = 0,
    instance: str = "a",
    fire: float = 0.0,
    start: float | None = None,
    end: float | None = 0.0,
    *,
    token: int | None = 10,
    session: str | None = None,
    outcome: str | None = "ok",
    failover: bool = False,
) -> dict[str, Any]:
    """A run, times relative to ``T0``; ``end=None`` means no end (killed)."""
    begin = fire if start is None else start
    return {
        "shard": shard,
        "instance": instance,
        "pid": hash(instance) % 10_000,
        "session": session or f"0x{instance}",
        "token": token,
        "fire": T0 + fire,
        "start": T0 + begin + 0.001,
        "end": None if end is None else T0 + (end or begin + 0.2),
        "outcome": outcome if end is not None else None,
        "failover": failover,
        "run_id": f"{instance}-{shard}-{fire}-{begin}",
    }


def steady(shard: int, instance: str, fires: range, token: int = 10) -> list[dict[str, Any]]:
    return [run(shard, instance, float(f), token=token) for f in fires]


def test_a_sound_history_passes() -> None:
    runs = steady(0, "a", range(10)) + steady(1, "b", range(10), token=11)
    assert check_history(runs, shards=2, cron_period=1.0) == []


def test_catches_two_owners_overlapping() -> None:
    runs = [run(0, "a", 0.0, end=1.5, token=10), run(0, "b", 1.0, end=1.2, token=12)]
    violations = check_history(runs, shards=1)
    assert len(violations) == 1 and "two runs in flight at once" in violations[0]


def test_catches_an_overlap_with_a_run_that_never_ended() -> None:
    killed = run(0, "a", 0.0, end=None, token=10)
    later = run(0, "b", 0.0, start=2.0, end=2.5, token=12, failover=True)
    # Nobody said "a" died: its run is still in flight when "b" starts.
    assert any("in flight at once" in v for v in check_history([killed, later], shards=1))
    # "a" was killed at T0 + 0.5: no overlap, and the failover repeats an interrupted run.
    assert check_history([killed, later], shards=1, ended={"a": T0 + 0.5}) == []


def test_a_fenced_overlap_is_tolerated_only_within_the_tolerance() -> None:
    cancelled = run(0, "a", 0.0, end=1.2, token=10, outcome="cancelled")
    newer = run(0, "b", 0.0, start=1.0, end=1.5, token=12, failover=True)
    assert check_history([cancelled, newer], shards=1, fenced_overlap_tolerance=0.3) == []
    assert check_history([cancelled, newer], shards=1, fenced_overlap_tolerance=0.1)
    # Not cancelled (the earlier owner went on as if nothing happened): always a violation.
    completed = run(0, "a", 0.0, end=1.2, token=10, outcome="ok")
    later = run(0, "b", 1.0, end=1.5, token=12)
    assert check_history([completed, later], shards=1, fenced_overlap_tolerance=0.3)
    # A smaller token on the later run cannot be excused either.
    stale = run(0, "b", 0.0, start=1.0, end=1.5, token=9, failover=True)
    assert check_history([cancelled, stale], shards=1, fenced_overlap_tolerance=0.3)


def test_a_frozen_zombie_overlaps_only_after_it_thaws() -> None:
    zombie = run(0, "a", 0.0, end=3.52, token=10, outcome="ok")
    taker = run(0, "b", 0.0, start=2.3, end=2.9, token=12, failover=True)
    frozen = {"a": [(T0 + 0.3, T0 + 3.5)]}
    assert check_history([zombie, taker], shards=1, frozen=frozen) == []
    # Without the freeze, the zombie's run overlaps the new owner's.
    assert check_history([zombie, taker], shards=1)


def test_catches_a_fire_run_twice() -> None:
    runs = [run(0, "a", 1.0, token=10), run(0, "b", 1.0, start=1.5, end=1.7, token=12)]
    violations = check_history(runs, shards=1)
    assert any("run twice" in v for v in violations), violations


def test_catches_a_failover_rerun_of_a_run_that_completed() -> None:
    runs = [
        run(0, "a", 1.0, token=10),
        run(0, "b", 1.0, start=3.0, end=3.2, token=12, failover=True),
    ]
    violations = check_history(runs, shards=1)
    assert len(violations) == 1 and "run twice" in violations[0], violations
    # The first run of its fire time may be a failover run (the original never started).
    assert check_history([runs[1]], shards=1) == []


def test_a_failover_rerun_of_an_interrupted_run_is_fine_but_only_once() -> None:
    killed = run(0, "a", 1.0, end=None, token=10)
    rerun = run(0, "b", 1.0, start=3.2, end=3.4, token=12, failover=True)
    again = run(0, "c", 1.0, start=5.2, end=5.4, token=14, failover=True)
    ended = {"a": T0 + 1.5}
    assert check_history([killed, rerun], shards=1, ended=ended) == []
    assert (
        check_history([killed, rerun], shards=1, ended=ended, require_rerun_of_interrupted=True)
        == []
    )
    twice = check_history(
        [killed, rerun, again], shards=1, ended=ended, require_rerun_of_interrupted=True
    )
    assert any("re-run 2 times" in v for v in twice), twice
    never = check_history([killed], shards=1, ended=ended, require_rerun_of_interrupted=True)
    assert any("re-run 0 times" in v for v in never), never
    # A run still in flight on a live instance is not interrupted.
    assert check_history([killed], shards=1, ended={}, require_rerun_of_interrupted=True) == []
    # A chain: the re-run is killed in turn and re-run once more.
    killed_rerun = run(0, "b", 1.0, start=3.2, end=None, token=12, failover=True)
    third = run(0, "c", 1.0, start=5.5, end=5.7, token=14, failover=True)
    chain = [killed, killed_rerun, third]
    ended_both = {"a": T0 + 1.5, "b": T0 + 3.4}
    assert check_history(chain, shards=1, ended=ended_both, require_rerun_of_interrupted=True) == []
    assert check_history([killed, rerun], shards=1, ended=ended, allow_failover_reruns=False)


def test_a_run_that_ended_while_cut_off_may_be_rerun_at_least_once() -> None:
    """Its end could not be recorded: the next owner cannot tell it from an interrupted run."""
    completed = run(0, "a", 1.0, end=1.2, token=10)
    rerun = run(0, "b", 1.0, start=3.1, end=3.3, token=12, failover=True)
    assert check_history([completed, rerun], shards=1)
    assert check_history([completed, rerun], shards=1, cut_off={"a": [(T0 + 1.1, T0 + 3.5)]}) == []
    assert check_history([completed, rerun], shards=1, cut_off={"*": [(T0 + 1.1, T0 + 3.5)]}) == []
    # Cut off only after its end was recorded: the re-run is a duplicate.
    assert check_history([completed, rerun], shards=1, cut_off={"a": [(T0 + 1.3, T0 + 3.5)]})


def test_catches_a_lost_fire() -> None:
    runs = [run(0, "a", float(f)) for f in (0, 1, 2, 4, 5)]
    violations = check_history(runs, shards=1, cron_period=1.0)
    assert len(violations) == 1 and "1 lost fire(s)" in violations[0], violations
    # Inside an excused window (an outage), the misfire policy may drop it.
    assert (
        check_history(runs, shards=1, cron_period=1.0, lost_ok_between=[(T0 + 2.5, T0 + 3.5)]) == []
    )


def test_a_fire_time_that_passes_while_the_previous_run_goes_on_is_skipped_not_lost() -> None:
    # A catch-up after a hand-over started 0.3 s late and overran the next fire time: the skip
    # policy drops that fire (SPEC: fire times that pass while a run is still going).
    runs = [run(0, "a", 0.0), run(0, "b", 1.0, 1.3, 2.1, token=11), run(0, "b", 3.0, token=11)]
    assert check_history(runs, shards=1, cron_period=1.0) == []
    # run_once runs it right after the overrun, so a missing one is lost; so is a fire time
    # that passed while no run was going, and one whose run was killed before it.
    violations = check_history(runs, shards=1, cron_period=1.0, misfire_policy="run_once")
    assert any("1 lost fire(s) at" in v for v in violations), violations
    ended = [run(0, "a", 0.0), run(0, "b", 1.0, 1.3, 1.9, token=11), run(0, "b", 3.0, token=11)]
    assert any("1 lost fire(s)" in v for v in check_history(ended, shards=1, cron_period=1.0))
    killed = [run(0, "a", 0.0), run(0, "b", 1.0, 1.3, None, token=11), run(0, "c", 3.0, token=12)]
    violations = check_history(killed, shards=1, cron_period=1.0, ended={"b": T0 + 1.5})
    assert any("1 lost fire(s)" in v for v in violations), violations


def test_catches_lost_fires_at_the_window_edges_and_a_shard_that_never_ran() -> None:
    runs = [run(0, "a", float(f)) for f in (2, 3, 4)]
    violations = check_history(runs, shards=2, cron_period=1.0, window=(T0 + 0.0, T0 + 6.0))
    assert any("shard 0: 3 lost" in v for v in violations), violations
    assert any("shard 1: 6 lost" in v for v in violations), violations


def test_catches_a_decreasing_fencing_token() -> None:
    runs = [run(0, "a", 0.0, token=20), run(0, "b", 1.0, token=15)]
    violations = check_history(runs, shards=1)
    assert any("fencing token decreased from 20 to 15" in v for v in violations), violations


def test_catches_a_new_owner_reusing_the_old_token_and_a_missing_token() -> None:
    same = [run(0, "a", 0.0, token=20), run(0, "b", 1.0, token=20)]
    assert any("same fencing token" in v for v in check_history(same, shards=1))
    missing = [run(0, "a", 0.0, token=None)]
    assert any("without a fencing token" in v for v in check_history(missing, shards=1))


def test_catches_a_run_of_a_shard_that_does_not_exist() -> None:
    assert any("does not exist" in v for v in check_history([run(5, "a", 0.0)], shards=2))


def test_misfire_policy_skip_allows_no_late_run_outside_an_outage() -> None:
    late = run(0, "a", 1.0, start=3.0, end=3.1)
    assert any("after its fire time" in v for v in check_history([late], shards=1))
    assert check_history([late], shards=1, lost_ok_between=[(T0 + 0.5, T0 + 3.0)]) == []


def test_misfire_policy_run_once_coalesces_an_outage_into_one_catch_up() -> None:
    window = [(T0 + 0.5, T0 + 5.0)]
    one = [run(0, "a", 0.0), run(0, "a", 4.0, start=5.1, end=5.2), run(0, "a", 5.0, start=5.3)]
    assert check_history(one, shards=1, misfire_policy="run_once", lost_ok_between=window) == []
    two = [run(0, "a", 3.0, start=5.1, end=5.2), run(0, "a", 4.0, start=5.3, end=5.4)]
    violations = check_history(two, shards=1, misfire_policy="run_once", lost_ok_between=window)
    assert any("2 catch-up runs" in v for v in violations), violations


def test_fenced_writes_are_judged() -> None:
    def write(t: float, token: int, accepted: bool, session: str = "0xa") -> dict[str, Any]:
        return {
            "event": "fenced_write",
            "t": T0 + t,
            "shard": 0,
            "token": token,
            "accepted": accepted,
            "session": session,
        }

    good = [write(0.0, 10, True), write(1.0, 12, True, "0xb"), write(2.0, 10, False)]
    assert check_fenced_writes(good) == []
    assert stale_writes(good, "0xa") == (1, 1)
    assert stale_writes(good, "0xa", since=T0 + 1.5) == (0, 1)
    wrong = [write(0.0, 12, True), write(1.0, 10, True)]
    assert any("accepted token 10" in v for v in check_fenced_writes(wrong))
    # A stale write that got through because the new owner had not written yet.
    raced = [
        {"event": "start", "t": T0 + 0.5, "shard": 0, "token": 12},
        write(0.0, 10, True),
        write(0.6, 10, True),
    ]
    assert any("stale write accepted" in v for v in check_fenced_writes(raced))


def test_check_overlaps_is_rule_one_alone() -> None:
    overlapping = [run(0, "a", 0.0, end=1.5, token=10), run(0, "b", 1.0, end=1.2, token=12)]
    violations = check_overlaps(overlapping)
    assert len(violations) == 1 and "two runs in flight at once" in violations[0]
    # What rule 1 allows it allows: a frozen zombie, a fenced overlap within the tolerance.
    zombie = run(0, "a", 0.0, end=3.52, token=10, outcome="ok")
    taker = run(0, "b", 0.0, start=2.3, end=2.9, token=12, failover=True)
    assert check_overlaps([zombie, taker], frozen={"a": [(T0 + 0.3, T0 + 3.5)]}) == []
    cancelled = run(0, "a", 0.0, end=1.2, token=10, outcome="cancelled")
    newer = run(0, "b", 0.0, start=1.0, end=1.5, token=12, failover=True)
    assert check_overlaps([cancelled, newer], tolerance=0.3) == []
    assert check_overlaps([cancelled, newer])
    # Other rules are not its business: a fire run twice, one after the other, is no overlap.
    assert check_overlaps([run(0, "a", 1.0), run(0, "b", 1.0, start=1.5, end=1.7)]) == []


def test_a_fire_cancelled_by_a_hand_over_and_rerun_elsewhere_is_complete() -> None:
    cancelled = run(0, "a", 1.0, end=1.1, token=10, outcome="cancelled")
    rerun = run(0, "b", 1.0, start=1.15, end=1.4, token=12, failover=True)
    runs = [run(0, "a", 0.0), cancelled, rerun, run(0, "b", 2.0, token=12)]
    assert check_fires_completed(runs) == []
    figures = fire_figures(runs)
    assert (figures.started, figures.incomplete, figures.reruns, figures.completed_twice) == (
        3,
        0,
        1,
        0,
    )
    assert figures.handover_latencies == [pytest.approx(0.051, abs=1e-6)]  # starts are +1 ms


def test_catches_fires_left_incomplete() -> None:
    cancelled = run(0, "a", 1.0, end=1.1, token=10, outcome="cancelled")
    killed = run(1, "a", 1.0, end=None, token=11)
    retried = [
        run(2, "a", 1.0, end=1.1, token=13, outcome="cancelled"),
        run(2, "b", 1.0, start=1.2, end=1.3, token=14, outcome="cancelled", failover=True),
    ]
    runs = [run(0, "b", 2.0, token=12), cancelled, killed, *retried]
    violations = check_fires_completed(runs)
    assert len(violations) == 3, violations
    assert all("never completed" in v for v in violations)
    assert any("shard 2: fire" in v and "started 2 time(s)" in v for v in violations)
    figures = fire_figures(runs)
    assert (figures.started, figures.incomplete, figures.reruns) == (4, 3, 1)
    # Fire times from ``before`` on are not judged (their runs may still be going).
    assert check_fires_completed(runs, before=T0 + 1.0) == []
    assert fire_figures(runs, before=T0 + 1.0).started == 0


def test_catches_a_fire_completed_twice_except_after_a_run_ended_cut_off() -> None:
    first = run(0, "a", 1.0, end=1.2, token=10)
    again = run(0, "b", 1.0, start=3.1, end=3.3, token=12, failover=True)
    violations = check_fires_completed([first, again])
    assert len(violations) == 1 and "completed twice" in violations[0], violations
    assert fire_figures([first, again]).completed_twice == 1
    # At-least-once: the first run ended while its instance was cut off from ZooKeeper.
    assert check_fires_completed([first, again], cut_off={"a": [(T0 + 1.1, T0 + 3.5)]}) == []
    assert check_fires_completed([first, again], cut_off={"*": [(T0 + 1.1, T0 + 3.5)]}) == []
    # Cut off only after its end: that end was recorded, the second completion is a duplicate.
    assert check_fires_completed([first, again], cut_off={"a": [(T0 + 1.3, T0 + 3.5)]})


def test_pairing_runs_from_events() -> None:
    common = {"shard": 1, "instance": "i1", "pid": 7, "session": "0x1", "token": 3}
    history = [
        {"event": "start", "run_id": "r1", "t": T0, "fire": T0, "failover": False, **common},
        {"event": "health", "instance": "i1", "t": T0, "health": "GREEN"},
        {
            "event": "start",
            "run_id": "r2",
            "t": T0 + 1,
            "fire": T0 + 1,
            "failover": False,
            **common,
        },
        {"event": "end", "run_id": "r1", "t": T0 + 0.5, "outcome": "ok", **common},
    ]
    runs = Scenario.pair_runs(history)
    assert [(r["run_id"], r["end"], r["outcome"]) for r in runs] == [
        ("r1", T0 + 0.5, "ok"),
        ("r2", None, None),
    ]


def test_small_helpers() -> None:
    assert period_of("* * * * * *") == 1.0
    assert period_of("@every 200ms") == pytest.approx(0.2)
    assert period_of("*/2 * * * * *") == 2.0
    assert period_of("0 0 * * *") is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
