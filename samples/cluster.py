"""Cluster mode (the seed's cluster example): a service with 2 shards, params "0=a,1=b".

Start it in several terminals against one coordination server; the instances split the shards
between them, and when one stops (Ctrl-C) or dies (kill -9) its shards move to the others.

    python samples/cluster.py                                  # ZooKeeper at 127.0.0.1:2181
    python samples/cluster.py zookeeper://127.0.0.1:2181 "*/2 * * * * *"
    python samples/cluster.py etcd://127.0.0.1:2379            # etcd v3 (goworker-py[etcd])
    python samples/cluster.py redis://127.0.0.1:6379/0         # Redis (goworker-py[redis])
    python samples/cluster.py 127.0.0.1:2181                   # plain hosts: ZooKeeper
    DISCOVERY=etcd://10.0.0.5:2379 python samples/cluster.py
"""

from __future__ import annotations

import os
import sys
import threading

from goworker_py import (
    Context,
    DiscoveryConfig,
    Handler,
    Model,
    WatchInfo,
    Worker,
    WorkerConfig,
)

_print_lock = threading.Lock()  # shard threads print at the same time: one line at a time


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


class PrintShard(Handler):
    def watch(self, info: WatchInfo) -> None:
        members = ", ".join(f"{m.host}:{m.pid}{list(m.shards)}" for m in info.cluster_instances)
        say(f"watch: shard {info.current_instance.shard_index} here; members {members}")

    def do(self, ctx: Context) -> None:
        say(
            f"shard {ctx.shard.index}/{ctx.shard.total} param={ctx.shard.param!r} "
            f"token={ctx.fencing_token} failover={ctx.is_failover} "
            f"fire={ctx.scheduled_time:%H:%M:%S}"
        )


def main() -> int:
    where = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DISCOVERY", "127.0.0.1:2181")
    cron = sys.argv[2] if len(sys.argv) > 2 else "*/5 * * * * *"
    timeouts = {"session_timeout": 4.0, "connect_timeout": 5.0}
    if "://" in where:
        discovery = DiscoveryConfig.from_url(where, **timeouts)
    else:
        discovery = DiscoveryConfig(hosts=where, **timeouts)
    config = WorkerConfig(discovery=discovery, shutdown_timeout=5)
    worker = Worker(
        PrintShard,
        config=config,
        cron=cron,
        model=Model.CLUSTER,
        service_name="cluster-sample",
        sharding_total_count=2,
        params="0=a,1=b",
    )
    worker.run()
    print(f"worker ended: {worker.wait().value}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
