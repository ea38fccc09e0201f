"""Helpers of scenarios R21-R24 on top of :mod:`.harness`: finding the instant to strike, and
reading what the history says happened after it.

- :func:`wait_until` waits for a condition but, unlike ``wait_for``, returns None at its
  deadline: for figures that a broken build may never produce (a fence that never comes), so
  the test still reports every trial before it fails.
- :func:`run_in_flight` finds a run of given instances that started within a time window.
- :func:`cut_when_quiet` partitions an instance at its worst instant: a run in flight, and its
  link quiet for a while (if it falls quiet), so that the server last heard from it well before
  the cut.
- :func:`first_health`, :func:`expiry_seen`, :func:`reregistered`: when an instance fenced
  itself, when the observer saw its session expire, when it came back with a new session.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .harness import Instance, Scenario, wait_for
from .proxy import PartitionMode

_T = TypeVar("_T")


def wait_until(
    predicate: Callable[[], _T | None], timeout: float, interval: float = 0.01
) -> _T | None:
    """Poll ``predicate`` until it is truthy and return its value; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def run_in_flight(
    runs: Sequence[dict[str, Any]],
    names: set[str],
    *,
    min_age: float = 0.0,
    max_age: float = 0.3,
    session: str | None = None,
) -> dict[str, Any] | None:
    """A scheduled (not failover) run of one of the instances ``names`` (of ``session``, if
    given) that has no end and started between ``max_age`` and ``min_age`` s ago."""
    now = time.time()
    for run in reversed(runs):
        if (
            run["instance"] in names
            and run["end"] is None
            and not run["failover"]
            and (session is None or run["session"] == session)
            and min_age <= now - run["start"] <= max_age
        ):
            found: dict[str, Any] = run
            return found
    return None


def cut_when_quiet(
    scenario: Scenario,
    victim: Instance,
    mode: PartitionMode,
    *,
    quiet: float,
    run_age: tuple[float, float],
    timeout: float,
) -> tuple[float, dict[str, Any], float]:
    """Partition ``victim`` (``mode``) while one of its runs is in flight: once the run is
    ``run_age[0]`` s old and the victim's link has carried nothing from it for ``quiet`` s -
    or, if the link never falls quiet that long, when the run is ``run_age[1]`` s old. Return
    ``(cut, run, seconds the link had been quiet)``.

    The server expires a session about T after it last *heard* from the client, and a client
    that counts a dead link's RST or EOF as "heard" restarts its fence timer only then: the
    longer the link was quiet before the cut, the more that mistake costs. A quiet link is the
    worst instant, and an honest one (kazoo pings only every T/3 or so when idle).
    """
    assert victim.proxy is not None
    proxy = victim.proxy
    session = victim.session
    run = scenario.wait_runs(
        lambda runs: run_in_flight(runs, {victim.name}, max_age=run_age[0], session=session),
        timeout,
        f"a fresh run of {victim.name} in flight",
    )
    while True:
        now = time.time()
        age, silence = now - run["start"], now - proxy.last_client_packet
        if (age >= run_age[0] and silence >= quiet) or age >= run_age[1]:
            return scenario.partition(victim, mode), run, silence
        time.sleep(0.002)


def first_health(
    scenario: Scenario, who: Instance, health: str, since: float, timeout: float
) -> dict[str, Any] | None:
    """``who``'s first ``health`` event reporting ``health`` at or after ``since`` (None if none
    came within ``timeout``)."""

    def found() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in scenario.history()
                if e["event"] == "health"
                and e["instance"] == who.name
                and e["health"] == health
                and e["t"] >= since
            ),
            None,
        )

    return wait_until(found, timeout)


def expiry_seen(scenario: Scenario, session: str, timeout: float) -> float:
    """Wait until the observer no longer sees ``session`` among the members; return when."""
    observer = scenario.observer
    wait_for(
        lambda: session not in observer.member_sessions(),
        timeout,
        f"session {session} expires",
        interval=0.002,
    )
    return time.time()


def reregistered(scenario: Scenario, who: Instance, old: str | None, timeout: float) -> str:
    """Wait until ``who`` registered a session other than ``old``, and reported GREEN on it;
    return the new session."""

    def new_green() -> str | None:
        history = scenario.history()
        sessions = [
            e["session"]
            for e in history
            if e["event"] == "registered" and e["instance"] == who.name and e["session"] != old
        ]
        if not sessions:
            return None
        green = [
            e
            for e in history
            if e["event"] == "health"
            and e["instance"] == who.name
            and e["health"] == "GREEN"
            and e.get("session") == sessions[-1]
        ]
        return sessions[-1] if green else None

    return wait_for(new_green, timeout, f"{who.name} GREEN on a new session", interval=0.02)


def events_of(
    history: Sequence[dict[str, Any]], kind: str, since: float = 0.0, **match: Any
) -> list[dict[str, Any]]:
    """Events of ``kind`` at or after ``since`` whose fields equal ``match``."""
    return [
        e
        for e in history
        if e.get("event") == kind
        and float(e.get("t", 0.0)) >= since
        and all(e.get(k) == v for k, v in match.items())
    ]


def summary(values: Sequence[float]) -> str:
    """``min .. median .. max`` of ``values`` (s, 3 decimals)."""
    if not values:
        return "-"
    return (
        f"min {min(values):.3f}, median {statistics.median(values):.3f}, "
        f"max {max(values):.3f} (n={len(values)})"
    )
