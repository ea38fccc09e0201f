"""The handler a user writes, and the context each of its runs receives.

A handler implements ``do`` and optionally ``before``, ``after``, ``error_message`` and
``watch``. Per run the order is ``watch`` → ``before`` → ``do`` → ``after``; a step that fails
(after its retries) skips the steps after it. Once a run is cancelled ``do`` is not started,
but ``after`` still runs when ``before`` succeeded and ``do`` did not fail, so resources that
``before`` acquired are released. Any of the methods may be ``async def``: the step runs to
completion on the shard's thread, in its event loop (:mod:`goworker_py.aio`).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from goworker_py import aio
from goworker_py.errors import InvalidHandlerError, RunCancelled
from goworker_py.instance import WorkerInstance

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.clock import Clock


@dataclass(frozen=True)
class Shard:
    """The shard a run serves: its ``index`` of ``total`` and its ``param`` from ``params``."""

    index: int
    total: int
    param: str = ""


class Context:
    """Everything one run knows about itself. A new context is made for every run.

    Long ``do`` loops (message-queue consumers) poll :attr:`cancelled` or sleep with
    :meth:`wait`, which returns early when the run is cancelled; ``async def`` steps sleep with
    ``await`` :meth:`sleep` instead (``wait`` would block their event loop).
    """

    __slots__ = (
        "_clock",
        "_lease",
        "attempt",
        "event",
        "fencing_token",
        "instance",
        "is_failover",
        "is_triggered",
        "lapsed",
        "logger",
        "params",
        "run_id",
        "scheduled_time",
        "shard",
        "step",
        "worker_name",
    )

    def __init__(
        self,
        *,
        run_id: str,
        scheduled_time: datetime,
        shard: Shard,
        params: str,
        instance: WorkerInstance,
        logger: Logger,
        event: threading.Event,
        clock: Clock,
        worker_name: str = "",
        fencing_token: int | None = None,
        is_failover: bool = False,
        is_triggered: bool = False,
        lease: Callable[[], float] | None = None,
    ) -> None:
        #: Unique id of this run (also in every log line of the run).
        self.run_id = run_id
        #: The fire time this run serves (the start time for a run-once worker).
        self.scheduled_time = scheduled_time
        #: This run's shard: index, total and param.
        self.shard = shard
        #: The worker's raw ``params`` string.
        self.params = params
        #: The instance running this run, as seen from this shard's thread.
        self.instance = instance
        #: A loguru logger bound with worker, service, shard and run ids.
        self.logger = logger
        #: Set when the run is cancelled (worker stopping, shard moving, session lost).
        self.event = event
        #: Cluster mode: the shard claim's fencing token, increasing with each new owner.
        self.fencing_token = fencing_token
        #: True when this run re-runs a run interrupted on a dead instance (failover).
        self.is_failover = is_failover
        #: True for an extra run asked for by ``Worker.trigger()`` (scheduled_time is then
        #: the moment it started).
        self.is_triggered = is_triggered
        #: 1-based attempt number of the current step.
        self.attempt = 1
        #: Name of the step being run: "before", "do" or "after".
        self.step = ""
        #: Name of the worker this run belongs to.
        self.worker_name = worker_name
        #: Cluster mode: True once the run was cancelled because the instance's lease on its
        #: shard lapsed (it could not hear from the coordination server in time).
        self.lapsed = False
        self._clock = clock
        self._lease = lease

    def _begin(
        self,
        scheduled_time: datetime,
        instance: WorkerInstance,
        fencing_token: int | None,
        is_failover: bool,
        is_triggered: bool,
        lease: Callable[[], float] | None,
    ) -> None:
        """Fill in what only the run's start tells, once, as the run starts (the runner's call:
        a run's context is made before its shard sleeps until the fire time, see
        :mod:`goworker_py.runner`)."""
        self.scheduled_time = scheduled_time
        self.instance = instance
        self.fencing_token = fencing_token
        self.is_failover = is_failover
        self.is_triggered = is_triggered
        self._lease = lease

    @property
    def cancelled(self) -> bool:
        """True once the run has been cancelled.

        In cluster mode also the moment the instance's lease lapses — before the thread that
        fences the instance has run: a handler thread resumed after a long freeze (SIGSTOP, a
        suspended VM) sees ``True`` on its very first check.
        """
        if self.event.is_set():
            return True
        lease = self._lease
        if lease is not None and time.monotonic() >= lease():
            self.lapsed = True
            self.event.set()  # latched: a lapsed run stays cancelled
            return True
        return False

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early if the run is cancelled.

        Returns True if the run was cancelled (like ``threading.Event.wait``). In cluster mode
        the sleep also ends when the instance's lease lapses.
        """
        if self._lease is None:
            return self._clock.wait(self.event, max(seconds, 0.0))
        end = time.monotonic() + max(seconds, 0.0)
        while not self.cancelled:
            now = time.monotonic()
            if now >= end:
                return False
            self._clock.wait(self.event, min(end, self._lease()) - now)
        return True

    async def sleep(self, seconds: float) -> bool:
        """In an ``async def`` step: sleep up to ``seconds``, returning early if cancelled.

        Returns True if the run was cancelled, like :meth:`wait`, which would block the event
        loop. A cancellation wakes this sleep with True rather than cancelling the step's task;
        the task is cancelled at its next other ``await``.
        """
        if self._lease is None:
            return await aio.sleep(self.event, max(seconds, 0.0), self._clock)
        end = time.monotonic() + max(seconds, 0.0)
        while not self.cancelled:
            now = time.monotonic()
            if now >= end:
                return False
            await aio.sleep(self.event, min(end, self._lease()) - now, self._clock)
        return True

    def raise_if_cancelled(self) -> None:
        """Leave the current step by raising :class:`RunCancelled` if the run was cancelled."""
        if self.cancelled:
            raise RunCancelled(f"run {self.run_id} cancelled")

    def __repr__(self) -> str:
        return (
            f"Context(run_id={self.run_id!r}, shard={self.shard.index}/{self.shard.total}, "
            f"scheduled_time={self.scheduled_time.isoformat()}, attempt={self.attempt})"
        )


