"""The Go package's own tests (worker_test.go), ported."""

from __future__ import annotations

import pytest

from goworker_py import (
    Context,
    ExitReason,
    Handler,
    InvalidHandlerError,
    InvalidScheduleError,
    Worker,
    validate_handler,
)


class HandlerOne(Handler):
    def before(self, ctx: Context) -> None:
        ctx.logger.debug("before")

    def do(self, ctx: Context) -> None:
        ctx.logger.debug("do")

    def after(self, ctx: Context) -> None:
        ctx.logger.debug("after")


class NotAHandler:
    """The seed's HandlerTwo passed by value: here, an object with no do()."""

    def before(self, ctx: Context) -> None:
        pass


def test_start_worker_cron_wrong() -> None:
    worker = Worker(HandlerOne, cron="******", handle_signals=False)
    with pytest.raises(InvalidScheduleError, match="expected 5 fields"):
        worker.run()


def test_start_worker_handler_wrong() -> None:
    with pytest.raises(InvalidHandlerError, match="do"):
        Worker(NotAHandler(), handle_signals=False)


def test_validate_handler() -> None:
    with pytest.raises(InvalidHandlerError):
        validate_handler(NotAHandler())
    validate_handler(HandlerOne)
    validate_handler(HandlerOne())


def test_start() -> None:
    worker = Worker(HandlerOne, handle_signals=False)
    worker.run()
    assert worker.wait(timeout=10) is ExitReason.COMPLETED
