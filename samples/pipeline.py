#!/usr/bin/env python3
"""A WorkerGroup pipeline: "extract" every 2 seconds on 2 shards; "load" runs after it, shard
by shard, for the same fire time (depends_on). Stops after about six seconds (or Ctrl-C).

    python samples/pipeline.py
"""

from __future__ import annotations

from goworker_py import Context, Handler, Worker, WorkerGroup


class Extract(Handler):
    def do(self, ctx: Context) -> None:
        print(f"extract shard {ctx.shard.index} for {ctx.scheduled_time:%H:%M:%S}", flush=True)


class Load(Handler):
    def do(self, ctx: Context) -> None:
        print(f"load    shard {ctx.shard.index} for {ctx.scheduled_time:%H:%M:%S}", flush=True)


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
