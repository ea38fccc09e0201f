"""An independent checker of a reliability run's history.

It shares no code with ``goworker_py`` on purpose: it judges the framework by what the handlers
recorded (``instance_main.py`` writes one JSON line per run start and end), not by what the
framework believes. A *run* here is a plain dict, as :meth:`Scenario.runs` pairs them::

    {"shard": 0, "instance": "i1", "pid": 4242, "session": "0x1000...", "token": 17,
     "fire": 1700000000.0, "start": 1700000000.01, "end": 1700000000.21 or None,
     "outcome": "ok" | "cancelled" | None, "failover": False, "run_id": "..."}

Times are ``time.time()`` of the one machine every process runs on.

:func:`check_history` returns a list of violations (empty when the history is sound); each rule
is documented there. :func:`check_fenced_writes` judges the fenced store's decisions.
:func:`check_overlaps` is rule 1 of :func:`check_history` alone, and
:func:`check_fires_completed` with :func:`fire_figures` judge hand-overs (R24): every fire a run
started completes exactly once somewhere.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Run = Mapping[str, Any]
Window = tuple[float, float]

#: Two instants closer than this are the same instant (the events are written by different
#: processes, each a few microseconds after the fact).
EPSILON = 0.002


def _label(run: Run) -> str:
    end = run.get("end")
    ended = f"{end:.3f}" if end is not None else "no end"
    return (
        f"[{run.get('instance')} pid {run.get('pid')} session {run.get('session')} "
        f"token {run.get('token')} fire {run.get('fire', 0.0):.3f} "
        f"start {run.get('start', 0.0):.3f} end {ended} outcome {run.get('outcome')}"
        f"{' failover' if run.get('failover') else ''}]"
    )


def _subtract(interval: Window, holes: Iterable[Window]) -> list[Window]:
    """``interval`` minus every hole (the times its process was frozen by ``SIGSTOP``)."""
    pieces = [interval]
    for h0, h1 in holes:
        cut: list[Window] = []
        for a, b in pieces:
            if h1 <= a or h0 >= b:
                cut.append((a, b))
                continue
            if a < h0:
                cut.append((a, h0))
            if h1 < b:
                cut.append((h1, b))
        pieces = cut
    return pieces


def _overlap(a: list[Window], b: list[Window]) -> float:
    total = 0.0
    for a0, a1 in a:
        for b0, b1 in b:
            total += max(0.0, min(a1, b1) - max(a0, b0))
    return total


def _in_windows(t: float, windows: Sequence[Window]) -> bool:
    return any(w0 - EPSILON <= t <= w1 + EPSILON for w0, w1 in windows)


def run_interval(run: Run, ended: Mapping[str, float] | None = None) -> Window:
    """When ``run`` was in flight: start to end; a run without an end lasted until its process
    died (``ended[instance]``), or, when nobody said it died, until the end of time."""
    end = run.get("end")
    if end is None:
        end = (ended or {}).get(str(run.get("instance")), math.inf)
    return float(run["start"]), float(end)


def superseded(run: Run, later: Iterable[Run]) -> bool:
    """``run`` ended only after a run of its shard with a larger fencing token had started.

    Whatever such a run did after that start, its fencing token no longer commits anything:
    like a run that was killed or cancelled, it counts as interrupted.
    """
    end = run.get("end")
    token = run.get("token") or 0
    return end is not None and any(
        other is not run
        and (other.get("token") or 0) > token
        and run["start"] < other["start"] < end - EPSILON
        for other in later
    )


def unrecorded(run: Run, cut_off: Mapping[str, Sequence[Window]] | None) -> bool:
    """``run`` ended while its instance was cut off from ZooKeeper (``cut_off[instance]`` or
    ``cut_off["*"]``): the record of its end could not reach ZooKeeper, so the next owner
    cannot tell it from a run interrupted mid-way."""
    end = run.get("end")
    if end is None or not cut_off:
        return False
    windows = [*cut_off.get(str(run.get("instance")), ()), *cut_off.get("*", ())]
    return any(w0 <= float(end) <= w1 for w0, w1 in windows)


def interrupted(
    run: Run, same_shard: Iterable[Run], cut_off: Mapping[str, Sequence[Window]] | None = None
) -> bool:
    """A run whose completion its shard's next owner cannot know of: it has no end (its
    process died or was never resumed), it ended cancelled, it was superseded (see
    :func:`superseded`), or it ended while cut off from ZooKeeper (see :func:`unrecorded`)."""
    return (
        run.get("end") is None
        or run.get("outcome") == "cancelled"
        or superseded(run, same_shard)
        or unrecorded(run, cut_off)
    )


def check_history(
    runs: Sequence[Run],
    *,
    shards: int | Iterable[int],
    cron_period: float | None = None,
    allow_failover_reruns: bool = True,
    misfire_policy: str = "skip",
    lost_ok_between: Sequence[Window] = (),
    window: Window | None = None,
    misfire_grace: float = 1.0,
    fire_tolerance: float = 0.05,
    fenced_overlap_tolerance: float = 0.0,
    ended: Mapping[str, float] | None = None,
    frozen: Mapping[str, Sequence[Window]] | None = None,
    cut_off: Mapping[str, Sequence[Window]] | None = None,
    require_rerun_of_interrupted: bool = False,
) -> list[str]:
    """Every way ``runs`` break the cluster's promises; ``[]`` when they keep them all.

    Rules, per shard:

    1. **One owner at a time.** No two runs of a shard are in flight at the same instant.
       A run's interval is start to end (a run without an end lasted until its process died:
       ``ended[instance]``, or forever). Time its process spent frozen by ``SIGSTOP``
       (``frozen[instance]``) does not count: a frozen process does nothing. One overlap is
       tolerated, up to ``fenced_overlap_tolerance`` seconds: when the earlier run was cut off
       by fencing - it ended cancelled, or its process was frozen during it - and the later
       run holds a larger fencing token (its effects win over the stale owner's).
    2. **No fire run twice.** Runs of one (shard, fire time) beyond the first are allowed only
       as failover re-runs (``failover`` true, ``allow_failover_reruns``) of an interrupted run
       (see :func:`interrupted`), each by a different session than the run it repeats. Failover
       is at-least-once: a run that completed while its instance was cut off from ZooKeeper
       (``cut_off[instance]`` or ``cut_off["*"]`` windows) could not record its end, and may be
       re-run too.
       (A failover run may also be the first run of its fire time: the previous owner began
       it in ZooKeeper but never started its handler - the reply was lost.) With
       ``require_rerun_of_interrupted``, every run its killed process left without an end
       (its instance in ``ended``) must be re-run exactly once (a chain of re-runs killed in
       turn is fine; a run still in flight on a live instance is not interrupted).
    3. **No lost fire.** With ``cron_period`` (a fixed-period schedule: cron every N seconds or
       ``@every``), consecutive fire times of a shard are ``cron_period`` apart; every expected
       fire time missing between them (and, with ``window=(t0, t1)``, from ``t0`` to ``t1``) is
       a lost fire, unless it falls in one of the ``lost_ok_between`` windows (an outage, a
       hand-over: the misfire policy decides what happens to those). With
       ``misfire_policy="skip"``, a fire time that passed while a run of the shard was still
       going (an overrun, such as a late catch-up after a hand-over) is skipped, not lost.
    4. **Misfire policy.** A run that starts more than ``misfire_grace`` after its fire time is
       a catch-up. With ``misfire_policy="skip"`` catch-ups happen only for fire times inside
       ``lost_ok_between`` windows (and failover re-runs, which repeat an old fire time by
       design). With ``"run_once"`` the fire times missed in one window are coalesced: at most
       one catch-up per shard and window.
    5. **Fencing tokens only grow.** In start-time order, every run has a token, a shard's
       tokens never decrease, and a run of a different session than the run before it has a
       strictly larger token (a new claim).

    ``shards`` is the shard count or the shard indexes expected to run; runs of other shards
    are violations too.
    """
    expected = set(range(shards)) if isinstance(shards, int) else set(shards)
    frozen = frozen or {}
    violations: list[str] = []
    by_shard: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_shard[int(run["shard"])].append(run)
    for shard in sorted(set(by_shard) - expected):
        violations.append(f"shard {shard}: runs of a shard that does not exist ({shards=})")
    for shard in sorted(by_shard):
        shard_runs = sorted(by_shard[shard], key=lambda r: float(r["start"]))
        violations += _check_overlaps(shard, shard_runs, ended, frozen, fenced_overlap_tolerance)
        violations += _check_duplicates(
            shard, shard_runs, allow_failover_reruns, require_rerun_of_interrupted, ended, cut_off
        )
        violations += _check_tokens(shard, shard_runs)
        violations += _check_lateness(
            shard, shard_runs, misfire_policy, misfire_grace, lost_ok_between
        )
    if cron_period:
        for shard in sorted(expected):
            overruns = (
                [run_interval(run, ended) for run in by_shard.get(shard, [])]
                if misfire_policy == "skip"
                else []
            )
            violations += _check_lost(
                shard,
                by_shard.get(shard, []),
                cron_period,
                fire_tolerance,
                [*lost_ok_between, *overruns],
                window,
            )
    return violations


def _check_overlaps(
    shard: int,
    runs: list[Run],
    ended: Mapping[str, float] | None,
    frozen: Mapping[str, Sequence[Window]],
    tolerance: float,
) -> list[str]:
    found: list[str] = []
    for i, earlier in enumerate(runs):
        span = run_interval(earlier, ended)
        live = _subtract(span, frozen.get(str(earlier.get("instance")), ()))
        for later in runs[i + 1 :]:
            if later["start"] >= span[1] - EPSILON:
                continue
            later_live = _subtract(
                run_interval(later, ended), frozen.get(str(later["instance"]), ())
            )
            overlap = _overlap(live, later_live)
            if overlap <= EPSILON:
                continue
            was_frozen = _overlap([span], list(frozen.get(str(earlier.get("instance")), ())))
            cut_off = earlier.get("outcome") == "cancelled" or was_frozen > 0
            if (
                cut_off
                and (later.get("token") or 0) > (earlier.get("token") or 0)
                and overlap <= tolerance + EPSILON
            ):
                continue
            found.append(
                f"shard {shard}: two runs in flight at once for {overlap:.3f} s: "
                f"{_label(earlier)} and {_label(later)}"
            )
    return found


def _fire_key(run: Run) -> float:
    return round(float(run["fire"]), 3)


def _check_duplicates(
    shard: int,
    runs: list[Run],
    allow_failover: bool,
    require_rerun: bool,
    ended: Mapping[str, float] | None,
    cut_off: Mapping[str, Sequence[Window]] | None,
) -> list[str]:
    found: list[str] = []
    by_fire: dict[float, list[Run]] = defaultdict(list)
    for run in runs:
        by_fire[_fire_key(run)].append(run)
    for fire, group in sorted(by_fire.items()):
        group.sort(key=lambda r: float(r["start"]))
        for index, run in enumerate(group):
            before = group[:index]
            if not before:
                continue
            if not allow_failover:
                found.append(f"shard {shard}: fire {fire:.3f} run again: {_label(run)}")
                continue
            previous = before[-1]
            if not run.get("failover") or not interrupted(previous, runs, cut_off):
                found.append(
                    f"shard {shard}: fire {fire:.3f} run twice: {_label(previous)} then "
                    f"{_label(run)} (only a failover re-run of an interrupted run may repeat it)"
                )
            elif previous.get("session") == run.get("session"):
                found.append(
                    f"shard {shard}: fire {fire:.3f} re-run by the session that ran it: "
                    f"{_label(run)}"
                )
        if require_rerun:
            found += _check_reruns(shard, group, ended or {})
    return found


def _check_reruns(shard: int, group: list[Run], ended: Mapping[str, float]) -> list[str]:
    """Each run killed in flight (no end, its instance in ``ended``) is re-run exactly once:
    the runs of its fire time after it, up to the next one killed, hold one failover run (a
    re-run may itself be killed and re-run: a chain)."""
    found: list[str] = []
    killed = [
        i for i, r in enumerate(group) if r.get("end") is None and str(r.get("instance")) in ended
    ]
    for position, index in enumerate(killed):
        stop = killed[position + 1] + 1 if position + 1 < len(killed) else len(group)
        reruns = [r for r in group[index + 1 : stop] if r.get("failover")]
        if len(reruns) != 1:
            found.append(
                f"shard {shard}: the run killed in flight {_label(group[index])} was re-run "
                f"{len(reruns)} times (expected once)"
            )
    return found


def _check_tokens(shard: int, runs: list[Run]) -> list[str]:
    found: list[str] = []
    previous: Run | None = None
    for run in runs:
        token = run.get("token")
        if token is None:
            found.append(f"shard {shard}: run without a fencing token: {_label(run)}")
            continue
        if previous is not None:
            before = int(previous["token"])
            if int(token) < before:
                found.append(
                    f"shard {shard}: fencing token decreased from {before} to {token}: "
                    f"{_label(previous)} then {_label(run)}"
                )
            elif int(token) == before and run.get("session") != previous.get("session"):
                found.append(
                    f"shard {shard}: two sessions ran with the same fencing token {token}: "
                    f"{_label(previous)} and {_label(run)}"
                )
        previous = run
    return found


def _check_lateness(
    shard: int, runs: list[Run], policy: str, grace: float, windows: Sequence[Window]
) -> list[str]:
    found: list[str] = []
    per_window: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        if run.get("failover"):
            continue  # repeats an old fire time by design
        late = float(run["start"]) - float(run["fire"])
        if late <= grace:
            continue
        hit = [
            i for i, (w0, w1) in enumerate(windows) if _in_windows(float(run["fire"]), [(w0, w1)])
        ]
        if policy == "run_once":
            for i in hit:
                per_window[i].append(run)
            if hit:
                continue
        if not hit:
            found.append(
                f"shard {shard}: run {late:.3f} s after its fire time (grace {grace} s, "
                f"outside every outage window): {_label(run)}"
            )
    for i, late_runs in sorted(per_window.items()):
        if len(late_runs) > 1:
            found.append(
                f"shard {shard}: {len(late_runs)} catch-up runs for the fire times missed in "
                f"window {windows[i][0]:.3f}..{windows[i][1]:.3f} (run_once coalesces them "
                f"into one): " + ", ".join(_label(r) for r in late_runs)
            )
    return found


def _check_lost(
    shard: int,
    runs: Sequence[Run],
    period: float,
    tolerance: float,
    windows: Sequence[Window],
    window: Window | None,
) -> list[str]:
    fires = sorted({_fire_key(run) for run in runs})
    missing: list[float] = []
    for a, b in itertools.pairwise(fires):
        gap = b - a
        if gap <= period + tolerance:
            continue
        count = round(gap / period) - 1
        missing += [a + period * k for k in range(1, count + 1)]
    if window is not None:
        t0, t1 = window
        if not fires:
            missing += [t0 + period * k for k in range(int((t1 - t0) / period))]
        else:
            first, last = fires[0], fires[-1]
            t = first - period
            while t >= t0 - tolerance:
                missing.append(t)
                t -= period
            t = last + period
            while t < t1 - tolerance:
                missing.append(t)
                t += period
    lost = [t for t in missing if not _in_windows(t, windows)]
    if not lost:
        return []
    shown = ", ".join(f"{t:.3f}" for t in sorted(lost)[:10])
    more = f" (+{len(lost) - 10} more)" if len(lost) > 10 else ""
    return [f"shard {shard}: {len(lost)} lost fire(s) at {shown}{more}"]


def check_fenced_writes(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Judge the fenced store's decisions from the ``fenced_write`` and ``start`` events.

    A write must be accepted if and only if its token is at least every token the store saw
    before for that shard. And a write accepted with a token smaller than the token of a run
    of its shard that had already *started* is a stale owner's side effect that got through
    (the new owner's start raced its first write): reported too.
    """
    found: list[str] = []
    seen: dict[int, int] = {}
    started: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for event in sorted(history, key=lambda e: float(e.get("t", 0.0))):
        kind = event.get("event")
        if kind == "start" and event.get("token") is not None:
            started[int(event["shard"])].append((float(event["t"]), int(event["token"])))
        if kind != "fenced_write":
            continue
        shard, token = int(event["shard"]), int(event["token"])
        highest = seen.get(shard, -1)
        should = token >= highest
        if bool(event["accepted"]) != should:
            found.append(
                f"shard {shard}: fenced store {'accepted' if event['accepted'] else 'rejected'} "
                f"token {token} with the highest seen {highest}: {dict(event)}"
            )
        if event["accepted"]:
            seen[shard] = max(highest, token)
            newer = [t for at, t in started[shard] if at < float(event["t"]) and t > token]
            if newer:
                found.append(
                    f"shard {shard}: stale write accepted: token {token} after a run with token "
                    f"{max(newer)} had started: {dict(event)}"
                )
    return found


def stale_writes(
    history: Sequence[Mapping[str, Any]], session: str, since: float = 0.0
) -> tuple[int, int]:
    """``(accepted, rejected)`` fenced writes made under ``session`` from ``since`` on (what a
    zombie - an owner that lost its session without noticing - got through, and what not)."""
    writes = [
        e
        for e in history
        if e.get("event") == "fenced_write"
        and e.get("session") == session
        and float(e.get("t", 0.0)) >= since
    ]
    accepted = sum(1 for e in writes if e["accepted"])
    return accepted, len(writes) - accepted


# -- hand-overs: every fire a run started completes once ---------------------------------------


def check_overlaps(
    runs: Sequence[Run],
    *,
    ended: Mapping[str, float] | None = None,
    frozen: Mapping[str, Sequence[Window]] | None = None,
    tolerance: float = 0.0,
) -> list[str]:
    """Rule 1 of :func:`check_history` alone: no two runs of a shard in flight at once
    (``ended``, ``frozen`` and ``tolerance`` as there: ``fenced_overlap_tolerance``)."""
    by_shard: dict[int, list[Run]] = defaultdict(list)
    for run in runs:
        by_shard[int(run["shard"])].append(run)
    found: list[str] = []
    for shard in sorted(by_shard):
        shard_runs = sorted(by_shard[shard], key=lambda r: float(r["start"]))
        found += _check_overlaps(shard, shard_runs, ended, frozen or {}, tolerance)
    return found


def _fires(runs: Sequence[Run], before: float | None) -> dict[tuple[int, float], list[Run]]:
    """``{(shard, fire time): its runs in start order}``, fire times before ``before`` only."""
    fires: dict[tuple[int, float], list[Run]] = defaultdict(list)
    for run in sorted(runs, key=lambda r: float(r["start"])):
        if before is None or float(run["fire"]) < before:
            fires[(int(run["shard"]), _fire_key(run))].append(run)
    return fires


def check_fires_completed(
    runs: Sequence[Run],
    *,
    before: float | None = None,
    cut_off: Mapping[str, Sequence[Window]] | None = None,
) -> list[str]:
    """Every fire a run started completes exactly once (SPEC 4.3: a hand-over never abandons a
    fire). Judged per (shard, fire time) that some run started, fire times before ``before``
    only (later ones may still be in flight):

    1. **No fire left incomplete.** One of its runs ended ``ok``. A run cancelled by a
       hand-over or a graceful stop, or one whose process died, must be re-run by the next
       owner until one completes.
    2. **No fire completed twice.** At most one of its runs ended ``ok``, except the documented
       at-least-once case: an ``ok`` run that ended while its instance was cut off from
       ZooKeeper (``cut_off[instance]`` or ``cut_off["*"]``, see :func:`unrecorded`) could not
       record its end, so the next owner may complete the fire again.
    """
    found: list[str] = []
    for (shard, fire), group in sorted(_fires(runs, before).items()):
        completed = [r for r in group if r.get("end") is not None and r.get("outcome") == "ok"]
        if not completed:
            found.append(
                f"shard {shard}: fire {fire:.3f} started {len(group)} time(s) and never "
                f"completed: " + ", ".join(_label(r) for r in group)
            )
            continue
        for earlier, later in itertools.pairwise(completed):
            if not unrecorded(earlier, cut_off):
                found.append(
                    f"shard {shard}: fire {fire:.3f} completed twice: {_label(earlier)} then "
                    f"{_label(later)}"
                )
    return found


@dataclass
class FireFigures:
    """What :func:`fire_figures` counted (fire times before its ``before`` only)."""

    #: (shard, fire time) pairs some run started.
    started: int = 0
    #: Of those, the ones no run completed (``ok``).
    incomplete: int = 0
    #: Runs beyond the first of their fire (re-runs after an interruption).
    reruns: int = 0
    #: Fires with more than one ``ok`` run.
    completed_twice: int = 0
    #: Hand-over latencies (s): for each run of a fire that an earlier run of it on another
    #: instance had left unfinished, that earlier run's end to this run's start.
    handover_latencies: list[float] = field(default_factory=list)


def fire_figures(runs: Sequence[Run], *, before: float | None = None) -> FireFigures:
    """Count fires started, left incomplete, re-run, completed twice, and hand-over latencies."""
    figures = FireFigures()
    for group in _fires(runs, before).values():
        figures.started += 1
        completed = sum(1 for r in group if r.get("end") is not None and r.get("outcome") == "ok")
        figures.incomplete += int(completed == 0)
        figures.completed_twice += int(completed > 1)
        figures.reruns += len(group) - 1
        for earlier, later in itertools.pairwise(group):
            end = earlier.get("end")
            if end is not None and earlier.get("instance") != later.get("instance"):
                figures.handover_latencies.append(float(later["start"]) - float(end))
    return figures
