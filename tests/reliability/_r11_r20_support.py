"""Helpers of scenarios R11-R20 on top of :mod:`.harness` (which they never change).

- :func:`poll` waits for a condition tightly (2 ms) and says *when* it first held, for latencies
  measured from the outside, through ZooKeeper (the harness's ``wait_for`` polls every 10 ms).
- :func:`shards_of`, :func:`instance_events`: views of claims and of one process's history (two
  processes of R15 share an instance name, so they are told apart by pid).
- :func:`settled_sample` and :func:`converged_at` judge the observer's claim samples;
  :func:`owner_conflicts` holds them against the history: whoever runs a shard must hold its
  claim, at every sampled instant.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .harness import ClaimSample, Instance, Scenario

_T = TypeVar("_T")


def poll(
    predicate: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.002
) -> tuple[_T, float]:
    """Wait until ``predicate()`` is truthy; return its value and the ``time.time()`` just
    before the call that saw it (so a latency is never shortened by the read's duration)."""
    deadline = time.monotonic() + timeout
    while True:
        at = time.time()
        value = predicate()
        if value:
            return value, at
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


def shards_of(claims: dict[int, str], session: str | None) -> list[int]:
    """The shards ``session`` holds in ``claims`` (``{shard: session}``)."""
    return sorted(shard for shard, owner in claims.items() if owner == session)


def instance_events(
    scenario: Scenario, instance: Instance, kind: str | None = None
) -> list[dict[str, Any]]:
    """``instance``'s events, told apart from a namesake process by its pid."""
    return [
        e
        for e in scenario.history()
        if e.get("pid") == instance.pid and (kind is None or e.get("event") == kind)
    ]


def sessions_of(scenario: Scenario, instance: Instance) -> list[str]:
    """Every session ``instance`` (this process) registered, in order."""
    return [e["session"] for e in instance_events(scenario, instance, "registered")]


def settled_sample(sample: ClaimSample, shards: int, members: int) -> bool:
    """``sample`` shows ``members`` members sharing every shard evenly (loads differ by at most
    one, members without a shard included), each claim held by a member."""
    if len(sample.members) != members or sorted(sample.claims) != list(range(shards)):
        return False
    loads = dict.fromkeys(sample.members, 0)
    for session in sample.claims.values():
        if session not in loads:
            return False
        loads[session] += 1
    return max(loads.values()) - min(loads.values()) <= 1


def converged_at(
    samples: Sequence[ClaimSample], since: float, shards: int, members: int
) -> float | None:
    """The first sample time from ``since`` on after which every sample is settled, or None."""
    first: float | None = None
    for sample in samples:
        if sample.t < since:
            continue
        if settled_sample(sample, shards, members):
            if first is None:
                first = sample.t
        else:
            first = None
    return first


def owner_conflicts(
    samples: Iterable[ClaimSample], runs: Sequence[dict[str, Any]], margin: float = 0.05
) -> tuple[list[str], int]:
    """Instants where a run was in flight while its session did not hold the shard's claim,
    and how many (sample, run in flight) pairs were checked.

    A sample reads the claims a few ms after its time ``t``; a run counts only if it was in
    flight from ``t - margin`` to ``t + margin``. Its claim then had to be its own: another
    session's claim means two owners at once, no claim means a run without an owner.
    """
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: float(r["start"])):
        by_shard.setdefault(int(run["shard"]), []).append(run)
    starts = {shard: [float(r["start"]) for r in group] for shard, group in by_shard.items()}
    found: list[str] = []
    checked = 0
    for sample in samples:
        for shard, group in by_shard.items():
            # Runs of a shard do not overlap (the checker's rule 1): only the last few runs
            # that started early enough can be in flight at this instant.
            last = bisect.bisect_right(starts[shard], sample.t - margin)
            for run in group[max(0, last - 3) : last]:
                end = run["end"] if run["end"] is not None else float("inf")
                if end < sample.t + margin:
                    continue
                checked += 1
                holder = sample.claims.get(shard)
                if holder != run["session"]:
                    found.append(
                        f"t={sample.t:.3f}: shard {shard} run by {run['instance']} "
                        f"(session {run['session']}, {run['start']:.3f}..{end:.3f}) while "
                        f"{'nobody' if holder is None else holder} held its claim"
                    )
    return found, checked
