"""User callbacks on a thread of their own, away from the threads that keep a worker safe.

A handler's ``watch()`` is told of membership changes (SPEC 4.1). It is user code — it may do I/O
for seconds — so it must not run on the supervisor thread (which follows the cluster) nor on the
fence thread (which decides self-fencing). A :class:`CallbackThread` runs such callbacks one at
a time, in order; a callback submitted again under the same key before it ran replaces the older
one (only the latest membership matters). The thread starts on the first submission and ends
with :meth:`CallbackThread.close`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from loguru import logger


class CallbackThread:
    """Runs submitted callbacks on one daemon thread, latest per key."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[Hashable, Callable[[], None]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, key: Hashable, callback: Callable[[], None]) -> None:
        """Run ``callback`` soon; it replaces a callback of the same ``key`` not yet run."""
        with self._lock:
            if self._closed:
                return
            self._pending.pop(key, None)
            self._pending[key] = callback
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
        self._wake.set()

    def close(self) -> None:
        """Drop what is pending and end the thread (after the callback it may be running)."""
        with self._lock:
            self._closed = True
            self._pending.clear()
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return
                batch, self._pending = list(self._pending.values()), {}
            for callback in batch:
                try:
                    callback()
                except Exception as exc:  # noqa: BLE001 - user code must not end the thread
                    logger.opt(exception=exc).error("callback raised {!r}", exc)
