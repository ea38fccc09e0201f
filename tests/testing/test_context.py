"""goworker_py.testing.make_context: unit-testing a handler without a worker."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
from helpers import LogCapture

from goworker_py import ConfigError, Context, Handler, RunCancelled, WorkerInstance
from goworker_py.clock import FakeClock
from goworker_py.testing import make_context

pytestmark = pytest.mark.timeout(10)


class Report(Handler):
    """What a user would unit-test: reads the shard, logs, polls cancellation."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, str, int | None]] = []
        self.batches = 0

    def do(self, ctx: Context) -> None:
        self.seen.append((ctx.shard.index, ctx.shard.total, ctx.shard.param, ctx.fencing_token))
        ctx.logger.info("report for {}", ctx.shard.param)
        while not ctx.cancelled and self.batches < 3:
            self.batches += 1
            ctx.wait(60)


def test_a_handler_runs_against_a_made_context() -> None:
    clock = FakeClock()
    ctx = make_context(shard=1, total=3, param="Shanghai", fencing_token=42, clock=clock)
    handler = Report()
    with LogCapture("INFO") as logs:
        handler.do(ctx)
    assert handler.seen == [(1, 3, "Shanghai", 42)]
    assert handler.batches == 3
    assert clock.waits == [60, 60, 60], "ctx.wait on a FakeClock returns at once"
    assert logs.contains("report for Shanghai")


def test_the_defaults_look_like_a_local_run() -> None:
    before = datetime.now(timezone.utc)
    ctx = make_context()
    assert (ctx.shard.index, ctx.shard.total, ctx.shard.param) == (0, 1, "")
    assert before <= ctx.scheduled_time <= datetime.now(timezone.utc)
    assert ctx.scheduled_time.tzinfo is not None
    assert (ctx.attempt, ctx.step, ctx.params, ctx.fencing_token) == (1, "do", "", None)
    assert not ctx.cancelled and not ctx.is_failover and not ctx.is_triggered
    assert ctx.instance.shard_index == 0 and ctx.instance.shards == (0,)
    assert isinstance(ctx.event, threading.Event)


def test_cancellation() -> None:
    ctx = make_context(cancelled=True)
    assert ctx.cancelled and ctx.wait(30) is True
    with pytest.raises(RunCancelled):
        ctx.raise_if_cancelled()
    handler = Report()
    handler.do(ctx)
    assert handler.batches == 0
    later = make_context()
    later.event.set()
    assert later.cancelled


def test_every_field_can_be_given() -> None:
    fire = datetime(2030, 1, 1, 9, tzinfo=timezone.utc)
    instance = WorkerInstance(id="abc", service="billing", shards=(2, 5), shard_index=5)
    ctx = make_context(
        shard=5,
        total=8,
        param="eu",
        params="5=eu",
        run_id="r1",
        scheduled_time=fire,
        attempt=3,
        step="after",
        is_failover=True,
        is_triggered=True,
        worker_name="billing",
        instance=instance,
    )
    assert (ctx.run_id, ctx.scheduled_time, ctx.attempt, ctx.step) == ("r1", fire, 3, "after")
    assert (ctx.params, ctx.is_failover, ctx.is_triggered) == ("5=eu", True, True)
    assert (ctx.worker_name, ctx.instance) == ("billing", instance)


@pytest.mark.parametrize(("shard", "total"), [(-1, 1), (1, 1), (0, 0)])
def test_a_shard_outside_the_total_is_a_config_error(shard: int, total: int) -> None:
    with pytest.raises(ConfigError, match=r"shard must be in 0\.\.total-1"):
        make_context(shard=shard, total=total)
