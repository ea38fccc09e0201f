"""Cluster-mode metrics against a real ZooKeeper: session, re-balances, failovers."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from goworker_py.metrics import MetricsServer

from .conftest import SERVICE, Cluster, Ledger, Observer, wait_until

pytestmark = pytest.mark.timeout(60)


def scrape(server: MetricsServer) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_session_rebalances_and_failovers_are_reported(
    cluster: Cluster, observer: Observer, zk_client: Any
) -> None:
    # Shard 1's last run was interrupted on an instance that is gone: the first owner re-runs it.
    marker = {
        "owner": "gone",
        "session": 12345,
        "run_id": "r1",
        "fire_time": time.time() - 0.2,
        "token": 1,
        "state": "running",
    }
    zk_client.create(f"/goworker/{SERVICE}/running/1", json.dumps(marker).encode(), makepath=True)
    server = MetricsServer(port=0, host="127.0.0.1").start()
    try:
        ledger = Ledger()
        first = cluster.make(ledger.handler(), total=2, cron="@every 1h", name="first")
        server.track(first)
        observer.wait_settled(2, 1, workers=[first])
        wait_until(lambda: any(r.failover for r in ledger.snapshot()), 5, what="failover run")
        second = cluster.make(ledger.handler(), total=2, cron="@every 1h", name="second")
        observer.wait_settled(2, 2, workers=[first, second])
        wait_until(
            lambda: scrape(server).get('goworker_rebalances_total{worker="first"}', 0) >= 1,
            5,
            what="a re-balance counted",
        )
        # The failover run is counted when it ends, just after its handler returned.
        wait_until(
            lambda: scrape(server).get('goworker_failovers_total{worker="first"}', 0) >= 1,
            5,
            what="the failover run counted",
        )
        values = scrape(server)
        assert values['goworker_backend_connected{backend="zookeeper",worker="first"}'] == 1
        assert values['goworker_failovers_total{worker="first"}'] == 1
        assert values['goworker_shards{worker="first"}'] == 1
        assert values['goworker_health{worker="first"}'] == 0
    finally:
        server.stop()
