"""A cluster worker in an OS process of its own, for ``test_workers.py``.

Every run appends one JSON line (shard, instance id, pid, fencing token, scheduled time, start,
end, failover flag) to the ledger file with a single ``O_APPEND`` write, so the lines of several
processes never interleave. Times are ``time.monotonic()``, which on Linux is one clock for every
process of the machine. SIGTERM stops the worker gracefully and the process exits 0.

``--discovery`` is a URL of any backend (``etcd://h:p``, ``redis://h:p/0``, ``zookeeper://h:p``),
with ``--namespace`` for the service's keys.

    python worker_process.py --discovery etcd://127.0.0.1:2379 --namespace t1 --ledger l.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from loguru import logger

from goworker_py import (
    Context,
    DiscoveryConfig,
    ExitReason,
    Handler,
    Model,
    Worker,
    WorkerConfig,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--discovery", required=True, help="a discovery URL (any backend)")
    parser.add_argument("--namespace", default="goworker")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--service", default="svc")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--session-timeout", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=0.05)
    parser.add_argument("--cron", default="@every 100ms")
    parser.add_argument("--misfire-policy", default="skip")
    args = parser.parse_args(argv)
    logger.remove()
    logger.add(sys.stderr, level="INFO", format="{time:HH:mm:ss.SSS} {level} {message}")
    ledger = os.open(args.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    settings = {
        "session_timeout": args.session_timeout,
        "connect_timeout": 10.0,
        "namespace": args.namespace,
    }
    discovery = DiscoveryConfig.from_url(args.discovery, **settings)

    class Recording(Handler):
        def do(self, ctx: Context) -> None:
            start = time.monotonic()
            ctx.wait(args.duration)
            line = json.dumps(
                {
                    "shard": ctx.shard.index,
                    "instance": ctx.instance.id,
                    "pid": os.getpid(),
                    "token": ctx.fencing_token,
                    "scheduled": ctx.scheduled_time.timestamp(),
                    "start": start,
                    "end": time.monotonic(),
                    "failover": ctx.is_failover,
                    "cancelled": ctx.cancelled,
                }
            )
            os.write(ledger, (line + "\n").encode())

    worker = Worker(
        Recording,
        config=WorkerConfig(
            discovery=discovery,
            shutdown_timeout=5.0,
            misfire_policy=args.misfire_policy,
        ),
        cron=args.cron,
        model=Model.CLUSTER,
        service_name=args.service,
        sharding_total_count=args.shards,
        handle_signals=True,
    )
    worker.run()
    print(f"ready {worker.host.instance.id} pid {os.getpid()}", flush=True)
    reason = worker.wait()
    print(f"exit {reason.value}", flush=True)
    os.close(ledger)
    return 0 if reason in (ExitReason.SIGNALLED, ExitReason.CANCELLED) else 1


if __name__ == "__main__":
    sys.exit(main())
