"""SIGINT/SIGTERM handling shared by every worker of the process.

The first worker started on the main thread installs one handler per signal; it only tells the
registered workers (a first signal asks for a graceful stop, a second one for a fast stop). When
the last registered worker ends, the previous handlers are restored — from the main thread, the
only one allowed to; until then a signal with no worker registered is passed on to the handler
that was there before, so the process behaves as if we had never been there.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalTarget(Protocol):
    """A worker, as the signal registry sees it."""

    def on_signal(self, signum: int) -> None:
        """A handled signal arrived (called on the main thread, inside the signal handler)."""


class _Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: list[SignalTarget] = []
        self._previous: dict[int, Any] = {}

    @staticmethod
    def on_main_thread() -> bool:
        return threading.current_thread() is threading.main_thread()

    def register(self, target: SignalTarget) -> bool:
        """Install the handlers if needed; must be called on the main thread. True if done."""
        if not self.on_main_thread():
            return False
        with self._lock:
            if not self._previous:
                for signum in HANDLED_SIGNALS:
                    self._previous[signum] = signal.getsignal(signum)
                    signal.signal(signum, self._handle)
            self._targets.append(target)
        return True

    def unregister(self, target: SignalTarget) -> None:
        """Forget ``target``; restore the previous handlers if it was the last (main thread)."""
        with self._lock:
            if target in self._targets:
                self._targets.remove(target)
        self.restore_if_idle()

    def restore_if_idle(self) -> None:
        """Put the previous handlers back when no worker is registered (main thread only)."""
        if not self.on_main_thread():
            return
        with self._lock:
            if self._targets or not self._previous:
                return
            for signum, previous in self._previous.items():
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        targets = list(self._targets)
        if targets:
            for target in targets:
                target.on_signal(signum)
            return
        self._pass_on(signum, frame)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            handler: Callable[[int, FrameType | None], Any] = previous
            handler(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            # Default action of SIGTERM: die by the signal, as if nobody had caught it.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


REGISTRY = _Registry()
