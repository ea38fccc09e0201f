"""A :class:`threading.Event` that costs no lock until it is waited on.

A ``threading.Event`` makes a ``Condition`` (two locks) when it is created. goworker-py makes
several per worker and one per run, and most are only ever *read*: a parked daily job's stop
flag, a run's cancellation flag. A thousand workers starting, or a thousand runs firing in the
same second, then pay for locks nobody takes. :class:`Flag` makes its ``Condition`` when first
waited on instead; reading, setting or clearing a flag nobody waits on never needs one.
"""

from __future__ import annotations

import threading

__all__ = ["Flag"]

#: Taken only while a flag makes its Condition (once per flag).
_MAKING = threading.Lock()


class Flag(threading.Event):
    """A ``threading.Event`` whose ``Condition`` is made when first waited on."""

    def __init__(self) -> None:
        self._flag = False
        self._made: threading.Condition | None = None

    @property
    def _cond(self) -> threading.Condition:
        cond = self._made
        if cond is None:
            with _MAKING:
                cond = self._made
                if cond is None:
                    cond = self._made = threading.Condition(threading.Lock())
        return cond

    def set(self) -> None:
        with _MAKING:
            if self._made is None:
                # Nobody waits: a waiter makes the Condition (under _MAKING) before it reads
                # the flag, so it sees this and does not wait.
                self._flag = True
                return
        super().set()

    def clear(self) -> None:
        with _MAKING:
            if self._made is None:
                self._flag = False
                return
        super().clear()
