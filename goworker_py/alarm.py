"""The process-wide alarm: one thread that wakes parked shards at their time.

A shard whose next fire time is far away gives its thread up (it *parks*, see
:mod:`goworker_py.runner`) and leaves a wake-up here instead: a thousand idle daily jobs cost
one sleeping thread, not a thousand threads that each wake every few seconds. The alarm's
thread sleeps until the earliest wake-up it holds, and calls it a little before the fire time
(:data:`LEAD`), so the shard's fresh thread is waiting for the fire time (in its instant's peal,
see :mod:`goworker_py.chime`) when it comes.

Wake-ups are wall-clock instants (fire times are). The alarm's sleep counts monotonic time, so
a wall clock stepped while it sleeps (NTP, an operator, a resumed laptop) would make it wake
at the wrong moment. On Linux it also waits on a ``timerfd`` armed with
``TFD_TIMER_CANCEL_ON_SET``, which the kernel fires the moment the wall clock is set or jumps
on a resume: the alarm then recomputes its sleep at once, without any periodic wake-up. Where
that is not available it checks the wall clock against the monotonic one every second.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import itertools
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

__all__ = ["ALARM", "LEAD", "Alarm", "WakeUp"]

#: How long before its wall-clock instant a wake-up is called: time enough to start a thread
#: for every shard of a herd firing in the same second, each then waiting on its own timer.
LEAD = 1.0
#: Without a clock-change notification, the longest sleep: a stepped wall clock is noticed
#: this soon.
_POLL = 1.0
#: The longest sleep ``poll`` takes (its timeout is a C int of milliseconds).
_LONGEST = 86400.0


class WakeUp:
    """One pending wake-up; :meth:`cancel` takes it back (a no-op once it was called)."""

    __slots__ = ("alarm", "at", "callback", "done")

    def __init__(self, alarm: Alarm, at: float, callback: Callable[[], None]) -> None:
        self.alarm = alarm
        self.at = at
        self.callback = callback
        #: Called or cancelled.
        self.done = False

    def cancel(self) -> None:
        self.alarm._cancel(self)


class Alarm:
    """Calls each wake-up on its own thread at (``at`` - :data:`LEAD`) wall-clock seconds.

    Callbacks run on the alarm's thread, one after the other: they must be quick and never
    block (a parked shard's starts a thread). The thread starts with a wake-up and ends once
    it holds none, so a process whose workers all stopped keeps no thread of goworker-py's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, WakeUp]] = []
        #: Wake-ups in the heap neither called nor cancelled (cancelled ones stay in it until
        #: they reach its head, or until they are the majority).
        self._live = 0
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._clock_fd = -1
        self._signalled = False
        #: How many times the kernel said the wall clock was set (for tests and metrics).
        self.clock_changes = 0

    def call_at(self, at: float, callback: Callable[[], None]) -> WakeUp:
        """Call ``callback`` at wall-clock time ``at - LEAD`` (at once if that has passed)."""
        wake_up = WakeUp(self, at, callback)
        with self._lock:
            self._live += 1
            heapq.heappush(self._heap, (at, next(self._order), wake_up))
            earliest = self._heap[0][2] is wake_up
            if self._thread is None:
                self._start()
            elif earliest:
                self._signal()
        return wake_up

    @property
    def pending(self) -> int:
        """Wake-ups not yet called nor cancelled (for tests and metrics)."""
        with self._lock:
            return self._live

    def _cancel(self, wake_up: WakeUp) -> None:
        with self._lock:
            if wake_up.done:
                return
            wake_up.done = True
            self._live -= 1
            if self._live * 2 < len(self._heap):
                # Mostly cancelled (the workers stopped): drop them now, so that the thread
                # ends as soon as nothing is pending and memory does not grow.
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)
                if not self._heap and self._thread is not None:
                    self._signal()

    # -- the thread ---------------------------------------------------------------------------

    def _start(self) -> None:
        # Under self._lock.
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._clock_fd = _clock_change_fd()
        self._signalled = False
        _drain(self._wake_r)
        self._thread = threading.Thread(target=self._main, name="goworker:alarm", daemon=True)
        self._thread.start()

    def _signal(self) -> None:
        # Under self._lock: one byte is enough to interrupt the wait.
        if not self._signalled:
            self._signalled = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def _main(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._clock_fd >= 0:
            poller.register(self._clock_fd, select.POLLIN)
        while True:
            due = self._take_due()
            for wake_up in due:
                try:
                    wake_up.callback()
                except Exception as exc:  # noqa: BLE001 - one failure must not stop the rest
                    logger.opt(exception=exc).critical("alarm callback failed: {!r}", exc)
            with self._lock:
                if not self._heap:
                    self._thread = None  # the next call_at() starts another
                    return
                head = self._heap[0][0]
                self._signalled = False
            longest = _LONGEST if self._clock_fd >= 0 else _POLL
            timeout = min(max(head - LEAD - time.time(), 0.0), longest)
            # Wake-ups are wall-clock instants, so the sleep is recomputed from time.time()
            # after every wake: a stepped clock needs nothing more than the wake itself.
            for fd, _ in poller.poll(_milliseconds(timeout)):
                if fd == self._wake_r:
                    _drain(self._wake_r)
                elif fd == self._clock_fd:
                    _rearm(self._clock_fd)
                    self.clock_changes += 1

    def _take_due(self) -> list[WakeUp]:
        due: list[WakeUp] = []
        with self._lock:
            now = time.time() + LEAD
            while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                wake_up = heapq.heappop(self._heap)[2]
                if not wake_up.done:
                    wake_up.done = True  # called: a later cancel() changes nothing
                    self._live -= 1
                    due.append(wake_up)
        return due

    def _after_fork(self) -> None:
        """In a forked child the thread is gone: start afresh on the next wake-up."""
        self._lock = threading.Lock()
        self._heap = []
        self._live = 0
        self._thread = None
        self._signalled = False
        for fd in (self._wake_r, self._wake_w, self._clock_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = self._clock_fd = -1


def _milliseconds(seconds: float) -> int:
    """``poll`` timeout in whole milliseconds, never early."""
    return int(seconds * 1000) + 1


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except BlockingIOError:
        pass


# -- Linux: a timerfd the kernel fires when the wall clock is set --------------------------------

_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME = 1
_TFD_TIMER_CANCEL_ON_SET = 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc: Any = None


def _clock_change_fd() -> int:
    """A non-blocking timerfd readable once the wall clock is set; -1 where unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fd = int(_libc.timerfd_create(_CLOCK_REALTIME, os.O_CLOEXEC | os.O_NONBLOCK))
    except (OSError, AttributeError):
        return -1
    if fd < 0:
        return -1
    if not _arm(fd):
        os.close(fd)
        return -1
    return fd


def _arm(fd: int) -> bool:
    # An absolute expiry a century away: only a change of the wall clock makes it readable.
    far = _Itimerspec(_Timespec(0, 0), _Timespec(int(time.time()) + 100 * 365 * 86400, 0))
    flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
    return int(_libc.timerfd_settime(fd, flags, ctypes.byref(far), None)) == 0


def _rearm(fd: int) -> None:
    try:
        os.read(fd, 8)
    except OSError as exc:
        if exc.errno not in (errno.ECANCELED, errno.EAGAIN):
            raise
    _arm(fd)


ALARM = Alarm()
os.register_at_fork(after_in_child=ALARM._after_fork)
