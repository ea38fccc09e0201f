"""The chime: shards firing at the same instant are woken one after the other, not all at once.

A thousand jobs on ``* * * * * *`` fire in the same second. Were each shard's thread to sleep on
a timer of its own, the kernel would wake all thousand at the fire time and they would race for
the GIL: every thread waiting for it wakes every switch interval (5 ms) to ask for it again, so
a herd costs far more than the sum of its runs, and the last run starts late.

Instead a shard about to sleep until a fire time joins that instant's *peal* here. The first
to join *leads* it: it sleeps until the instant on a timer of its own, and on waking begins the
peal by waking one other shard of it (the last to join: the order does not matter); each woken
shard, first thing, wakes the next one before it goes on to its run. Every other shard sleeps on
its own event with no timer but a late one (below). At any moment one shard thread runs and one
more is waking up behind it: the GIL changes hands once per shard, and the herd's lateness is
the sum of its runs' paths.

What a shard does once its run's steps have ended (making its result, the host's record of the
run, telling observers and listeners, computing its next fire time) would hold the GIL ahead of
the shards still to be rung: a shard whose instant still rings waits at the end of the peal
instead (:meth:`Chime.follow`), rung in turn after the last shard of the instant. The runs of
an instant start first; the bookkeeping follows.

Nor may a shard's path to its run leave objects alive behind it: CPython starts a garbage
collection once the objects made exceed those freed by ``gc.get_threshold()[0]`` (700 by
default), and a thousand shards each leaving one would start one inside the herd, holding up
every shard behind it (and the objects young at that moment move to an older generation, on
their way to the oldest, whose collection takes tens of milliseconds). A run's context is made
before its shard sleeps, and what the run itself made is let go before it waits at the peal's
end: while a peal rings its shards free more objects than they make (the next runs' contexts are
made with the bookkeeping, after it).

A shard that leaves its sleep for another reason (stop, trigger, resume) leaves the peal; one
woken by the peal always passes it on, whatever woke it, so a peal never stops half-way. A
leader that leaves before its instant hands the instant to the chime's own thread, which then
times it (on a :class:`~goworker_py.flag.Bell`, re-reading the wall clock on every wake) and
begins the peal; the thread ends once it has held no instant for :data:`_LINGER` seconds, so a
process whose peals all have their leaders runs none. A shard's sleep also has a timeout of its
own, :data:`SLACK` after the instant: should the peal ever not reach it, the shard fires late
instead of never.

Timeouts are measured on the monotonic clock and instants are wall-clock times: a leader whose
timer ends while the wall clock is still short of the instant sleeps on. Shards park when their
next fire time is more than :data:`~goworker_py.runner.PARK_AFTER` away, so a peal is only ever
joined a few seconds ahead and a stepped clock is noticed that soon.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time

from loguru import logger

from goworker_py.flag import Bell

__all__ = ["CHIME", "SLACK", "Chime", "Place"]

#: A shard waiting in a peal wakes on its own this long after the instant (it never should).
SLACK = 1.0
#: The chime's thread ends after this many seconds without an instant to wait for (a worker
#: firing every second keeps it alive; one whose shards all parked lets it go).
_LINGER = 2.0


class Place:
    """A shard's place in an instant's peal (returned by :meth:`Chime.join`)."""

    __slots__ = ("at", "due", "event", "key", "leads", "rung")

    def __init__(
        self, at: float, event: threading.Event, key: int, due: float, leads: bool = False
    ) -> None:
        self.at = at
        self.event = event
        self.key = key
        #: When the waiter stops waiting on its own: the instant itself for the peal's
        #: leader, else ``SLACK`` after the instant (or after :meth:`Chime.follow`).
        self.due = due
        #: The first place of the peal: it sleeps until the instant on its own timer and
        #: begins the peal itself (see :meth:`Chime.sleep`).
        self.leads = leads
        #: The peal reached this place: its event is set by the peal just after this is (a
        #: leader's is not: it begins the peal when it wakes on its own).
        self.rung = False


class _Peal:
    """The places of one instant: those waiting for it, then those waiting for it to end."""

    __slots__ = ("chimed", "leader", "places", "tail")

    def __init__(self, leader: Place) -> None:
        #: The place that times the instant on its own timer, until it leaves.
        self.leader: Place | None = leader
        #: The chime's thread is to begin the peal (its leader left before the instant).
        self.chimed = False
        #: Places waiting for the instant, in order of joining (rung last first).
        self.places: dict[int, Place] = {leader.key: leader}
        #: Places of shards whose run of this instant is over: rung once every place has
        #: been (see :meth:`Chime.follow`).
        self.tail: dict[int, Place] = {}


class Chime:
    """Wakes the shards waiting for one wall-clock instant one after the other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Each instant's peal, from its first join until it has rung every place.
        self._peals: dict[float, _Peal] = {}
        #: Instants the chime's thread begins the peal of (their leaders left early).
        self._heap: list[float] = []
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._signal = Bell()
        #: How many places woke on their own (:data:`SLACK` after the instant) instead of by
        #: their peal: always 0 unless something is wrong (for tests and diagnostics).
        self.stragglers = 0

    def join(self, at: float, event: threading.Event) -> Place:
        """Take a place in the peal of wall-clock instant ``at``; then :meth:`sleep` in it.

        The first place of a peal leads it: it sleeps until the instant on a timer of its own
        and begins the peal; every other is woken by the peal (``event`` is set).
        """
        with self._lock:
            key, peal = next(self._keys), self._peals.get(at)
            if peal is None:
                place = Place(at, event, key, at, leads=True)
                self._peals[at] = _Peal(place)
            else:
                place = peal.places[key] = Place(at, event, key, at + SLACK)
        return place

    def follow(self, rung: Place) -> None:
        """After the run of a shard the peal of ``rung`` woke: wait at the peal's end until
        the peal reaches ``rung`` again, its event is set (a stop, a trigger) or
        :data:`SLACK` passes; then pass the peal on, or leave it. At once when the peal is
        over.

        What a shard does after its run (its bookkeeping, its next fire time) would delay
        every shard still to be rung behind it: it waits here instead and the shards of the
        instant reach their runs first.
        """
        with self._lock:
            peal = self._peals.get(rung.at)
            if peal is None:
                return
            rung.key, rung.due = next(self._keys), time.time() + SLACK
            rung.rung = rung.leads = False
            peal.tail[rung.key] = rung
        try:
            rung.event.wait(SLACK)
        finally:
            self.leave(rung)

    def sleep(self, place: Place) -> bool:
        """Wait in ``place`` until the peal reaches it (a leader: until its instant), its
        event is set by something else (a stop, a trigger), or it is due; then pass the peal
        on, or leave it. True when the peal reached the place (a leader's: it began it)."""
        event = place.event
        try:
            if place.leads:
                # Re-read the wall clock on waking: a timeout is measured on the monotonic
                # clock, which a slewed wall clock may trail.
                while not event.wait(place.due - time.time()) and time.time() < place.due:
                    pass
            else:
                event.wait(place.due - time.time())
        finally:
            self.leave(place)
        return place.rung

    def leave(self, place: Place) -> None:
        """After the wait: pass the peal on if it reached this place, else leave it.

        A leader leaving at or after its instant begins the peal (it counts as rung); one
        leaving before hands the instant to the chime's thread.
        """
        following = None
        with self._lock:
            if not place.rung:
                peal = self._peals.get(place.at)
                if peal is not None:
                    self._remove(peal, place)
                elif not place.leads and time.time() >= place.due:
                    self.stragglers += 1
            if place.rung:
                following = self._next(place.at)
        if following is not None:
            following.event.set()

    def _remove(self, peal: _Peal, place: Place) -> None:
        # Under self._lock: ``place`` leaves ``peal`` unrung.
        if peal.leader is not place:
            peal.places.pop(place.key, None)
            peal.tail.pop(place.key, None)
            if time.time() >= place.due:
                self.stragglers += 1
            return
        peal.leader = None
        del peal.places[place.key]
        if time.time() >= place.at:  # its instant: the leader begins the peal
            place.rung = True
        elif peal.places or peal.tail:
            # Left before its instant (stopped, triggered): the chime's thread times it.
            peal.chimed = True
            heapq.heappush(self._heap, place.at)
            if self._thread is None:
                self._start()
            elif self._heap[0] == place.at:
                self._signal.set()
        else:
            del self._peals[place.at]

    def _next(self, at: float) -> Place | None:
        # Under self._lock: the next place of the peal of ``at`` (marked rung), or None when
        # the peal is over. A peal is known from its first join until then: a place joined
        # while it rings is rung in it; one joined after it ended starts a new peal.
        peal = self._peals.get(at)
        if peal is None:
            return None
        waiting = peal.places or peal.tail
        if not waiting:
            del self._peals[at]
            return None
        place = waiting.popitem()[1]
        place.rung = True
        return place

    @property
    def pending(self) -> int:
        """Places waiting in a peal (for tests)."""
        with self._lock:
            return sum(len(peal.places) + len(peal.tail) for peal in self._peals.values())

    # -- the thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        # Under self._lock. Should no thread start (the process is out of them), the waiting
        # shards wake on their own timeouts, late, and the next hand-over tries again.
        thread = threading.Thread(target=self._main, name="goworker:chime", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            logger.error(
                "cannot start the chime's thread ({}): shards fire up to {} s late", exc, SLACK
            )
            return
        self._thread = thread

    def _main(self) -> None:
        try:
            self._ring_until_idle()
        except BaseException as exc:  # noqa: BLE001 - the shards' own timeouts take over
            logger.opt(exception=exc).critical("chime thread crashed: {!r}", exc)
            with self._lock:
                self._thread = None

    def _ring_until_idle(self) -> None:
        signal, lingered = self._signal, False
        while True:
            begun: list[Place] = []
            with self._lock:
                now = time.time()
                while self._heap and self._heap[0] <= now:
                    at = heapq.heappop(self._heap)
                    peal = self._peals.get(at)
                    if peal is not None and peal.chimed:
                        peal.chimed = False
                        place = self._next(at)
                        if place is not None:
                            begun.append(place)
                signal.clear()
                idle = not self._heap and not begun
                if idle and lingered:
                    self._thread = None  # the next hand-over starts another
                    return
                timeout = self._heap[0] - now if self._heap else _LINGER
            for place in begun:  # more than one: instants passed while this thread was late
                place.event.set()
            lingered = not signal.wait(timeout) and idle

    def _after_fork(self) -> None:
        """In a forked child the thread is gone and the waiters with it: start afresh."""
        self._lock = threading.Lock()
        self._peals = {}
        self._heap = []
        self._thread = None
        self._signal = Bell()


CHIME = Chime()
os.register_at_fork(after_in_child=CHIME._after_fork)
