"""Two cheap kinds of :class:`threading.Event`: :class:`Flag` and :class:`Bell`.

A ``threading.Event`` makes a ``Condition`` (two locks) when it is created. goworker-py makes
several per worker and one per run, and most are only ever *read*: a parked daily job's stop
flag, a run's cancellation flag. A thousand workers starting, or a thousand runs firing in the
same second, then pay for locks nobody takes. :class:`Flag` makes its ``Condition`` when first
waited on instead; reading, setting or clearing a flag nobody waits on never needs one.

A shard's thread sleeps on its wake-up event before every fire and is woken by it (by the
peal of its instant, see :mod:`goworker_py.chime`, unless it leads the peal) while the shards
behind it wait their turn: every microsecond between two wake-ups delays them all. A
``Condition`` wait allocates a lock and takes two more, and ``notify`` walks a list;
:class:`Bell`, for one waiting thread at a time, wakes it by releasing one lock.
"""

from __future__ import annotations

import _thread
import os
import threading

__all__ = ["Bell", "Flag"]

#: Taken to make a flag's Condition, and by set() and clear() while it has none.
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


class Bell(threading.Event):
    """A ``threading.Event`` waited on by one thread at a time (a shard's own thread).

    :meth:`set` wakes the waiter by releasing the lock it blocks on; a second thread waiting
    while one already does raises ``RuntimeError``. Any thread may set a bell; only the thread
    that waits on it clears it, and never while it waits (:meth:`clear` takes no lock).
    """

    def __init__(self) -> None:
        self._flag = False
        self._guard = _thread.allocate_lock()
        #: Held while nobody rings: the waiter blocks acquiring it, :meth:`set` releases it.
        self._ring = _thread.allocate_lock()
        self._ring.acquire()
        self._waiting = False

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._guard:
            self._flag = True
            if self._waiting:
                self._waiting = False
                self._ring.release()

    def clear(self) -> None:
        # Without the guard: set() only ever raises the flag, and only the waiting thread
        # clears it, between its waits (see the class docstring).
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._guard:
            if self._flag:
                return True
            if self._waiting:
                raise RuntimeError("a Bell is waited on by one thread at a time")
            self._waiting = True
        try:
            rung = self._ring.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        except BaseException:  # KeyboardInterrupt in a wait on the main thread
            self._stop_waiting()
            raise
        if not rung:
            self._stop_waiting()
        return self._flag

    def _stop_waiting(self) -> None:
        # The wait ended unrung: stop waiting.
        with self._guard:
            if self._waiting:
                self._waiting = False
            else:  # set() rang just as the wait ended: take its release back
                self._ring.acquire()


def _after_fork() -> None:
    # A fork while another thread held the lock would leave the child's first set() hanging.
    global _MAKING
    _MAKING = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
