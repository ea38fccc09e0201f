"""The chime: shards firing at the same instant are woken one after the other, not all at once.

A thousand jobs on ``* * * * * *`` fire in the same second. Were each shard's thread to sleep on
a timer of its own, the kernel would wake all thousand at the fire time and they would race for
the GIL: every thread waiting for it wakes every switch interval (5 ms) to ask for it again, so
a herd costs far more than the sum of its runs, and the last run starts late.

Instead a shard about to sleep until a fire time joins that instant's *peal* here and sleeps on
its own event with no timer of its own. One thread (the chime's) wakes at the instant and wakes
one shard of the peal (the last to join: the order does not matter); each woken shard, first
thing, wakes the next one before it goes on to its run. At any moment one shard thread runs and
one more is waking up behind it: the GIL changes hands once per shard, and the herd's lateness
is the sum of its runs' paths.

What a shard does after its run once it is recorded (telling observers and listeners, computing
its next fire time) would hold the GIL ahead of the shards still to be rung: once its run is
over, a shard whose instant still rings waits at the end of the peal (:meth:`Chime.follow`),
rung in turn after the last shard of the instant. The runs of an instant start first; the
bookkeeping follows.

A shard that leaves its sleep for another reason (stop, trigger, resume) leaves the peal; one
woken by the peal always passes it on, whatever woke it, so a peal never stops half-way. A
shard's sleep also has a timeout of its own, :data:`SLACK` after the instant: should the peal
ever not reach it, the shard fires late instead of never.

The chime's thread sleeps on a :class:`~goworker_py.flag.Bell` with the (wall-clock) distance to
the next instant as its timeout and re-reads the wall clock on every wake, as the shards' own
timers did; shards park when their next fire time is more than
:data:`~goworker_py.runner.PARK_AFTER` away, so it only ever holds instants a few seconds ahead
and a stepped clock is noticed that soon. The thread ends once it has held no instant for
:data:`_LINGER` seconds.
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

    __slots__ = ("at", "due", "event", "key", "rung")

    def __init__(self, at: float, event: threading.Event, key: int, due: float) -> None:
        self.at = at
        self.event = event
        self.key = key
        #: When the waiter stops waiting on its own (``SLACK`` after its instant or its call).
        self.due = due
        #: The peal reached this place: its event is set by the peal (just after this is).
        self.rung = False


class _Peal:
    """The places of one instant: those waiting for it, then those waiting for it to end."""

    __slots__ = ("places", "tail")

    def __init__(self) -> None:
        #: Places waiting for the instant, in order of joining (rung last first).
        self.places: dict[int, Place] = {}
        #: Places of shards whose run of this instant is over: rung once every place has
        #: been (see :meth:`Chime.follow`).
        self.tail: dict[int, Place] = {}


class Chime:
    """Wakes the shards waiting for one wall-clock instant one after the other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Each instant's peal, from its first join until it has rung every place.
        self._peals: dict[float, _Peal] = {}
        #: Instants whose peal has not started: the chime's thread starts them.
        self._heap: list[float] = []
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None
        self._signal = Bell()
        #: How many places woke on their own (:data:`SLACK` after the instant) instead of by
        #: their peal: always 0 unless something is wrong (for tests and diagnostics).
        self.stragglers = 0

    def join(self, at: float, event: threading.Event) -> Place:
        """Take a place in the peal of wall-clock instant ``at``: ``event`` is set when the
        peal reaches it. The caller then waits on ``event`` (for at most
        ``at - time.time() + SLACK`` seconds) and calls :meth:`leave` whatever woke it."""
        place = Place(at, event, next(self._keys), at + SLACK)
        with self._lock:
            peal = self._peals.get(at)
            if peal is None:
                peal = self._peals[at] = _Peal()
                heapq.heappush(self._heap, at)
                if self._thread is None:
                    self._start()
                elif self._heap[0] == at:
                    self._signal.set()
            peal.places[place.key] = place
        return place

    def follow(self, rung: Place, event: threading.Event) -> Place | None:
        """After the run of a shard the peal of ``rung`` woke: a place at the peal's end, or
        None when the peal is over.

        What a shard does after its run (its bookkeeping, its next fire time) would delay
        every shard still to be rung behind it: it waits here instead (on ``event``, for at
        most :data:`SLACK` seconds, then :meth:`leave`), and the shards of the instant reach
        their runs first.
        """
        with self._lock:
            peal = self._peals.get(rung.at)
            if peal is None:
                return None
            place = Place(rung.at, event, next(self._keys), time.time() + SLACK)
            peal.tail[place.key] = place
        return place

    def leave(self, place: Place) -> None:
        """After the wait: pass the peal on if it reached this place, else leave it."""
        with self._lock:
            if place.rung:
                following = self._next(place.at)
            else:
                following = None
                peal = self._peals.get(place.at)
                if peal is not None:
                    peal.places.pop(place.key, None)
                    peal.tail.pop(place.key, None)
                if time.time() >= place.due:
                    self.stragglers += 1
        if following is not None:
            following.event.set()

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
        # shards wake on their own timeouts, late, and the next join() tries again.
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
                    place = self._next(heapq.heappop(self._heap))
                    if place is not None:
                        begun.append(place)
                signal.clear()
                idle = not self._heap and not begun
                if idle and lingered:
                    self._thread = None  # the next join() starts another
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
