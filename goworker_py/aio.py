"""Running coroutine steps on a shard thread: ``async def`` handler methods.

Any handler method may be ``async def``. The runner calls it like a plain method; when the call
returns a coroutine, :func:`run_step` (or :func:`run_callback` for ``error_message`` and
``watch``) runs it to completion, right there, in an event loop of the calling thread. So
retries, ``error_message``, ``RunFailed`` and the order of steps are exactly those of plain
methods, and sync and async methods mix freely in one handler.

- **One loop per thread, reused.** Each shard thread makes its loop on its first coroutine
  step and keeps it for every later run (a loop costs ~50 µs to make; a step on a reused loop a
  few µs). The loop is closed when the thread ends. No loop runs between steps, so a plain
  method may still call ``asyncio.run`` itself.
- **Cancellation cancels the task.** A run's cancellation flag is a :class:`RunEvent`: setting
  it (from whichever thread) hands the cancellation to the loop with
  ``call_soon_threadsafe`` - no polling, no extra thread. The step's task is then cancelled:
  the coroutine sees :class:`asyncio.CancelledError` (``ctx.cancelled`` is True) and the step
  counts as cancelled, not failed. A ``CancelledError`` the run did not cause (the handler's own
  doing) is an error like any other ``BaseException`` from handler code.
- **``await ctx.sleep(seconds)``** (:func:`sleep`) is the coroutine form of ``ctx.wait``: it
  returns True at once when the run is cancelled. A step waiting in it is woken with True
  instead of being cancelled; the step's task is cancelled at its next other ``await``.
  (``ctx.wait`` would block the whole loop.)
- **Nothing leaks into the next step**: tasks a step started and left running are cancelled
  (and awaited) when the step ends.

Which steps are cancelled: ``before`` and ``do`` at once when the run is already cancelled as
they start (the runner does not start them then; this closes the race), ``after`` only when
the run is cancelled while it runs (an ``after`` started on a cancelled run releases what
``before`` acquired, undisturbed, like a plain ``after``); ``error_message`` and ``watch``
never (they are told about the run, and finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
import weakref
from collections.abc import Coroutine, Generator
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeGuard

from loguru import logger as _logger

from goworker_py.clock import SystemClock
from goworker_py.errors import RunCancelled
from goworker_py.flag import Flag

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.clock import Clock
    from goworker_py.handler import Context

__all__ = ["Cancel", "RunEvent", "run_callback", "run_step", "sleep"]


class Cancel(enum.Enum):
    """When a coroutine step's task is cancelled by the run's cancellation."""

    #: When the run is cancelled while the step runs, or already was as it starts.
    ALWAYS = "always"
    #: Only when the run is cancelled while the step runs.
    WHILE_RUNNING = "while running"
    #: Never: the step runs to completion (``ctx.sleep`` still returns early).
    NEVER = "never"


class RunEvent(Flag):
    """A run's cancellation flag (``ctx.event``) that also reaches a coroutine step at once.

    A plain :class:`threading.Event` for everyone else (a :class:`~goworker_py.flag.Flag`: most
    runs never wait on their event nor set it, and a herd of fires makes thousands a second);
    :meth:`set` additionally tells the coroutine step running at that moment, if any, on its
    own loop - once: setting it again (a stop after a ``stop_run``) does not cancel an ``after``
    that started on the cancelled run.
    """

    _step: _Step | None = None

    def set(self) -> None:
        if self.is_set():
            return
        super().set()
        step = self._step
        if step is not None:
            step.run_cancelled()


class _Step:
    """One coroutine step running on its thread's loop; the bridge from :class:`RunEvent`."""

    __slots__ = ("cancelled", "loop", "mode", "sleepers", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, mode: Cancel) -> None:
        self.loop = loop
        self.mode = mode
        self.task: asyncio.Task[Any] | None = None
        #: ``ctx.sleep`` calls waiting in this step, woken with True on cancellation.
        self.sleepers: set[asyncio.Future[bool]] = set()
        #: True once the run's cancellation reached the loop during this step.
        self.cancelled = False

    def run_cancelled(self) -> None:
        """Called by whichever thread sets the run's event."""
        # RuntimeError: the loop was closed, its thread is gone: nothing left to cancel.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._on_cancel)

    def _on_cancel(self) -> None:
        task = self.task
        if task is None or task.done() or self.cancelled:
            return
        self.cancelled = True
        if self.mode is Cancel.NEVER:
            self._wake_sleepers()
        elif self.sleepers:
            # Let ctx.sleep return True first; cancel the task if it then awaits anything else
            # (the woken task runs before this callback: the ready queue is FIFO).
            self._wake_sleepers()
            self.loop.call_soon(self._cancel_task)
        else:
            task.cancel()

    def _wake_sleepers(self) -> None:
        for sleeper in self.sleepers:
            if not sleeper.done():
                sleeper.set_result(True)

    def _cancel_task(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _TaskRecorder:
    """The loop's task factory: keeps the tasks handler code started and that still run.

    A task leaves the set when it ends, so a long consumer step starting a task per message
    holds only the running ones (and no running task is lost to garbage collection).
    """

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


class _ThreadLoop:
    """The event loop of one thread, and the tasks its current step started.

    Held only by the thread's local storage: when the thread ends it is released, and its
    finalizer closes the loop (nothing in the loop refers back to it, so this happens at once).
    """

    __slots__ = ("__weakref__", "loop", "spawned")

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_log_loop_error)
        #: Tasks started by handler code during the current step (not the step's own task).
        self.spawned = _TaskRecorder()
        self.loop.set_task_factory(self.spawned)
        finalizer = weakref.finalize(self, _close_loop, self.loop)
        finalizer.atexit = False  # at exit a daemon thread's loop may still be running


