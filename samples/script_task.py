#!/usr/bin/env python3
"""A script task: each of 2 shards runs a shell command once; the shard's index and param reach
it as GOWORKER_* environment variables, and its output goes to the log (and here to stdout).

    python samples/script_task.py
"""

from __future__ import annotations

import sys

from goworker_py import LoggerConfig, ScriptHandler, Worker, WorkerConfig

COMMAND = 'echo "shard $GOWORKER_SHARD_INDEX of $GOWORKER_SHARD_TOTAL: param $GOWORKER_SHARD_PARAM"'


def main() -> int:
    config = WorkerConfig(logger=LoggerConfig(level="INFO", sink="stdout"))
    worker = Worker(
        ScriptHandler(COMMAND, shell=True, timeout=30),
        config=config,
        sharding_total_count=2,
        params="0=eu,1=us",
        name="script",
    )
    worker.run()
    print("worker ended:", worker.wait().value, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
