"""R11-R14: operating a cluster — rolling restarts, membership churn, a GIL-hogging handler, and
a handler that ignores cancellation on a shard that must move.

Setup (RELIABILITY.md): a private ZooKeeper (tick 100 ms), worker *processes* running
``instance_main.py``, session timeout T = 2 s. Every process appends to one history that the
independent checker judges at the end; latencies are measured from the outside, through an
observer of ZooKeeper with a client of its own.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from typing import Any

import pytest

from goworker_py import (
    Context,
    DiscoveryConfig,
    ExitReason,
    Handler,
    Model,
    Worker,
    WorkerConfig,
)

from ._r11_r20_support import (
    converged_at,
    owner_conflicts,
    poll,
    sessions_of,
    shards_of,
)
from .checker import stale_writes
from .harness import Instance, Scenario

T = 2.0
PERIOD = 1.0


# -- R11 ------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_r11_rolling_restart_with_sigterm_loses_and_doubles_no_fire(scenario: Scenario) -> None:
    """R11: restart all three instances one after the other with a clean SIGTERM.

    Each stop moves exactly the stopping instance's shards, through the clean path (the peers
    hold its claims within milliseconds, not after a session timeout); its replacement joins
    before the next stop. Across the whole restart every per-second fire of every shard
    completes exactly once: no fire lost (each new owner continues from the last fire its
    predecessor handled), none completed twice; a run the stop cut short is re-run once, at
    once, by the shard's new owner with its fire time (SPEC 4.3), and no other run is.
    """
    shards = 6
    scenario.defaults.update(shards=shards, cron="* * * * * *", run_seconds=0.1)
    originals = scenario.spawn(3)
    observer = scenario.observer
    observer.wait_settled(shards, 3)
    began = time.time()
    latencies: list[float] = []
    exits: list[float] = []
    for old in originals:
        before = observer.claims()
        session = old.session
        assert session is not None
        leaving = shards_of(before, session)
        assert leaving, f"{old.name} owned no shard before its stop: {before}"

        def handed_over(old_session: str = session) -> dict[int, str] | None:
            claims = observer.owned(shards)
            return claims if claims and old_session not in claims.values() else None

        sent = scenario.note("sigterm", instance=old.name)
        old.sigterm()
        after, held = poll(handed_over, 3 * T, f"the peers of {old.name} hold its shards")
        latencies.append(held - sent)
        assert old.wait_exit(10.0) == 0, old.stderr_tail()
        exits.append(time.time() - sent)
        moved = sorted(s for s in range(shards) if after[s] != before[s])
        assert moved == leaving, f"stopping {old.name} moved {moved}, it owned {leaving}"
        scenario.spawn(1)
        observer.wait_settled(shards, 3)
        # Let the new line-up serve a fire of every shard before the next stop.
        settled = time.time()
        scenario.wait_runs(
            lambda runs, since=settled: (
                {r["shard"] for r in runs if r["start"] > since} == set(range(shards))
            ),
            2 * PERIOD + 1.0,
            "a run of every shard after the hand-over",
        )
    # Every fire up to the last full second must have run: wait until it has.
    ended = time.time()
    scenario.wait_runs(
        lambda runs: all(
            any(r["shard"] == s and r["fire"] >= ended - PERIOD for r in runs)
            for s in range(shards)
        ),
        3.0,
        "a run of every shard after the restart",
    )
    runs = scenario.check(window=(began, ended - PERIOD))
    cut_short = {(r["shard"], r["fire"]) for r in runs if r["outcome"] == "cancelled"}
    reruns = [(r["shard"], r["fire"]) for r in runs if r["failover"]]
    assert sorted(reruns) == sorted(cut_short), "re-runs are exactly the fires cut short"
    completed = [(r["shard"], r["fire"]) for r in runs if r["outcome"] == "ok"]
    assert len(completed) == len(set(completed)), "a fire completed twice"
    assert cut_short <= set(completed), "a fire cut short was never completed"
    cancelled = len(cut_short)
    scenario.figure(
        "r11_takeover_ms",
        [round(x * 1000, 1) for x in latencies],
        f"per-stop takeover (SIGTERM -> peers hold the claims) "
        f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms "
        f"(target <= 100 ms: {'met' if max(latencies) <= 0.1 else 'MISSED'}); "
        f"SIGTERM -> exit {', '.join(f'{x * 1000:.0f}' for x in exits)} ms; "
        f"{len(runs)} runs, {cancelled} cut short by a stop and re-run once, none lost or "
        "completed twice",
    )
    scenario.figure("r11_takeover_max_ms", round(max(latencies) * 1000, 1))
    # The clean path takes milliseconds; the unclean one would take a session timeout.
    assert max(latencies) < T / 4, f"a clean hand-over took {max(latencies):.3f} s"


# -- R12 ------------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_r12_membership_churn_storm_never_has_two_owners(scenario: Scenario) -> None:
    """R12: 20 seeded random joins and clean leaves in about 10 s, 1 to 4 live instances.

    An observer samples the claims every 5 ms throughout; at no sampled instant does a run go
    on without its session holding the shard's claim (two owners, or a run without one), and
    no claim outlives its member. The history passes the checker. After the last event the
    cluster converges (every shard claimed, loads even, exactly the live instances as members).
    """
    shards = 4
    rng = random.Random(20_12)
    scenario.defaults.update(shards=shards, cron="@every 500ms", run_seconds=0.3)
    scenario.spawn(2)
    observer = scenario.observer
    observer.wait_settled(shards, 2)
    joined: list[Instance] = []
    left: list[tuple[Instance, float]] = []
    plan: list[str] = []
    began = time.time()
    with observer.sample_claims(0.005) as samples:
        live_count = 2
        for _ in range(20):
            # The plan (joins, leaves, victims, pace) depends on the seed alone.
            join = live_count == 1 or (live_count < 4 and rng.random() < 0.5)
            if join:
                joined += scenario.spawn(1, wait=False)
                scenario.note("join", instance=joined[-1].name)
                live_count += 1
                plan.append("+")
            else:
                leaving = {i.name for i, _ in left}
                live = sorted(
                    (i for i in scenario.instances if i.alive and i.name not in leaving),
                    key=lambda i: int(i.name[1:]),
                )
                victim = rng.choice(live)
                # Its signal handler is installed once it has registered.
                scenario.wait_registered(victim, 20.0)
                left.append((victim, scenario.note("sigterm", instance=victim.name)))
                victim.sigterm()
                live_count -= 1
                plan.append("-")
            time.sleep(rng.uniform(0.25, 0.75))  # the fault is the pace of the storm
        storm = time.time() - began
        for instance in joined:
            if instance not in [i for i, _ in left]:
                scenario.wait_registered(instance, 20.0)
        for instance, _ in left:
            assert instance.wait_exit(10.0) == 0, instance.stderr_tail()
        live = [i for i in scenario.instances if i.alive]
        registrations = [
            min(e["t"] for e in i.events("registered")) for i in joined if i.events("registered")
        ]
        last_event = max([t for _, t in left] + registrations)
        settled = observer.wait_settled(shards, len(live), 10.0)
        # Keep sampling the settled cluster until there is enough to check (however slowly a
        # busy machine lets the sampler run).
        poll(
            lambda: (
                len(samples.samples) > 500
                and owner_conflicts(samples.samples, scenario.runs())[1] > 500
            ),
            30.0,
            "over 500 samples and 500 sampled (instant, run in flight) pairs",
            interval=0.1,
        )
    converged = converged_at(samples.samples, last_event, shards, len(live))
    assert converged is not None, "the samples never show a settled cluster after the storm"
    convergence = converged - last_event
    runs = scenario.runs()
    conflicts, checked = owner_conflicts(samples.samples, runs)
    orphans = samples.orphans()
    assert len(samples.samples) > 500 and checked > 500, (len(samples.samples), checked)
    assert set(settled.values()) == {i.session for i in live}
    scenario.figure(
        "r12_convergence_ms",
        round(convergence * 1000, 1),
        f"{convergence * 1000:.0f} ms after the last event (target 500 ms + debounce, no "
        f"debounce configured); storm {''.join(plan)} in {storm:.1f} s, "
        f"{len(samples.samples)} samples ({checked} instants a run was in flight, each "
        f"checked against its claim), {len(runs)} runs, "
        f"{sum(samples.ownership_changes().values())} ownership changes",
    )
    scenario.figure("r12_owner_conflicts", len(conflicts))
    assert not conflicts, "two owners (or none) while a run was in flight:\n" + "\n".join(
        conflicts[:20]
    )
    assert not orphans, f"claims held by non-members: {orphans[:10]}"
    scenario.check()
    assert convergence <= 1.0, f"converged {convergence:.3f} s after the last event"


# -- R13 ------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_r13_gil_hog_outlives_its_session_and_is_fenced(scenario: Scenario) -> None:
    """R13: a handler holds the GIL for 2T in one C call (a big-int ``pow``).

    The process cannot ping, so the server expires its session: the peer takes the shard over
    (a failover re-run, with a larger fencing token). When the call returns, the zombie learns
    its session is LOST, fences itself (a warning in its log), starts no run under the old
    session and re-registers; every fenced write it makes after the hog is rejected.
    """
    scenario.defaults.update(shards=2, cron="* * * * * *", run_seconds=0.3)
    peer = scenario.spawn(1, fence_dir=True)[0]
    scenario.observer.wait_settled(2, 1)
    # 2T is asked for 3T: the harness calibrates its hog with a short wall-clock probe, which
    # under-shoots when the probe shares the CPUs (2.1 s for 4 s seen). What matters is that
    # the hog outlives the session, checked below on the hog's real duration.
    hog = scenario.spawn(1, fence_dir=True, gil_hog=3 * T)[0]
    old_session = hog.session

    def hog_phase(phase: str) -> Any:
        return lambda history: next(
            (
                e
                for e in history
                if e["event"] == "gil_hog" and e["instance"] == hog.name and e["phase"] == phase
            ),
            None,
        )

    began = scenario.wait_history(hog_phase("begin"), 10.0, "the hog's first run")
    hog_shard = int(began["shard"])
    ended = scenario.wait_history(hog_phase("end"), 6 * T, "the end of the GIL hog")
    hog_span = (float(began["t"]), float(ended["t"]))
    hogged = hog_span[1] - hog_span[0]
    assert hogged >= T + 0.5, f"the hog lasted {hogged:.2f} s: too short to outlive the session"

    def detected(history: list[dict[str, Any]]) -> float | None:
        times = [
            float(e["t"])  # for zk_state: when kazoo reported it
            for e in history
            if e["instance"] == hog.name
            and float(e["t"]) >= hog_span[1]
            and (
                (e["event"] == "zk_state" and e["state"] == "LOST")
                or (e["event"] == "health" and e["health"] == "RED")
            )
        ]
        return min(times) if times else None

    lost_at = scenario.wait_history(detected, 5.0, "the zombie notices its session is lost")
    detection = max(lost_at - hog_span[1], 0.0)
    scenario.wait_history(
        lambda h: len(sessions_of(scenario, hog)) >= 2, 10.0, "the zombie re-registers"
    )
    # The peer took the shard over while the hog ran: a failover re-run with a larger token.
    takeover = [
        r
        for r in scenario.runs()
        if r["shard"] == hog_shard and r["instance"] == peer.name and r["start"] > hog_span[0]
    ]
    assert takeover and takeover[0]["failover"], "no failover re-run on the peer"
    assert takeover[0]["start"] < hog_span[1], "the peer took over only after the hog"
    scenario.wait_history(
        lambda h: any(
            e["event"] == "end" and e["session"] == old_session and e["t"] > hog_span[1] for e in h
        ),
        5.0,
        "the zombie's hogged run ends",
    )
    scenario.observer.wait_settled(2, 2)
    history = scenario.history()
    zombie_starts = [
        e
        for e in history
        if e["event"] == "start" and e["session"] == old_session and e["t"] > hog_span[1]
    ]
    assert zombie_starts == [], f"the zombie started runs after the hog: {zombie_starts}"
    accepted, rejected = stale_writes(history, old_session or "", since=hog_span[1])
    warnings = [line for line in hog.stderr_tail(400).splitlines() if "self-fencing (" in line]
    scenario.figure(
        "r13_detection_ms",
        round(detection * 1000, 1),
        f"hog of {hog_span[1] - hog_span[0]:.2f} s; LOST/RED {detection * 1000:.0f} ms after "
        f"it; peer's failover run {takeover[0]['start'] - hog_span[0]:.2f} s into it; zombie "
        f"fenced writes after the hog: {accepted} accepted, {rejected} rejected",
    )
    scenario.figure("r13_fenced_writes_rejected", rejected)
    scenario.figure("r13_fenced_writes_accepted", accepted)
    assert warnings, "no self-fencing warning in the zombie's log:\n" + hog.stderr_tail()
    assert accepted == 0, f"{accepted} fenced write(s) of the zombie got through"
    assert rejected >= 1, "the zombie's run made no (rejected) fenced write after the hog"
    assert detection <= 1.0, f"the loss was noticed {detection:.3f} s after the hog"
    scenario.check(
        frozen={hog.name: [hog_span]},
        fenced_overlap_tolerance=1.0,
        lost_ok_between=[(hog_span[0] - PERIOD, takeover[0]["start"] + PERIOD)],
    )


# -- R14 ------------------------------------------------------------------------------------------

_STUCK = re.compile(r"shard (\d+) is stuck: its handler ignored cancellation for ([\d.]+) s")


@pytest.mark.timeout(90)
def test_r14_handler_ignoring_cancellation_holds_its_shard_and_is_reported(
    scenario: Scenario,
) -> None:
    """R14: a shard whose handler ignores cancellation must move to a newcomer.

    Instance ``slow`` ignores cancellation (4 s runs back to back); ``peer`` is cooperative.
    When ``new`` joins, one shard moves from each. The cooperative shard moves at once; the
    stuck one stays claimed by ``slow`` while its run goes on — never two runs at once. Its run
    may finish first (the hand-over timeout, by default the ``shutdown_timeout`` = 1 s), is then
    cancelled, and reported as stuck in ``slow``'s log once the grace (``shutdown_timeout``) is
    over too. It moves when its run finally ends.
    """
    shards = 6
    scenario.defaults.update(
        shards=shards, cron="* * * * * *", run_seconds=0.2, misfire_policy="run_once"
    )
    peer = scenario.spawn(1, name="peer")[0]
    observer = scenario.observer
    observer.wait_settled(shards, 1)
    slow = scenario.spawn(
        1, name="slow", ignore_cancel=True, run_seconds=4.0, shutdown_timeout=1.0
    )[0]
    claims = observer.wait_settled(shards, 2)
    slow_shards = shards_of(claims, slow.session)
    peer_shards = shards_of(claims, peer.session)
    # The sticky strategy gives a newcomer the highest shard of each most-loaded member.
    stuck_shard, moving_shard = max(slow_shards), max(peer_shards)
    # A fresh run: the newcomer then joins with most of its 4 s still to go.
    scenario.wait_runs(
        lambda runs: any(
            r["instance"] == slow.name
            and r["shard"] == stuck_shard
            and r["end"] is None
            and time.time() - r["start"] < 0.5
            for r in runs
        ),
        6.0,
        "a fresh run of the shard that will be stuck",
    )
    with observer.sample_claims(0.01) as samples:
        new = scenario.spawn(1, name="new")[0]
        joined = float(new.events("registered")[0]["t"])
        _, moved_at = poll(
            lambda: observer.claims().get(moving_shard) == new.session,
            5.0,
            f"shard {moving_shard} on the newcomer",
        )
        match, reported_at = poll(
            lambda: _STUCK.search(slow.stderr_tail(200)), 5.0, "the stuck shard reported"
        )
        stuck_end = scenario.wait_history(
            lambda h: next(
                (
                    e
                    for e in h
                    if e["event"] == "end"
                    and e["instance"] == slow.name
                    and e["shard"] == stuck_shard
                    and e["t"] > joined
                ),
                None,
            ),
            6.0,
            "the stuck run ends",
        )
        _, stuck_moved_at = poll(
            lambda: observer.claims().get(stuck_shard) == new.session,
            5.0,
            f"shard {stuck_shard} on the newcomer",
        )
    assert int(match.group(1)) == stuck_shard, match.group(0)
    waited = float(match.group(2))
    # Until its run ended, the stuck shard's claim stayed with slow.
    held_by = {
        s.claims.get(stuck_shard) for s in samples.samples if s.read_at < float(stuck_end["t"])
    }
    assert held_by <= {slow.session}, f"the stuck shard was claimed by {held_by} during its run"
    first_new = scenario.wait_runs(
        lambda runs: min(
            (r["start"] for r in runs if r["shard"] == stuck_shard and r["instance"] == new.name),
            default=None,
        ),
        2 * PERIOD + 1.0,
        "the newcomer's first run of the stuck shard",
    )
    assert first_new >= float(stuck_end["t"]), "the newcomer ran the stuck shard too early"
    unaffected = set(slow_shards) - {stuck_shard}
    assert {s for s in unaffected if observer.claims().get(s) == slow.session} == unaffected
    report = reported_at - joined
    scenario.figure(
        "r14_time_to_report_s",
        round(report, 3),
        f"stuck shard {stuck_shard} reported {report:.2f} s after the newcomer joined (hand-over "
        f"1 s + grace 1 s; the log says it ignored cancellation {waited:.1f} s); cooperative "
        f"shard {moving_shard} moved "
        f"in {(moved_at - joined) * 1000:.0f} ms; the stuck one moved "
        f"{stuck_moved_at - float(stuck_end['t']):.3f} s after its run ended",
    )
    assert moved_at - joined < 1.0, "the cooperative shard did not move at once"
    assert waited >= 1.0 and report < 1.0 + 1.0 + 1.0, f"reported after {report:.2f} s"
    scenario.check(cron_period=None)


@pytest.mark.timeout(60)
def test_r14_stuck_handler_keeps_its_shard_through_a_graceful_stop(zk_hosts: str) -> None:
    """R14, the other way a shard must move: its owner stops gracefully (``cancel()``, as on
    SIGTERM) while the shard's handler ignores cancellation.

    ``wait()`` returns after ``shutdown_timeout`` and reports the handler (SPEC section 2), but
    the shard must not be run elsewhere while that handler is still running — the same rule as
    a stuck shard in a re-balance: never two runs of a shard at once. In-process, because there
    the abandoned handler thread lives on after ``wait()`` returned, as in any application that
    does not exit right away (a process that exits ends the overlap within milliseconds).
    """
    lock = threading.Lock()
    runs: list[dict[str, Any]] = []
    release = threading.Event()
    stuck_id = ""

    class IgnoresCancellation(Handler):
        def do(self, ctx: Context) -> None:
            record = {"instance": ctx.instance.id, "start": time.time(), "end": None}
            with lock:
                runs.append(record)
            if ctx.instance.id == stuck_id:
                release.wait(20)  # ignores ctx.cancelled
            else:
                ctx.wait(0.05)
            with lock:
                record["end"] = time.time()

    def worker() -> Worker:
        return Worker(
            IgnoresCancellation,
            config=WorkerConfig(
                discovery=DiscoveryConfig(hosts=zk_hosts, session_timeout=T, connect_timeout=10),
                shutdown_timeout=0.5,
            ),
            cron="* * * * * *",
            model=Model.CLUSTER,
            service_name="r14-stop",
            sharding_total_count=1,
            handle_signals=False,
        )

    stuck, peer = worker(), worker()
    try:
        stuck.run()
        stuck_id = stuck.host.instance.id
        peer.run()  # a standby: one shard, and the stuck instance holds it
        poll(lambda: any(r["instance"] == stuck_id for r in list(runs)), 5.0, "the stuck run")
        stuck.cancel()
        assert stuck.wait(timeout=5) is ExitReason.CANCELLED
        returned = time.time()

        def peer_started() -> bool:
            with lock:
                return any(r["instance"] != stuck_id for r in runs)

        # While the stuck handler still runs (it is only released below), the peer must not
        # start the shard: wait two session timeouts for it to (wrongly) do so.
        deadline = time.monotonic() + 2 * T
        while not peer_started() and time.monotonic() < deadline:
            time.sleep(0.01)
        with lock:
            early = [r for r in runs if r["instance"] != stuck_id]
        assert not early, (
            f"the peer started the shard {early[0]['start'] - returned:.3f} s after wait() "
            "returned, while the stuck handler was still running"
        )
        release.set()
        poll(peer_started, 3 * T, "the peer runs the shard once the stuck handler returned")
    finally:
        release.set()
        for each in (stuck, peer):
            each.cancel()
        for each in (stuck, peer):
            with contextlib.suppress(Exception):
                each.wait(timeout=10)