class _PerThread(threading.local):
    holder: _ThreadLoop | None = None


_THREADS = _PerThread()


def _thread_loop() -> _ThreadLoop:
    holder = _THREADS.holder
    if holder is None or holder.loop.is_closed():
        holder = _THREADS.holder = _ThreadLoop()
    return holder


def run_step(result: object, ctx: Context) -> None:
    """Finish the current step of ``ctx`` when its method returned a coroutine.

    ``result`` is what the step's method returned; anything but a coroutine is ignored (a
    plain method). Raises what the coroutine raised, or :class:`RunCancelled` when the run's
    cancellation cancelled it.
    """
    if not _is_coroutine(result):
        return
    mode = Cancel.WHILE_RUNNING if ctx.step == "after" else Cancel.ALWAYS
    _run(result, ctx.event, mode, ctx.logger, ctx.step)


def run_callback(result: object, event: threading.Event | None, logger: Logger) -> None:
    """Finish an ``error_message`` or ``watch`` call that returned a coroutine (never cancelled)."""
    if result is not None and _is_coroutine(result):
        _run(result, event, Cancel.NEVER, logger, "callback")


def _is_coroutine(result: object) -> TypeGuard[Coroutine[Any, Any, Any]]:
    # Not asyncio.iscoroutine: before Python 3.12 it also says True for a plain generator.
    return type(result) is CoroutineType or isinstance(result, Coroutine)


def _run(
    coro: Coroutine[Any, Any, Any],
    event: threading.Event | None,
    mode: Cancel,
    logger: Logger,
    name: str,
) -> None:
    if asyncio.events._get_running_loop() is not None:  # no loop runs here between steps
        coro.close()
        raise RuntimeError(f"cannot run an async {name} from inside a running event loop")
    holder = _thread_loop()
    loop = holder.loop
    step = _Step(loop, mode)
    bridged = isinstance(event, RunEvent)
    if bridged:
        assert isinstance(event, RunEvent)
        event._step = step  # from here on, a cancellation reaches this step
    try:
        if mode is Cancel.ALWAYS and event is not None and event.is_set():
            coro.close()
            raise RunCancelled(f"run cancelled before {name}")
        task = step.task = asyncio.Task(coro, loop=loop)
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            # Ours when the run is cancelled; else the handler's own, an error like any other.
            if mode is not Cancel.NEVER and event is not None and event.is_set():
                raise RunCancelled(f"run cancelled during {name}") from None
            raise
        finally:
            if holder.spawned.tasks:
                _cancel_spawned(holder, logger, name)
    finally:
        if bridged:
            assert isinstance(event, RunEvent)
            event._step = None


def _cancel_spawned(holder: _ThreadLoop, logger: Logger, name: str) -> None:
    """Cancel the tasks a step started and left running, so none runs into the next step."""
    spawned = holder.spawned.tasks
    left = [task for task in spawned if not task.done()]
    spawned.clear()
    if left:
        logger.warning("{} left {} task(s) running: cancelled", name, len(left))
    while left:
        for task in left:
            task.cancel()
        holder.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        # A task may have started others while being cancelled.
        left = [task for task in spawned if not task.done()]
        spawned.clear()


async def sleep(event: threading.Event, seconds: float, clock: Clock) -> bool:
    """Sleep up to ``seconds`` on the running loop; return True early if the run is cancelled.

    The coroutine form of ``ctx.wait`` (``Context.sleep`` calls it). With an injected clock
    other than the system clock (a test's ``FakeClock``), time passes through that clock's
    ``wait``, as for ``ctx.wait``.
    """
    if event.is_set():
        return True
    if not isinstance(clock, SystemClock):
        return clock.wait(event, seconds)
    loop = asyncio.get_running_loop()
    step = event._step if isinstance(event, RunEvent) else None
    if step is None or step.loop is not loop:
        # Not inside one of our steps (e.g. the handler's own loop): no bridge to wake us.
        return await asyncio.to_thread(clock.wait, event, seconds)
    sleeper: asyncio.Future[bool] = loop.create_future()
    timer = loop.call_later(seconds, _time_up, sleeper)
    step.sleepers.add(sleeper)
    try:
        await sleeper
    finally:
        timer.cancel()
        step.sleepers.discard(sleeper)
    return event.is_set()


def _time_up(sleeper: asyncio.Future[bool]) -> None:
    if not sleeper.done():
        sleeper.set_result(False)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Errors nobody awaited (a task's lost exception, a failing callback) go to the log."""
    error = context.get("exception")
    _logger.opt(exception=error).error("asyncio: {}", context.get("message", "unhandled error"))


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a thread's loop as the thread ends (no step runs: every task already ended)."""
    if not loop.is_running() and not loop.is_closed():
        loop.close()
