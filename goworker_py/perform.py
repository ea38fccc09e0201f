"""One run of a shard: ``watch`` → ``before`` → ``do`` → ``after``, each under the retry policy.

:class:`RunSteps` performs the steps of a run on the calling thread (the shard's, see
:mod:`goworker_py.runner`): a step that fails is retried by the worker's retry policy
(:class:`~goworker_py.retry.StepRetrier`), every error goes to the handler's ``error_message``
synchronously, in order; a step may be a plain or an ``async def`` method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from goworker_py import aio
from goworker_py.errors import AttemptsExhausted, RunCancelled
from goworker_py.handler import Context, Shard
from goworker_py.hooks import OBSERVERS
from goworker_py.instance import WatchInfo, WorkerInstance
from goworker_py.retry import StepResult, StepRetrier
from goworker_py.run import RunResult, RunSettings

if TYPE_CHECKING:
    from loguru import Logger

    from goworker_py.run import ShardHost


class RunSteps:
    """The steps of one shard's runs: what :meth:`perform` does, run after run."""

    def __init__(
        self,
        settings: RunSettings,
        shard: Shard,
        host: ShardHost,
        logger: Logger,
        steps_ended: Callable[[], object] | None = None,
    ) -> None:
        self.settings = settings
        self.shard = shard
        self.host = host
        self.logger = logger
        #: Called once a run's every step has returned: see :meth:`perform`.
        self.steps_ended = steps_ended
        #: The worker gave up waiting for the shard: errors go to the log only (SPEC 1).
        self.abandoned = False

    def perform(self, ctx: Context) -> RunResult:
        """Perform the run ``ctx`` describes on the calling thread; its result.

        :attr:`steps_ended` is called once every step has returned (``do`` maybe cancelled),
        before the result is made: the runner's cue that the run is done (it may wait a while,
        see :mod:`goworker_py.runner`; the run's handler is let go first). A run that ends
        otherwise (a step failed, or it was cancelled before its first step) returns without
        calling it.
        """
        settings = self.settings
        handler = settings.handler_factory()
        if settings.wants_watch:
            self._call_watch(handler, ctx)
        # Once cancelled, do is not started, but after still runs when before succeeded and
        # do did not fail (left normally or through RunCancelled), to release before's work.
        cancelled = False
        for step in settings.step_names:
            if step != "after" and ctx.cancelled:
                ctx.logger.info("run cancelled before {}", step)
                if step == settings.step_names[0]:  # nothing ran: nothing for after to release
                    return RunResult(ctx.run_id, ok=False, cancelled=True)
                cancelled = True
                continue
            method = getattr(handler, step, None)
            if method is None:
                continue
            ctx.step = step
            ctx.attempt = 1
            try:
                # The first attempt is a plain call: the retry machinery is built only when
                # it fails, which keeps a run's framework cost at a few microseconds.
                try:
                    result = method(ctx)
                    if result is not None:  # an async def method: run it to completion here
                        aio.run_step(result, ctx)
                    if step == "do" and ctx.cancelled:
                        # Returned early because it was cancelled (the usual way a long
                        # step stops): the run did not complete.
                        ctx.logger.info("run cancelled during do")
                        cancelled = True
                    continue
                except RunCancelled:
                    outcome = StepResult(ok=False, reason="cancelled")
                except Exception as first_error:  # noqa: BLE001 - retried and reported below
                    outcome = self._retry(handler, method, ctx, first_error)
            except BaseException as exc:  # noqa: BLE001 - SystemExit & co. from handler code
                # Not retried, but a failed step like any other: it must not kill the shard.
                self._report(handler, ctx, exc)
                self._report(
                    handler,
                    ctx,
                    AttemptsExhausted(step, ctx.attempt, exc, "non-retryable error"),
                )
                return RunResult(ctx.run_id, ok=False, error=exc, failed_step=step)
            if outcome.ok:
                cancelled = cancelled or (step == "do" and ctx.cancelled)
                continue
            if outcome.reason == "cancelled":
                ctx.logger.info("run cancelled during {}", step)
                if step == "do" and outcome.error is None:
                    cancelled = True
                    continue
                return RunResult(
                    ctx.run_id, ok=False, cancelled=True, error=outcome.error, failed_step=step
                )
            assert outcome.error is not None
            self._report(
                handler,
                ctx,
                AttemptsExhausted(step, outcome.attempts, outcome.error, outcome.reason),
            )
            return RunResult(ctx.run_id, ok=False, error=outcome.error, failed_step=step)
        if self.steps_ended is not None:
            # The run's handler, its last step and what that returned are let go before the
            # cue, which may wait until the herd is over (see goworker_py.chime: nothing made
            # on a herd's path outlives it).
            handler = method = result = None
            self.steps_ended()
        if cancelled:
            return RunResult(ctx.run_id, ok=False, cancelled=True)
        return RunResult(ctx.run_id, ok=True)

    def _retry(
        self, handler: Any, method: Callable[[Context], Any], ctx: Context, first_error: Exception
    ) -> StepResult:
        """A step's attempts after its first failed, under the retry policy.

        Apart from :meth:`perform`: were these closures there, its handler and context would
        be closure cells, made on every run's path and alive until the run's end (see
        :mod:`goworker_py.chime` on what a herd's path may allocate).
        """
        return StepRetrier(
            policy=self.settings.retry_policy,
            call=functools.partial(_call_step, method, ctx),
            report=lambda err: self._report(handler, ctx, err),
            set_attempt=functools.partial(self._set_attempt, ctx),
            cancelled=lambda: ctx.cancelled,
            sleep=ctx.wait,
        ).continue_after(first_error)

    def _set_attempt(self, ctx: Context, attempt: int) -> None:
        ctx.attempt = attempt
        if attempt > 1:
            for observer in OBSERVERS:
                observer.retried(self.settings.worker_name, ctx.step)

    def _call_watch(self, handler: Any, ctx: Context) -> None:
        info = WatchInfo(ctx.instance, self.shard.param, self.host.members())
        try:
            aio.run_callback(handler.watch(info), ctx.event, ctx.logger)
        except Exception as exc:  # noqa: BLE001 - a failing watch must not stop the run
            ctx.logger.opt(exception=exc).error("watch() raised {!r}", exc)

    def notify_watch(self, instance: WorkerInstance) -> None:
        """Call the handler's ``watch`` (membership or shards changed), on the caller's thread."""
        if not self.settings.wants_watch:
            return
        handler = self.settings.handler_factory()
        info = WatchInfo(instance, self.shard.param, self.host.members())
        try:
            aio.run_callback(handler.watch(info), None, self.logger)
        except Exception as exc:  # noqa: BLE001
            self.logger.opt(exception=exc).error("watch() raised {!r}", exc)

    def _report(self, handler: Any, ctx: Context, err: BaseException) -> None:
        report = getattr(handler, "error_message", None)
        if report is None or self.abandoned:
            ctx.logger.error("{} failed: {!r}", ctx.step, err)
            return
        try:
            aio.run_callback(report(ctx, err), ctx.event, ctx.logger)
        except Exception as exc:  # noqa: BLE001 - spec: logged and swallowed
            ctx.logger.opt(exception=exc).error("error_message() raised {!r}", exc)


def _call_step(method: Any, ctx: Context) -> None:
    """One attempt of a step after the first (the retry path): plain or ``async def``."""
    result = method(ctx)
    if result is not None:
        aio.run_step(result, ctx)
