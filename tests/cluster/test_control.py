"""Runtime control of a cluster-mode service against a real ZooKeeper: per worker, cluster-wide
through the control node (``ClusterAdmin``), and from the ``goworker-py`` command line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from goworker_py import Context, DiscoveryConfig, GoWorkerError, Handler, Worker
from goworker_py.cli import main
from goworker_py.cluster.admin import ClusterAdmin, format_status
from goworker_py.errors import ClusterError, ServicePaused

from .conftest import SERVICE, Cluster, Ledger, Observer, check_ledger, wait_until

pytestmark = pytest.mark.timeout(60)

HOURLY = "@every 1h"


def admin_for(hosts: str, service: str = SERVICE) -> ClusterAdmin:
    return ClusterAdmin(DiscoveryConfig(hosts=hosts, connect_timeout=5.0), service)


def runs_of(ledger: Ledger) -> list[int]:
    return sorted(r.shard for r in ledger.snapshot())


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


# -- cluster-wide, through the control node --------------------------------------------------------


def test_cluster_trigger_runs_every_shard_exactly_once(
    cluster: Cluster, observer: Observer, zk_hosts: str
) -> None:
    ledger = Ledger()
    workers = [cluster.make(ledger.handler(), total=6, cron=HOURLY) for _ in range(3)]
    observer.wait_settled(6, 3, workers=workers)
    with admin_for(zk_hosts) as admin:
        assert admin.trigger()["trigger"] == 1
        wait_until(lambda: len(ledger.snapshot()) == 6, 5, what="six triggered runs")
        time.sleep(0.3)
        assert runs_of(ledger) == list(range(6))
        assert admin.trigger()["trigger"] == 2
        wait_until(lambda: len(ledger.snapshot()) == 12, 5, what="a second round")
    assert runs_of(ledger) == sorted(list(range(6)) * 2)
    check_ledger(ledger.snapshot())


def test_cluster_pause_and_resume_hold_every_instance(
    cluster: Cluster, observer: Observer, zk_hosts: str
) -> None:
    ledger = Ledger()
    workers = [cluster.make(ledger.handler(), total=4, cron="@every 100ms") for _ in range(2)]
    observer.wait_settled(4, 2, workers=workers)
    wait_until(lambda: len(ledger.snapshot()) >= 4, 5)
    with admin_for(zk_hosts) as admin:
        admin.pause()
        wait_until(lambda: all(w.paused for w in workers), 5, what="both instances paused")
        time.sleep(0.2)  # runs already begun may end
        claims, mark = observer.claims(), len(ledger.snapshot())
        # An instance that joins a paused service starts paused.
        late = cluster.make(ledger.handler(), total=4, cron="@every 100ms")
        observer.wait_settled(4, 3, workers=[*workers, late])
        assert late.paused
        time.sleep(0.5)
        assert len(ledger.snapshot()) == mark, "no run starts anywhere while paused"
        # A trigger while paused would start nothing: it is refused, and not counted.
        with pytest.raises(ServicePaused, match="is paused"):
            admin.trigger()
        assert admin.control()["trigger"] == 0
        time.sleep(0.3)
        assert len(ledger.snapshot()) == mark
        # A local resume() does not undo a cluster-wide pause.
        workers[0].resume()
        assert workers[0].paused
        with pytest.raises(GoWorkerError, match="paused"):
            workers[0].trigger()
        assert set(observer.claims()) == set(claims)
        admin.resume()
    everyone = [*workers, late]
    wait_until(lambda: not any(w.paused for w in everyone), 5, what="all resumed")
    wait_until(
        lambda: (
            {r.instance for r in ledger.snapshot()[mark:]} == {w.host.instance.id for w in everyone}
        ),
        5,
        what="every instance running again",
    )
    check_ledger(ledger.snapshot())


class Cancellable(Handler):
    """Waits up to 30 s, then leaves through RunCancelled if the run was cancelled."""

    started: list[int] = []
    ended: list[tuple[int, float]] = []

    def do(self, ctx: Context) -> None:
        began = time.monotonic()
        type(self).started.append(ctx.shard.index)
        try:
            ctx.wait(30)
            ctx.raise_if_cancelled()
        finally:
            type(self).ended.append((ctx.shard.index, time.monotonic() - began))


def test_cluster_stop_run_cancels_every_in_flight_run(
    cluster: Cluster, observer: Observer, zk_hosts: str
) -> None:
    workers = [cluster.make(Cancellable, total=4, cron=HOURLY) for _ in range(2)]
    observer.wait_settled(4, 2, workers=workers)
    with admin_for(zk_hosts) as admin:
        admin.trigger()
        wait_until(lambda: len(Cancellable.started) == 4, 5, what="four runs in flight")
        admin.stop_run()
        wait_until(lambda: len(Cancellable.ended) == 4, 5, what="four runs cancelled")
    assert sorted(shard for shard, _ in Cancellable.ended) == [0, 1, 2, 3]
    assert all(took < 10 for _, took in Cancellable.ended)
    for shard in range(4):
        wait_until(
            lambda shard=shard: (observer.marker(shard) or {}).get("state") == "cancelled",
            5,
            what=f"shard {shard}'s marker to say cancelled",
        )
    assert all(w.state.name == "RUNNING" for w in workers)
    assert observer.problems(4, 2) == []


def test_requests_made_before_an_instance_started_are_not_replayed(
    cluster: Cluster, observer: Observer, zk_hosts: str
) -> None:
    ledger = Ledger()
    first = cluster.make(ledger.handler(), total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[first])
    with admin_for(zk_hosts) as admin:
        admin.trigger()
        # Sent at once, stop-run could cancel the triggered runs before their do() started.
        wait_until(lambda: len(ledger.snapshot()) == 2, 5, what="the triggered runs")
        admin.stop_run()
    Cluster.stop(first)
    second = cluster.make(ledger.handler(), total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[second])
    time.sleep(0.5)
    assert len(ledger.snapshot()) == 2, "an old trigger must not fire on a new instance"


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


def test_cli_pause_status_trigger_resume_stop_run(
    cluster: Cluster, observer: Observer, zk_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[worker])
    base = ("--zk", zk_hosts, "--service", SERVICE)
    assert cli("pause", *base) == 0
    assert "paused" in capsys.readouterr().out
    wait_until(lambda: worker.paused, 5)
    assert cli("status", *base) == 0
    out = capsys.readouterr().out
    assert "PAUSED" in out and worker.host.instance.id[:12] in out
    assert cli("resume", *base) == 0
    wait_until(lambda: not worker.paused, 5)
    assert cli("trigger", *base) == 0
    wait_until(lambda: len(ledger.snapshot()) == 2, 5, what="runs from the CLI trigger")
    wait_until(lambda: markers_done(observer, [0, 1]), 5, what="the triggered runs to end")
    assert cli("stop-run", *base) == 0
    assert "stop-run sent" in capsys.readouterr().out
    assert cli("status", "--json", *base) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests"] == {"trigger": 1, "stop_run": 1}
    assert [s["state"] for s in data["shards"]] == ["done", "done"]
    assert data["instances"][0]["id"] == worker.host.instance.id


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


def test_a_failover_run_waits_while_the_service_is_paused(
    cluster: Cluster, observer: Observer, zk_client: Any, zk_hosts: str
) -> None:
    # Shard 0's last run was interrupted on an instance that is gone (its session is dead),
    # and the service is paused before any instance starts.
    fire = time.time() - 0.5
    marker = {
        "owner": "gone",
        "session": 12345,
        "run_id": "r0",
        "fire_time": fire,
        "token": 1,
        "state": "running",
    }
    zk_client.create(f"/goworker/{SERVICE}/running/0", json.dumps(marker).encode(), makepath=True)
    zk_client.create(f"/goworker/{SERVICE}/control", json.dumps({"paused": True}).encode())
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=1, cron=HOURLY)
    observer.wait_settled(1, 1, workers=[worker])
    assert worker.paused
    time.sleep(0.5)
    assert ledger.snapshot() == [], "the failover run must wait for resume"
    with admin_for(zk_hosts) as admin:
        admin.resume()
    wait_until(lambda: len(ledger.snapshot()) == 1, 5, what="the failover run after resume")
    (record,) = ledger.snapshot()
    assert record.failover
    assert abs(record.scheduled - fire) < 1e-3
