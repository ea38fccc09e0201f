"""WorkerGroup dependencies in cluster mode: two instances each run the same group (extract ->
load, 4 shards each) on a real ZooKeeper; a load shard runs after its extract shard succeeded for
the same fire time, on whichever instance owns each."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from goworker_py import (
    Context,
    DefaultRetryPolicy,
    Handler,
    Model,
    Worker,
    WorkerGroup,
)

from .conftest import Cluster, wait_until

pytestmark = pytest.mark.timeout(90)

TOTAL = 4


@dataclass(frozen=True)
class Run:
    worker: str
    instance: str
    shard: int
    fire: float
    start: float
    end: float
    ok: bool


class Book:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[Run] = []

    def handler(self, fail_shard: int | None = None, duration: float = 0.02) -> type[Handler]:
        book = self

        class Recorded(Handler):
            def do(self, ctx: Context) -> None:
                start = time.monotonic()
                ctx.wait(duration)
                ok = ctx.shard.index != fail_shard
                with book.lock:
                    book.runs.append(
                        Run(
                            ctx.worker_name,
                            ctx.instance.id,
                            ctx.shard.index,
                            ctx.scheduled_time.timestamp(),
                            start,
                            time.monotonic(),
                            ok,
                        )
                    )
                if not ok:
                    raise RuntimeError(f"extract fails on shard {ctx.shard.index}")

        return Recorded

    def of(self, worker: str) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.worker == worker]


@pytest.fixture
def groups() -> Iterator[list[WorkerGroup]]:
    made: list[WorkerGroup] = []
    yield made
    for group in made:
        group.cancel()
    for group in made:
        with contextlib.suppress(Exception):
            group.wait(20)


def instance_group(cluster: Cluster, book: Book, fail_shard: int | None = None) -> WorkerGroup:
    config = cluster.config()
    group = WorkerGroup(handle_signals=False)
    group.add(
        Worker(
            book.handler(fail_shard),
            config,
            "@every 400ms",
            model=Model.CLUSTER,
            service_name="extract",
            sharding_total_count=TOTAL,
            name="extract",
            retry_policy=DefaultRetryPolicy(non_retryable_error_types=(RuntimeError,)),
        )
    )
    group.add(
        Worker(
            book.handler(),
            config,
            model=Model.CLUSTER,
            service_name="load",
            sharding_total_count=TOTAL,
            name="load",
        ),
        depends_on=["extract"],
    )
    return group


def test_load_follows_extract_shard_by_shard_across_instances(
    cluster: Cluster, groups: list[WorkerGroup]
) -> None:
    book = Book()
    for _ in range(2):
        group = instance_group(cluster, book, fail_shard=3)
        groups.append(group)
        group.run()
    wait_until(
        lambda: {r.shard for r in book.of("load")} >= {0, 1, 2}, 20, what="load runs on 0, 1, 2"
    )
    time.sleep(1.0)
    extracts = {(r.shard, r.fire): r for r in book.of("extract")}
    loads = book.of("load")
    assert all(r.shard != 3 for r in loads), "extract always fails on shard 3: no load there"
    for load in loads:
        upstream = extracts[(load.shard, load.fire)]  # same shard, same fire time
        assert upstream.ok
        assert load.start >= upstream.end, "load started before its extract ended"
    pairs = [(r.shard, r.fire) for r in loads]
    assert len(pairs) == len(set(pairs)), "a (shard, fire time) was loaded twice"
    # Each service's shards are spread over its two instances, owned independently.
    assert len({r.instance for r in book.of("extract")}) == 2
    assert len({r.instance for r in book.of("load")}) == 2


def test_a_load_shard_moving_does_not_repeat_a_fire(
    cluster: Cluster, groups: list[WorkerGroup]
) -> None:
    book = Book()
    first = instance_group(cluster, book)
    groups.append(first)
    first.run()
    wait_until(lambda: len(book.of("load")) >= 8, 20, what="loads on one instance")
    second = instance_group(cluster, book)
    groups.append(second)
    second.run()
    wait_until(lambda: len({r.instance for r in book.of("load")}) == 2, 20, what="load on both")
    time.sleep(1.2)
    first.cancel()
    first.wait(20)
    mark = len(book.of("load"))
    wait_until(lambda: len(book.of("load")) >= mark + 8, 20, what="loads after the hand-over")
    pairs = [(r.shard, r.fire) for r in book.of("load")]
    assert len(pairs) == len(set(pairs)), "a (shard, fire time) was loaded twice"
