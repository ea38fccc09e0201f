"""One shard's thread: waits for fire times and performs runs.

A :class:`ShardRunner` owns one shard of one worker. With a schedule it sleeps until each fire
time (interruptibly, against the wall clock, recomputed from the previous fire time so it never
drifts; woken with the other shards of the same instant by :mod:`goworker_py.chime`) and
performs one run per fire time; runs of one shard never overlap. A shard with nothing to do for
a while *parks*: its thread ends and the process-wide :data:`~goworker_py.alarm.ALARM` (or a
wake-up: trigger, resume, stop, an upstream's fire time) starts a fresh one that carries on
where the last left off. Its steps are a generator, which any thread may advance in turn, so an
idle shard costs no thread and no periodic wake-up. Fire times that pass while a run is still
going are *misfires*, handled by the worker's misfire policy: ``skip`` (default) drops them and
logs once, ``run_once`` runs once at once. Without a schedule it performs a single run.

A run is ``watch`` → ``before`` → ``do`` → ``after``, each step under the retry policy
(:class:`~goworker_py.retry.StepRetrier`); every error goes to ``error_message`` synchronously,
on this thread, in order.
"""

from __future__ import annotations

import math
import os
import random
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from goworker_py import aio
from goworker_py.alarm import ALARM, LEAD, WakeUp
from goworker_py.chime import CHIME, Place
from goworker_py.clock import SYSTEM_CLOCK
from goworker_py.flag import Bell, Flag
from goworker_py.handler import Context, Shard
from goworker_py.hooks import OBSERVERS
from goworker_py.perform import RunSteps
from goworker_py.run import (
    FENCE,
    HANDOVER,
    SHUTDOWN,
    STOP_RUN,
    RunControl,
    RunResult,
    RunSettings,
    RunTicket,
    ShardHost,
)
from goworker_py.schedule import IntervalSchedule

if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import TypeAlias

    from goworker_py.feed import UpstreamFeed

    #: What a shard's steps yield: park until a wall-clock time (a float) or until woken
    #: (None), or :data:`_NEED_THREAD`.
    Steps: TypeAlias = Generator[float | str | None, None, None]
    from goworker_py.schedule import Schedule

__all__ = [
    "MAX_SLEEP",
    "RunControl",
    "RunResult",
    "RunSettings",
    "RunTicket",
    "ShardHost",
    "ShardRunner",
]

#: Longest single sleep under an injected clock (tests): a parking shard never sleeps longer
#: than :data:`PARK_AFTER` on its own thread.
MAX_SLEEP = 30.0
#: A shard whose next fire time is further away than this parks: the alarm starts it again
#: :data:`~goworker_py.alarm.LEAD` before the fire time.
PARK_AFTER = 2 * LEAD
#: Yielded by a shard's steps: what comes next may block (or run handler code), so it must go
#: on on a thread of the shard's own, not on the thread that started or stopped it.
_NEED_THREAD = "need a thread"

#: Misfires counted one by one up to this many; beyond, the schedule restarts from now.
_MAX_MISFIRES_COUNTED = 10_000
#: Run ids: 64 random bits, drawn without a system call. ``os.urandom`` releases the GIL, and a
#: thread that gives the GIL up on its way to ``do`` waits behind every other thread woken at
#: the same instant (a run out of a peal draws its id at its start; see _prepare_run).
_RUN_IDS = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _RUN_IDS.seed(os.urandom(16)))
#: A prepared run's scheduled time until it begins.
_NOT_YET = datetime.fromtimestamp(0, timezone.utc)


