"""A :class:`~goworker_py.Context` for unit-testing a handler without a worker.

A handler's ``do`` needs a context; a worker builds one per run, a unit test builds one with
:func:`make_context` and calls the method directly::

    from goworker_py.testing import make_context

    def test_report_uses_the_shard_param() -> None:
        ctx = make_context(shard=1, total=3, param="Shanghai")
        Report().do(ctx)

    def test_consumer_stops_when_cancelled() -> None:
        ctx = make_context(cancelled=True)
        Consumer().do(ctx)                  # returns at once: ctx.cancelled is True

Every field a handler reads has a plain default; the logger is loguru's, bound with the same
ids a worker binds (so ``ctx.logger`` lines look like a real run's). Pass a
:class:`~goworker_py.clock.FakeClock` and ``ctx.wait(seconds)`` returns at once, advancing it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from loguru import logger as _logger

from goworker_py.aio import RunEvent
from goworker_py.clock import SYSTEM_CLOCK, Clock
from goworker_py.errors import ConfigError
from goworker_py.handler import Context, Shard
from goworker_py.instance import WorkerInstance

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["make_context"]


def make_context(
    *,
    shard: int = 0,
    total: int = 1,
    param: str = "",
    params: str = "",
    run_id: str = "test-run",
    scheduled_time: datetime | None = None,
    attempt: int = 1,
    step: str = "do",
    fencing_token: int | None = None,
    is_failover: bool = False,
    is_triggered: bool = False,
    worker_name: str = "test-worker",
    service: str | None = None,
    instance: WorkerInstance | None = None,
    cancelled: bool = False,
    clock: Clock | None = None,
    logger: Logger | None = None,
) -> Context:
    """A context as a run of ``shard`` of ``total`` would get it.

    :param shard: the shard index (``ctx.shard.index``); ``total`` and ``param`` complete it.
    :param params: the worker's raw params string (``ctx.params``).
    :param scheduled_time: the fire time served; default: now (from ``clock``), in UTC.
    :param fencing_token: cluster mode's claim token; ``None`` as in local mode.
    :param instance: the instance running it; default: one instance of ``service`` owning
        ``shard``, seen from that shard's thread.
    :param cancelled: start with the run already cancelled (``ctx.cancelled`` is True);
        cancel later with ``ctx.event.set()``.
    :param clock: what ``ctx.wait`` sleeps on (a ``FakeClock`` makes waits instant).
    :param logger: a loguru logger; default: loguru's, bound with worker/service/shard/run.
    """
    if total < 1 or not 0 <= shard < total:
        raise ConfigError(f"shard must be in 0..total-1 with total >= 1, got {shard}/{total}")
    clock = clock or SYSTEM_CLOCK
    service_name = service or worker_name
    if scheduled_time is None:
        scheduled_time = datetime.fromtimestamp(clock.time(), timezone.utc)
    if instance is None:
        instance = WorkerInstance(
            id="test-instance", service=service_name, shards=(shard,), shard_index=shard
        )
    event = RunEvent()  # as a run's: setting it also cancels an async step's task
    if cancelled:
        event.set()
    bound = logger or _logger.bind(worker=worker_name, service=service_name)
    ctx = Context(
        run_id=run_id,
        scheduled_time=scheduled_time,
        shard=Shard(index=shard, total=total, param=param),
        params=params,
        instance=instance,
        logger=bound.bind(shard=shard, run=run_id),
        event=event,
        clock=clock,
        worker_name=worker_name,
        fencing_token=fencing_token,
        is_failover=is_failover,
        is_triggered=is_triggered,
    )
    ctx.attempt = attempt
    ctx.step = step
    return ctx
