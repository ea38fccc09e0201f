"""Observers of what shard threads do: how the optional metrics see runs, retries, misfires.

An observer is registered with :func:`add_observer` (``goworker_py.metrics`` does it) and is
called on the shard's thread; it must be quick and must not raise. With none registered the
cost to a run is one empty loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from goworker_py.handler import Context
    from goworker_py.run import RunResult


class RunObserver(Protocol):
    def run_finished(
        self, worker: str, ctx: Context, result: RunResult, started: float, ended: float
    ) -> None:
        """A run ended; ``started``/``ended`` are ``time.time()`` stamps of its start and end."""

    def retried(self, worker: str, step: str) -> None:
        """A failed step is attempted again."""

    def misfired(self, worker: str, count: int) -> None:
        """``count`` fire times passed without a run (misfire policy, outage, pause)."""


OBSERVERS: list[RunObserver] = []


def add_observer(observer: RunObserver) -> None:
    """Register ``observer`` (once)."""
    if observer not in OBSERVERS:
        OBSERVERS.append(observer)


def remove_observer(observer: RunObserver) -> None:
    """Unregister ``observer``."""
    if observer in OBSERVERS:
        OBSERVERS.remove(observer)