class Handler:
    """Base class of a worker's handler; override :meth:`do` and any of the optional hooks.

    Any of them may be ``async def``: the step then runs to completion in an event loop on the
    shard's own thread (one loop per thread, reused), and cancelling the run cancels its task
    (see :mod:`goworker_py.aio`). Retries and errors are the same as for plain methods.

    Pass the **class** to ``Worker`` to get a fresh instance per run (state set in ``before``
    is visible in ``do`` and ``after`` of the same run and never leaks into the next), or an
    **instance** to reuse it for every run (its methods then run on several shard threads at
    once when the worker has several shards).

    Threads: ``before``, ``do``, ``after``, ``error_message`` and the ``watch`` call that
    precedes each run are called on the shard's own thread; ``watch`` on a membership change
    on the worker's callback thread (one call at a time). None is ever called on the cluster
    supervisor's thread or on the thread that decides self-fencing.
    """

    def before(self, ctx: Context) -> Awaitable[None] | None:
        """Prepare the run; raising fails the step (retried by the policy). Default: nothing."""

    def do(self, ctx: Context) -> Awaitable[None] | None:
        """The work of one run. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__}.do() is not implemented")

    def after(self, ctx: Context) -> Awaitable[None] | None:
        """Finish the run; runs only when ``before`` succeeded and ``do`` did not fail."""

    def error_message(self, ctx: Context, err: BaseException) -> Awaitable[None] | None:
        """Receive every error of the run, in order, on the run's thread. Default: log it."""
        ctx.logger.opt(exception=err).error("{} failed: {!r}", ctx.step or "run", err)
        return None

    # ``watch(info: WatchInfo) -> None`` is optional: define it to be told before each run
    # and whenever membership or ownership changes. It is not defined here so that the
    # worker can tell whether a handler wants it.


def validate_handler(handler: Any) -> None:
    """Raise :class:`InvalidHandlerError` unless ``handler`` is a usable handler class or instance.

    A handler is a :class:`Handler` subclass (or instance) that overrides ``do``, or any class
    or object with a callable ``do``; ``before``, ``after``, ``error_message`` and ``watch``, if
    present, must be callable too. Each may be a plain or an ``async def`` method, but not a
    generator (``yield`` in the body): calling one would not run its body.
    """
    if isinstance(handler, type) and _validated(handler):
        return  # a thousand workers of one handler class: checked once
    target = handler
    if isinstance(handler, type):
        if issubclass(handler, Handler) and handler.do is Handler.do:
            raise InvalidHandlerError(f"handler class {handler.__name__} must override do(ctx)")
    elif isinstance(handler, Handler) and type(handler).do is Handler.do:
        raise InvalidHandlerError(f"handler {type(handler).__name__} must override do(ctx)")
    if handler is None or isinstance(handler, (str, bytes, int, float, bool)):
        raise InvalidHandlerError(
            f"handler must be a Handler subclass or instance with a do(ctx) method, got {handler!r}"
        )
    if not callable(getattr(target, "do", None)):
        raise InvalidHandlerError(
            f"handler must be a Handler subclass or instance with a do(ctx) method, got {handler!r}"
        )
    for hook in ("before", "after", "error_message", "watch"):
        value = getattr(target, hook, None)
        if value is not None and not callable(value):
            raise InvalidHandlerError(f"handler attribute {hook!r} must be a method, got {value!r}")
    for method in ("do", "before", "after", "error_message", "watch"):
        _reject_generator(target, method)
    if isinstance(handler, type):
        problem = _construction_problem(handler)
        if problem is not None:
            raise InvalidHandlerError(
                f"handler class {handler.__name__} must be constructible without arguments "
                f"(a fresh instance is made per run): {problem}; pass an instance instead"
            )
        with contextlib.suppress(TypeError):  # a class whose metaclass makes it unhashable
            _VALID_CLASSES.add(handler)


#: Handler classes that passed :func:`validate_handler` (weakly held).
_VALID_CLASSES: weakref.WeakSet[type] = weakref.WeakSet()


def _validated(cls: type) -> bool:
    try:
        return cls in _VALID_CLASSES
    except TypeError:  # unhashable: checked every time
        return False


_OBJECT_INIT: Any = object.__init__
_OBJECT_NEW: Any = object.__new__


def _construction_problem(cls: type) -> str | None:
    """Why ``cls()`` cannot be called, or None."""
    init, new = getattr(cls, "__init__", None), getattr(cls, "__new__", None)
    if init is _OBJECT_INIT and new is _OBJECT_NEW:
        return None
    try:
        inspect.signature(cls).bind()
    except TypeError as exc:
        return str(exc)
    return None


def _reject_generator(target: Any, method: str) -> None:
    """A generator method returns a generator without running its body: refuse it up front."""
    value = getattr(target, method, None)
    if inspect.isasyncgenfunction(value):
        kind = "an async generator (async def with yield)"
    elif inspect.isgeneratorfunction(value):
        kind = "a generator (def with yield)"
    else:
        return
    name = target.__name__ if isinstance(target, type) else type(target).__name__
    raise InvalidHandlerError(
        f"{name}.{method} is {kind}: the worker would get a generator and never run its body; "
        f"make it a plain method or an async def without yield"
    )
