"""Self-fencing on a thread of its own: nothing the supervisor or a handler does can delay it.

An instance cut off from its coordination server must cancel its runs *before* the server can
expire its lease and hand its shards to another instance (SPEC 4.2, 4.4). That decision used to
be taken by the supervisor thread between re-balance passes, so a slow ``watch()`` or a blocking
server call delayed it past the expiry — and the shard ran in two places at once.

A :class:`Fence` is a daemon thread that only waits for a deadline (the instance's lease minus a
safety margin, recomputed from completed replies) and, once it passes, calls ``on_fence`` — which
sets events and nothing more: it never runs handler code, never performs I/O, never takes a lock
that is held across either. Lifting the fence is the supervisor's decision (after a round trip
on the current session), taken with :meth:`Fence.lift`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Fence:
    """Trips ``on_fence(why)`` once ``deadline()`` (``time.monotonic()``) has passed."""

    def __init__(
        self, deadline: Callable[[], float], on_fence: Callable[[str], None], name: str
    ) -> None:
        self._deadline = deadline
        self._on_fence = on_fence
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        #: ``time.monotonic()`` when the fence tripped; None while runs may go on.
        self.fenced_at: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        """Start watching the deadline."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (the worker ended)."""
        self._closed = True
        self._wake.set()

    @property
    def tripped(self) -> bool:
        """True from the moment the fence tripped until :meth:`lift`."""
        return self.fenced_at is not None

    def trip(self, why: str) -> bool:
        """Fence now (also from another thread, e.g. on a lost session); False if already."""
        with self._lock:
            if self.fenced_at is not None:
                return False
            self.fenced_at = time.monotonic()
        self._on_fence(why)
        return True

    def lift(self) -> None:
        """Runs may start again: the supervisor heard from the server on the current session
        after the fence tripped."""
        with self._lock:
            self.fenced_at = None
        self._wake.set()

    def watch(self) -> None:
        """The deadline may have moved earlier (a new session): look again at once."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            if self.fenced_at is None:
                deadline = self._deadline()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    silent = time.monotonic() - deadline
                    self.trip(
                        f"the lease was not renewed in time (deadline passed {silent:.3f} s ago)"
                    )
                    continue
                self._wake.wait(remaining)
            else:
                self._wake.wait()
            self._wake.clear()
