"""Time, injectable.

Every place that reads the time or sleeps goes through a :class:`Clock`, so schedule and
retry logic can be tested with :class:`FakeClock` — no real waiting, deterministic results.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """What the worker needs from time."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (fire times are wall-clock instants)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (durations, deadlines)."""

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds pass; return ``event.is_set()``."""


class SystemClock:
    """The real clock: ``time.time``, ``time.monotonic`` and ``Event.wait``."""

    # The functions themselves, not methods calling them: a herd of fires reads the clock
    # a few times per run on its way to ``do``. (``monotonic`` first: from the next line on,
    # ``time`` in this class body is the attribute, not the module.)
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests: time moves only when something waits on it or ``advance`` is called.

    ``wait(event, timeout)`` returns at once: it advances the clock by ``timeout`` unless the
    event is already set. Waits are recorded in ``waits`` so tests can assert on them.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._lock = threading.Lock()
        self.waits: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        with self._lock:
            self._now += seconds
            self._mono += seconds

    def jump(self, seconds: float) -> None:
        """Step the wall clock only (an NTP step or a manual date change), monotonic unchanged."""
        with self._lock:
            self._now += seconds

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        if timeout is None:
            # Nothing would ever wake a fake waiter: wait for real, so a test hangs visibly
            # (and pytest-timeout reports it) instead of spinning.
            return event.wait()
        self.waits.append(timeout)
        self.advance(max(timeout, 0.0))
        return event.is_set()