class ShardRunner:
    """One shard of one worker: its steps, and the thread that advances them while needed."""

    def __init__(
        self,
        settings: RunSettings,
        shard_index: int,
        host: ShardHost,
        failover_fire: datetime | None = None,
        start_after: datetime | None = None,
    ) -> None:
        # At most 29 attributes: past that CPython gives every runner's __dict__ a key table
        # of its own, a KiB more per shard (a test in tests/test_worker_runs.py keeps count).
        self.settings = settings
        self.shard = Shard(shard_index, settings.total, settings.params_map.get(shard_index, ""))
        self.host = host
        self.logger = settings.logger.bind(shard=shard_index)
        self.result: RunResult | None = None
        self.runs = 0
        #: Cluster mode: the fire time of a run a dead owner left unfinished, re-run first.
        self.failover_fire = failover_fire
        #: Cluster mode: the last fire time the shard's previous owner handled.
        self.start_after = start_after
        #: Cluster mode: the host's claim of this shard.
        self.claim: Any = None
        #: What one run does: watch, before, do, after under the retry policy.
        self.steps = RunSteps(settings, self.shard, host, self.logger, self._steps_ended)
        self._finished = False
        self._skew = 0.0
        #: Set (under the lock) by stop() or drain(): no new run starts.
        self._stopping = False
        #: Set to interrupt the thread's sleep: stop, trigger or resume. Cleared before the
        #: thread looks at what there is to do (a wake-up that comes after the look ends the
        #: wait that follows).
        self._wake = Bell()
        self._triggered = False
        self._run_event: threading.Event | None = None
        #: Why the in-flight run was cancelled (the first reason given wins).
        self._cancel_cause: str | None = None
        #: Why the runner was stopped: a run starting after it is cancelled for that reason.
        self._stop_cause = SHUTDOWN
        #: Stopping, but a run in flight (or beginning right now) may finish: see drain().
        self._draining = False
        self._lock = threading.Lock()
        #: Park between fire times (never under an injected clock: tests count its waits).
        self._parking = settings.clock is SYSTEM_CLOCK
        self._steps: Steps | None = None
        #: The steps are advanced by a thread that did not start for them (start(), stop()):
        #: they ask for a thread of their own before anything that may block.
        self._inline = False
        #: The steps are parked: no thread advances them until the alarm or a wake-up.
        self._parked = False
        self._alarm: WakeUp | None = None
        #: The peal that woke the shard for the fire time it is about to run (or that it began,
        #: leading it), if one did.
        self._rung_in: Place | None = None
        #: When the in-flight run's steps ended, once they have (see _steps_ended).
        self._ended: float | None = None
        #: What the next run needs that can be made before its fire time (see _prepare_run).
        self._prepared: Context | None = None
        self._done = Flag()

    # -- control, from any thread -------------------------------------------------------------

    def start(self) -> None:
        """Start the shard: on the caller's thread up to its first wait, then on its own (or
        parked, when its first fire time is far away)."""
        self._steps = self._main()
        if self._parking:
            self._inline = True
            self._drive()
        else:
            self._spawn()

    def _spawn(self) -> None:
        self._inline = False
        thread = threading.Thread(
            target=self._drive,
            name=f"goworker:{self.settings.worker_name}:shard-{self.shard.index}",
            daemon=True,
        )
        thread.start()

    def _drive(self) -> None:
        """Advance the steps until they end, park, or ask for a thread of their own."""
        steps = self._steps
        assert steps is not None
        for request in steps:
            if isinstance(request, str):  # _NEED_THREAD
                self._spawn()
                return
            if self._park(request):
                return

    def _park(self, until: float | None) -> bool:
        """Give the thread up until wall-clock time ``until`` (None: until woken); False
        when a wake-up came meanwhile (the steps go on at once)."""
        with self._lock:
            if self._wake.is_set():
                return False
            self._parked = True
            if until is not None:
                self._alarm = ALARM.call_at(until, self._unpark)
        return True

    def _unpark(self, inline: bool = False) -> None:
        """Advance parked steps again: on a new thread, or (``inline``: stopping, when nothing
        can block any more) on the caller's."""
        with self._lock:
            if not self._parked:
                return
            self._parked = False
            if self._alarm is not None:
                self._alarm.cancel()
                self._alarm = None
        if inline:
            self._inline = True
            self._drive()
        else:
            self._spawn()

    def stop(self, cause: str = SHUTDOWN) -> None:
        """Ask the thread to stop: no new run starts; the in-flight run is cancelled.

        ``cause`` says why (``SHUTDOWN``, ``HANDOVER``...): the cancelled run is then
        *interrupted*, and its fire time is owed to the shard's next owner.
        """
        with self._lock:
            if not self._stopping:
                self._stop_cause = cause
            self._draining = False
            self._stopping = True
            self._wake.set()
            self._cancel(cause)
        self._unpark(inline=True)

    def drain(self) -> None:
        """Ask the thread to stop once the in-flight run, if any, has ended (a hand-over).

        No new run starts; the in-flight one goes on — as does one whose beginning was already
        under way — until it ends or :meth:`stop` cancels it.
        """
        with self._lock:
            if not self._stopping:
                self._stop_cause = HANDOVER
                self._draining = True
            self._stopping = True
            self._wake.set()
        self._unpark(inline=True)

    def _cancel(self, cause: str) -> bool:
        # Under self._lock.
        event = self._run_event
        if event is None:
            return False
        if not event.is_set():
            self._cancel_cause = cause
            event.set()
        return True

    def trigger(self) -> bool:
        """Ask for one extra run now (after the in-flight one, if any); False if not possible.

        Requests made while one is pending are merged into it.
        """
        settings = self.settings
        if (settings.schedule is None and settings.feed is None) or self._stopping:
            return False
        if self._finished:
            return False
        with self._lock:
            self._triggered = True
            self._wake.set()
        self._unpark()
        return True

    def wake(self) -> None:
        """Interrupt the shard's wait (the worker was resumed, an upstream fire time came).

        A shard parked until a fire time stays parked: nothing changes for it before then.
        """
        self._wake.set()
        if self._alarm is None:
            self._unpark()

    def cancel_run(self, cause: str = STOP_RUN) -> bool:
        """Cancel the in-flight run only (the shard keeps its schedule); False if none.

        An operator's ``STOP_RUN`` ends the run's fire for good; ``FENCE`` (self-fencing) owes
        it: this runner re-runs it once the instance is healthy again, if it still owns the
        shard. Callable from any thread; never blocks, never calls handler code.
        """
        with self._lock:
            return self._cancel(cause)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the shard's steps to end; return True if they did."""
        if self._steps is None:
            return True
        return self._done.wait(timeout)

    @property
    def alive(self) -> bool:
        """True from ``start()`` until the shard has left its run loop for good."""
        return self._steps is not None and not self._finished

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def abandon(self) -> None:
        """The worker gave up waiting for this thread: report its errors to the log only.

        ``error_message`` is never called after ``wait()`` returned (SPEC section 1).
        """
        self.steps.abandoned = True

    @property
    def failover_pending(self) -> bool:
        """True until the failover run (if any) has started."""
        return self.failover_fire is not None

    @property
    def in_run(self) -> bool:
        """True while a run is in flight: from its start until its steps have ended."""
        return self._run_event is not None

    # -- the thread ---------------------------------------------------------------------------

    def _main(self) -> Steps:
        try:
            if self.failover_fire is not None and (yield from self._hold_while_paused()):
                self.result = self.execute(self.failover_fire)
                yield from self._rerun_fenced()
                if self.settings.schedule is None and self.settings.feed is None:
                    return  # a run-once (consumer) shard: that was its run
            if self.settings.feed is not None:
                yield from self._fed_loop(self.settings.feed)
            elif self.settings.schedule is None:
                if (yield from self._hold_while_paused()):
                    self.result = self.execute(self._now())
                    yield from self._rerun_fenced()
            else:
                yield from self._scheduled_loop(self.settings.schedule)
        except BaseException as exc:  # noqa: BLE001 - a dying shard thread must be reported
            self.logger.opt(exception=exc).critical("shard thread crashed: {!r}", exc)
            self.result = RunResult(run_id="", ok=False, error=exc, failed_step="framework")
        finally:
            self._finished = True
            self.host.runner_exited(self)
            self._done.set()

    def _own_thread(self) -> Steps:
        """Before anything that may block or call handler code: go on on a thread of the
        shard's own if the steps are being advanced by another's (start(), stop())."""
        if self._inline:
            yield _NEED_THREAD

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.settings.clock.time(), timezone.utc).astimezone(
            self.settings.zone
        )

    def _rerun_fenced(self) -> Steps:
        """Re-run, once the instance is healthy again, a fire whose run self-fencing cut short.

        Only while this runner still owns the shard: after a lost session the shard's next
        owner re-runs it instead (the run marker still says ``running``).
        """
        while self.failover_fire is not None:
            if not (yield from self._hold_while_paused()) or not self.host.wait_ready(self):
                self.failover_fire = None
                return
            self.result = self.execute(self.failover_fire)

    def _scheduled_loop(self, schedule: Schedule) -> Steps:
        clock, grace = self.settings.clock, self.settings.misfire_grace
        real_time = isinstance(schedule, IntervalSchedule)
        self._skew = clock.time() - clock.monotonic()
        if self.start_after is not None:
            # Continue from the last fire time the shard's previous owner handled (or the
            # moment it first claimed the shard: an interval goes on on its grid).
            fire = self._after(schedule, self.start_after)
            if fire is not None and fire.timestamp() <= clock.time():
                fire = self._catch_up(schedule, fire, grace, "while the shard changed owner")
        else:
            fire = self._first_fire(schedule)
        while fire is not None:
            woke = yield from self._sleep_until(fire, real_time)
            if self._stopping or not self.host.wait_ready(self):
                break
            if woke is None:  # woken by trigger()
                self._run_triggered()
                continue
            reached, at = woke
            if self.settings.control.paused:
                self.logger.info("paused: no run for {}", reached.isoformat())
                self._misfired(1)
                self.host.skip_fire(self, reached)
                fire = schedule.next_after(reached)
                continue
            if clock.time() - at > grace:
                # Woken far too late: an outage (no run could start) or a stepped clock.
                due = self._catch_up(schedule, reached, grace, "while no run could start")
                if due is None or due.timestamp() > clock.time():
                    fire = due
                    continue
                reached = due
            self.execute(reached)
            if self.failover_fire is not None:  # cut short by self-fencing: owed
                yield from self._rerun_fenced()
            fire = self._next_fire(schedule, reached)
        if fire is None and not self._stopping:
            self.logger.info("schedule {!r} has no further fire time", schedule.expression)

    def _fed_loop(self, feed: UpstreamFeed) -> Steps:
        """A downstream worker's shard: run each fire time its upstreams completed."""
        index = self.shard.index
        feed.attach(index, self.wake)
        while True:
            self._wake.clear()
            if self._stopping:
                return
            if self._triggered:
                yield from self._own_thread()
                if self.host.wait_ready(self):
                    self._run_triggered()
                continue
            fire = feed.pop(index)
            if fire is None:
                if feed.closed:
                    return
                yield from self._wait(None)
                continue
            yield from self._own_thread()
            if not self.host.wait_ready(self):
                return
            if self.settings.control.paused:
                self.logger.info("paused: no run for {}", fire.isoformat())
                self._misfired(1)
                self.host.skip_fire(self, fire)
                continue
            self.result = self.execute(fire)
            yield from self._rerun_fenced()

    def _wait(self, until: float | None) -> Steps:
        """Wait for a wake-up or wall-clock time ``until`` (None: no time limit): parked when
        that is far away, else on the shard's thread (with the system clock, in the peal of
        ``until``: see :mod:`goworker_py.chime`; the next run's context is made first)."""
        self._rung_in = None
        if until is None:
            if self._parking:
                yield None
                return
            if self._inline:
                yield _NEED_THREAD
            self.settings.clock.wait(self._wake, MAX_SLEEP)
            return
        remaining = until - self.settings.clock.time()
        if self._parking and remaining > PARK_AFTER:
            yield until
            return
        if self._inline:  # as _own_thread(), without a generator on the path of every fire
            yield _NEED_THREAD
        if not self._parking:  # an injected clock (tests)
            self.settings.clock.wait(self._wake, min(remaining, MAX_SLEEP))
            return
        if self._prepared is None:
            self._prepared = self._prepare_run()
        place = CHIME.join(until, self._wake)
        if CHIME.sleep(place):
            self._rung_in = place

    def _first_fire(self, schedule: Schedule) -> datetime | None:
        """The first fire time; an interval counts from the worker's anchor (its start time;
        in cluster mode the Unix epoch).

        So every shard of a worker (and every worker of a group, every instance of a cluster
        service) fires ``@every`` at the same instants, however late its thread started.
        """
        return self._after(schedule, self._now())

    def _after(self, schedule: Schedule, after: datetime) -> datetime | None:
        """The fire time after ``after``; an interval's, on its anchor's grid."""
        anchor = self.settings.anchor
        if not isinstance(schedule, IntervalSchedule) or anchor is None or anchor > after:
            return schedule.next_after(after)
        periods = math.floor((after - anchor).total_seconds() / schedule.interval)
        fire = schedule.next_after(anchor + timedelta(seconds=schedule.interval * periods))
        while fire is not None and fire <= after:  # rounding put the grid point at ``after``
            fire = schedule.next_after(fire)
        return fire

    def _hold_while_paused(self) -> Generator[float | str | None, None, bool]:
        """Wait while the worker is paused; return False if the runner stopped meanwhile."""
        control = self.settings.control
        if control.paused:
            self.logger.info("paused: the run waits for resume()")
        while True:
            self._wake.clear()
            if self._stopping:
                return False
            if not control.paused:
                yield from self._own_thread()
                return True
            # resume() wakes every runner.
            yield from self._wait(None)

    def _run_triggered(self) -> None:
        self._rung_in = None  # a trigger is no fire time of the instant that woke the shard
        with self._lock:
            self._triggered = False
        if self.settings.control.paused:
            self.logger.info("paused: the triggered run is dropped")
            return
        self.execute(self._now(), triggered=True)

    def _sleep_until(
        self, fire: datetime, real_time: bool = False
    ) -> Generator[float | str | None, None, tuple[datetime, float] | None]:
        """Sleep until ``fire``; return the fire time reached and its timestamp, or None if
        stopped or triggered (a zoned datetime's ``timestamp()`` costs a shard of a herd
        microseconds: it is worked out once).

        Cron fire times are wall-clock instants. An interval (``@every``) counts real time, so
        when the wall clock is stepped (by more than a second) its fire time moves with it.
        """
        clock, target = self.settings.clock, fire.timestamp()
        rung = False
        while True:
            self._wake.clear()
            if self._stopping:
                return None
            if self._triggered:
                yield from self._own_thread()
                return None
            if rung:  # by the peal of ``target``: its instant has come (see _wait)
                return fire, target
            skew = clock.time() - clock.monotonic()
            if real_time and abs(skew - self._skew) > 1.0:
                target += skew - self._skew
                fire += timedelta(seconds=skew - self._skew)
            self._skew = skew
            if target - clock.time() <= 0:
                if self._inline:  # as _own_thread(), without a generator on every fire's path
                    yield _NEED_THREAD
                return fire, target
            yield from self._wait(target)
            # A cron fire time is reached when its peal rings; an interval's still checks the
            # clock for a step.
            rung = self._rung_in is not None and not real_time

    def _next_fire(self, schedule: Schedule, previous: datetime) -> datetime | None:
        """The fire time after ``previous``; fire times the run overran are misfires."""
        upcoming = schedule.next_after(previous)
        if upcoming is None or upcoming.timestamp() > self.settings.clock.time():
            return upcoming
        return self._catch_up(schedule, upcoming, 0.0, "while the previous run was going")

    def _catch_up(
        self, schedule: Schedule, first_missed: datetime, grace: float, why: str
    ) -> datetime | None:
        """Apply the misfire policy to the fire times from ``first_missed`` up to now.

        Returns the fire time to run at once (the latest missed one: when it is less than
        ``grace`` seconds late, or with the ``run_once`` policy) or else the next future one.
        """
        now = self.settings.clock.time()
        latest: datetime | None = first_missed
        missed, upcoming = 0, schedule.next_after(first_missed)
        while upcoming is not None and upcoming.timestamp() <= now:
            missed, latest = missed + 1, upcoming
            if missed >= _MAX_MISFIRES_COUNTED:
                latest = upcoming = schedule.next_after(self._now())
                break
            upcoming = schedule.next_after(upcoming)
        if latest is not None and now - latest.timestamp() < grace:
            if missed:
                self._misfired(missed)
                self.logger.warning("skipped {} fire time(s) {}", missed, why)
            return latest
        if self.settings.misfire_policy == "run_once" and latest is not None:
            if missed:
                self._misfired(missed)
            self.logger.warning(
                "missed {} fire time(s) {}; running once now for {}",
                missed + 1,
                why,
                latest.isoformat(),
            )
            return latest
        self._misfired(missed + 1)
        self.logger.warning(
            "skipped {} fire time(s) {}, up to {}; next at {}",
            missed + 1,
            why,
            latest.isoformat() if latest else "?",
            upcoming.isoformat() if upcoming else "never",
        )
        return upcoming

    # -- one run ------------------------------------------------------------------------------

    def execute(self, fire_time: datetime, triggered: bool = False) -> RunResult:
        """Perform one run for ``fire_time`` on the calling thread."""
        settings = self.settings
        ctx, self._prepared = self._prepared or self._prepare_run(), None
        run_id, event = ctx.run_id, ctx.event
        ticket = self.host.begin_run(self, fire_time, run_id)
        # A failover run owed for this fire time starts now, or cannot start here at all.
        self.failover_fire = None
        if ticket is None:
            return RunResult(run_id="", ok=False, cancelled=True)
        with self._lock:
            self._cancel_cause = None
            self._run_event = event
            if self._stopping and not self._draining:
                self._cancel(self._stop_cause)
        ctx._begin(
            ticket.scheduled_time or fire_time,
            self.host.instance_for(self.shard.index),
            ticket.fencing_token,
            ticket.is_failover,
            triggered,
            ticket.lease,
        )
        started = settings.clock.time()
        raised = False
        try:
            result = self.steps.perform(ctx)
        except BaseException:
            result, raised = RunResult(run_id=run_id, ok=False), True
            raise
        finally:
            ended = self._ended
            if ended is None:
                # perform did not call _steps_ended: a step failed, the run was cancelled
                # before its first step, or something raised (then no waiting in a peal).
                if raised:
                    self._rung_in = None
                ended = self._steps_ended()
            self._ended = None
            with self._lock:
                self._run_event = None
                if result.cancelled:
                    result.cause = self._cancel_cause or (FENCE if ctx.lapsed else None)
            self.runs += 1
            self.host.end_run(self, ctx, result)
            # The run's one line, at TRACE (formatted only if written): after the peal, as
            # the rest of the bookkeeping.
            ctx.logger.trace(
                "run for {} {} ({:.1f} ms)", ctx.scheduled_time, result, (ended - started) * 1e3
            )
            for observer in OBSERVERS:
                try:
                    observer.run_finished(settings.worker_name, ctx, result, started, ended)
                except Exception as exc:  # noqa: BLE001 - an observer must not break the shard
                    self.logger.opt(exception=exc).error("run observer raised {!r}", exc)
        if result.cause == FENCE and not self._stopping:
            self.failover_fire = ctx.scheduled_time  # owed: see _rerun_fenced
        if result.ok:
            for listener in settings.listeners:
                try:
                    listener(self.shard.index, ctx.scheduled_time)
                except Exception as exc:  # noqa: BLE001 - never let a listener break the shard
                    self.logger.opt(exception=exc).error("run listener raised {!r}", exc)
        return result

    def _steps_ended(self) -> float:
        """The in-flight run's steps have ended (perform's cue, before it makes the run's
        result): note when, and wait at the end of the peal that woke the shard, if one did,
        until it has woken every shard of its instant (a stop or a trigger ends the wait). The
        rest of the run's bookkeeping — the host's record of the run included — can wait; the
        shards still to be rung cannot (see :mod:`goworker_py.chime`)."""
        ended = self._ended = self.settings.clock.time()
        # Nothing left to cancel: a _cancel racing this may still set the run's event, harmless
        # (the outcome is decided).
        self._run_event = None
        rung_in, self._rung_in = self._rung_in, None
        if rung_in is not None:
            CHIME.follow(rung_in)
        return ended

    def _prepare_run(self) -> Context:
        """The next run's context but for what only its start tells (``Context._begin``):
        made before the shard sleeps in a peal, so the path from its wake-up to ``do`` does
        not (the shards behind it wait)."""
        run_id, settings = f"{_RUN_IDS.getrandbits(64):016x}", self.settings
        return Context(
            run_id=run_id,
            scheduled_time=_NOT_YET,
            shard=self.shard,
            params=settings.params,
            instance=self.host.instance_for(self.shard.index),
            logger=self.logger.bind(run=run_id),
            # An async step's task is cancelled the moment the event is set.
            event=aio.RunEvent(),
            clock=settings.clock,
            worker_name=settings.worker_name,
        )

    def _misfired(self, count: int) -> None:
        for observer in OBSERVERS:
            observer.misfired(self.settings.worker_name, count)

    def notify_watch(self) -> None:
        """Call the handler's ``watch`` on this thread's behalf (membership or shards changed)."""
        self.steps.notify_watch(self.host.instance_for(self.shard.index))
