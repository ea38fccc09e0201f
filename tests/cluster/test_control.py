"""Runtime control of a cluster-mode service against a real ZooKeeper: per worker, the run
markers and claims behind trigger and ``status``, and what the command line says is wrong.
(Cluster-wide pause / resume / trigger / stop-run through ``ClusterAdmin`` and the command
line, on every backend: ``tests/backends/test_workers.py``.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from goworker_py import Context, DiscoveryConfig, Handler, Worker
from goworker_py.cli import main
from goworker_py.cluster.admin import ClusterAdmin, format_status
from goworker_py.errors import ClusterError

from .conftest import SERVICE, Cluster, Ledger, Observer, check_ledger, wait_until

pytestmark = pytest.mark.timeout(60)

HOURLY = "@every 1h"


def admin_for(hosts: str, service: str = SERVICE) -> ClusterAdmin:
    return ClusterAdmin(DiscoveryConfig(hosts=hosts, connect_timeout=5.0), service)


def cli(*args: str) -> int:
    return main(list(args))


def markers_done(observer: Observer, shards: Iterable[int]) -> bool:
    """True once the last run of each of ``shards`` has ended ``done`` (its marker says so)."""
    return all((observer.marker(shard) or {}).get("state") == "done" for shard in shards)


# -- one worker's controls in cluster mode ---------------------------------------------------------


def test_trigger_runs_the_shards_this_instance_owns(cluster: Cluster, observer: Observer) -> None:
    ledger = Ledger()
    a = cluster.make(ledger.handler(), total=4, cron=HOURLY)
    b = cluster.make(ledger.handler(), total=4, cron=HOURLY)
    owners = observer.wait_settled(4, 2, workers=[a, b])
    before = time.time()
    assert a.trigger() == len(a.shards) == 2
    wait_until(lambda: len(ledger.snapshot()) == 2, 5, what="A's two triggered runs")
    records = ledger.snapshot()
    assert sorted(r.shard for r in records) == list(a.shards)
    # The handler has returned; the run's marker is written at its end, just after.
    wait_until(lambda: markers_done(observer, a.shards), 5, what="A's run markers to say done")
    claims = observer.claims()
    for record in records:
        assert record.instance == a.host.instance.id == owners[record.shard]
        assert record.token == claims[record.shard].token
        marker = observer.marker(record.shard)
        assert marker is not None and marker["state"] == "done"
        assert before - 0.01 <= marker["fire_time"] <= time.time()
    time.sleep(0.3)
    assert len(ledger.snapshot()) == 2, "B was not asked and runs nothing"


def test_paused_instance_keeps_its_claims_and_starts_no_run(
    cluster: Cluster, observer: Observer
) -> None:
    ledger = Ledger()
    a = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
    b = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
    observer.wait_settled(4, 2, workers=[a, b])
    a.pause()
    time.sleep(0.3)
    claims = observer.claims()
    mark = len(ledger.snapshot())
    time.sleep(0.6)
    after = ledger.snapshot()[mark:]
    assert after, "B goes on running"
    assert {r.instance for r in after} == {b.host.instance.id}, "A started no run while paused"
    assert observer.claims() == claims, "claims (and fencing tokens) unchanged while paused"
    a.resume()
    wait_until(
        lambda: any(r.instance == a.host.instance.id for r in ledger.snapshot()[mark:]),
        5,
        what="A running again after resume()",
    )
    check_ledger(ledger.snapshot())


# -- status and the command line -------------------------------------------------------------------


def test_status_shows_members_owners_last_runs_and_next_fire(
    cluster: Cluster, observer: Observer, zk_hosts: str
) -> None:
    ledger = Ledger()
    workers = [cluster.make(ledger.handler(), total=3, cron="0 0 * * *") for _ in range(2)]
    owners = observer.wait_settled(3, 2, workers=workers)
    workers[0].trigger()
    wait_until(lambda: len(ledger.snapshot()) == len(workers[0].shards), 5)
    wait_until(lambda: markers_done(observer, workers[0].shards), 5, what="the runs to end")
    with admin_for(zk_hosts) as admin:
        status = admin.status()
    assert status.settings == {"sharding_total_count": 3, "params": "", "schedule": "0 0 * * *"}
    assert not status.paused
    assert [m.instance.id for m in status.instances] == [
        w.host.instance.id
        for w in sorted(workers, key=lambda w: int(w.host.backend.node.rsplit("-", 1)[1]))
    ]
    assert {s.shard: s.owner for s in status.shards} == owners
    claims = observer.claims()
    for shard in status.shards:
        assert shard.token == claims[shard.shard].token
        ran = shard.shard in workers[0].shards
        assert shard.state == ("done" if ran else None)
        assert shard.next_fire is not None
        assert (shard.next_fire.hour, shard.next_fire.minute) == (0, 0)
    text = format_status(status)
    assert "instances (2):" in text and "shards (3):" in text and "done" in text
    data = status.to_dict()
    json.dumps(data)  # JSON-ready
    assert data["shards"][0]["next_fire"].endswith("+00:00")


def test_cli_names_what_is_wrong(
    cluster: Cluster, zk_hosts: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli("status", "--zk", zk_hosts, "--service", "nope") == 2
    assert "no service 'nope'" in capsys.readouterr().err
    assert cli("pause", "--service", SERVICE) == 2
    assert "--zk" in capsys.readouterr().err
    config = tmp_path / "goworker.toml"
    config.write_text('[discovery]\nhosts = "127.0.0.1:1"\nconnect_timeout = 0.5\n')
    began = time.monotonic()
    assert cli("trigger", "--config", str(config), "--service", SERVICE) == 2
    assert "cannot reach ZooKeeper" in capsys.readouterr().err
    assert time.monotonic() - began < 10
    with pytest.raises(ClusterError, match="no service"):
        admin_for(zk_hosts, "missing").__enter__()


class Counter(Handler):
    runs = 0

    def do(self, ctx: Context) -> None:
        type(self).runs += 1


def test_worker_started_locally_paused_joins_and_holds_its_shards(
    cluster: Cluster, observer: Observer
) -> None:
    worker: Worker = cluster.make(Counter, total=2, cron="@every 50ms", start=False)
    worker.pause()
    worker.run()
    observer.wait_settled(2, 1, workers=[worker])
    time.sleep(0.3)
    assert Counter.runs == 0
    worker.resume()
    wait_until(lambda: Counter.runs >= 2, 5)
