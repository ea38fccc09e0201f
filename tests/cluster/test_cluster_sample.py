"""samples/cluster.py, as its docstring says: two terminals against one ZooKeeper split the
service's two shards; when one stops, the other takes its shard."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from helpers import SAMPLES, Process

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def test_two_instances_split_the_shards_and_one_takes_over(
    processes: list[Process], zk_hosts: str
) -> None:
    def start() -> Process:
        process = Process([str(SAMPLES / "cluster.py"), f"zookeeper://{zk_hosts}", "* * * * * *"])
        processes.append(process)
        return process

    first = start()
    first.wait_for_stdout("shard 0/2", timeout=20)
    first.wait_for_stdout("shard 1/2", timeout=20)
    second = start()
    second.wait_for_stdout(" param=", timeout=20)
    mine = {line.split()[1] for line in second.stdout if line.startswith("shard ")}
    assert len(mine) == 1, second.report()
    second.proc.send_signal(signal.SIGINT)
    assert second.finish(timeout=15) == 0, second.report()
    (moved,) = mine
    count = first.count(f"shard {moved} param=")
    first.wait_for_stdout(f"shard {moved} param=", timeout=15, count=count + 1)
    first.proc.send_signal(signal.SIGINT)
    assert first.finish(timeout=15) == 0, first.report()
