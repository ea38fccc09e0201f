#!/usr/bin/env python3
"""A WorkerGroup pipeline: "extract" every 2 seconds on 2 shards; "load" runs after it, shard
by shard, for the same fire time (depends_on). Stops after about six seconds (or Ctrl-C).

    python samples/pipeline.py
"""

from __future__ import annotations

import threading

from goworker_py import Context, Handler, Worker, WorkerGroup

_print_lock = threading.Lock()  # shard threads print at the same time: one line at a time


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


class Extract(Handler):
    def do(self, ctx: Context) -> None:
        say(f"extract shard {ctx.shard.index} for {ctx.scheduled_time:%H:%M:%S}")


class Load(Handler):
    def do(self, ctx: Context) -> None:
        say(f"load    shard {ctx.shard.index} for {ctx.scheduled_time:%H:%M:%S}")


def main() -> int:
    group = WorkerGroup()
    group.add(
        Worker(Extract, cron="*/2 * * * * *", name="extract", sharding_total_count=2, timeout=6.0)
    )
    group.add(Worker(Load, name="load", sharding_total_count=2), depends_on=["extract"])
    group.run()
    results = group.wait()
    print(
        "ended:",
        ", ".join(f"{name} {reason.value}" for name, reason in results.items()),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
