"""The ``goworker-py`` command line against a real ZooKeeper: cluster mode implied by its
options, flags in conflict messages, ``trigger`` refused while paused, and what ``status``
shows (decimal tokens, ISO 8601 times, health names, interrupted runs)."""

from __future__ import annotations

import json
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from goworker_py.cli import main
from goworker_py.cluster.admin import ClusterAdmin, format_status
from goworker_py.config import DiscoveryConfig

from .conftest import SERVICE, Cluster, Ledger, Observer, wait_until

pytestmark = pytest.mark.timeout(60)

HOURLY = "@every 1h"

TOKEN_JOB = """
import json, pathlib
from goworker_py import Handler

class Job(Handler):
    def do(self, ctx):
        pathlib.Path("ran.json").write_text(json.dumps(
            {"token": ctx.fencing_token, "instance": ctx.instance.id, "total": ctx.shard.total}
        ))
"""


def write_job(directory: Path, name: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(TOKEN_JOB))
    return f"{name}:Job"


def test_zk_and_service_without_cluster_flag_run_in_cluster_mode(
    handler_dir: Path, zk_hosts: str, observer: Observer
) -> None:
    """Started like this on N machines, a local-mode worker would run every shard N times."""
    target = write_job(handler_dir, "token_job")
    # A cluster member runs until stopped (a run-once one too): --timeout stops it.
    assert main(["run", target, "--zk", zk_hosts, "--service", SERVICE, "--timeout", "3"]) == 0
    ran = json.loads((handler_dir / "ran.json").read_text())
    assert isinstance(ran["token"], int), "a fencing token: the run held a ZooKeeper claim"
    assert observer.marker(0) is not None and observer.marker(0)["state"] == "done"  # type: ignore[index]


def test_a_settings_conflict_names_the_overwrite_flag(
    handler_dir: Path,
    cluster: Cluster,
    observer: Observer,
    zk_hosts: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = cluster.make(Ledger().handler(), total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[first])
    target = write_job(handler_dir, "conflict_job")
    argv = ["run", target, "--zk", zk_hosts, "--service", SERVICE, "--shards", "3"]
    assert main([*argv, "--cron", HOURLY]) == 2
    err = capsys.readouterr().err
    assert "has --shards 2 but this instance has --shards 3" in err
    assert "pass --overwrite to replace them" in err
    assert "overwrite=True" not in err and "sharding_total_count" not in err
    # --overwrite replaces the stored settings; --timeout ends the worker.
    assert main([*argv, "--cron", HOURLY, "--overwrite", "--timeout", "0.5"]) == 0
    assert "worker ended (timed_out)" in capsys.readouterr().err
    assert (observer.config() or {}).get("sharding_total_count") == 3
    observer.wait_settled(3, 1, workers=[first])


def test_trigger_of_a_paused_service_is_refused_and_not_counted(
    cluster: Cluster, observer: Observer, zk_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=2, cron=HOURLY)
    observer.wait_settled(2, 1, workers=[worker])
    base = ("--zk", zk_hosts, "--service", SERVICE)
    assert main(["pause", *base]) == 0
    wait_until(lambda: worker.paused, 5)
    capsys.readouterr()
    assert main(["trigger", *base]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"goworker-py: service {SERVICE!r} is paused: trigger starts no run while paused, so "
        "nothing was triggered; resume the service first\n"
    )
    assert main(["status", "--json", *base]) == 0
    assert json.loads(capsys.readouterr().out)["requests"]["trigger"] == 0
    time.sleep(0.3)
    assert ledger.snapshot() == []
    # Once resumed, a trigger counts and runs.
    assert main(["resume", *base]) == 0
    wait_until(lambda: not worker.paused, 5)
    assert main(["trigger", *base]) == 0
    wait_until(lambda: len(ledger.snapshot()) == 2, 5, what="the triggered runs")


def parse_iso(text: Any) -> datetime:
    assert isinstance(text, str), text
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return moment


def test_status_shows_decimal_tokens_health_names_and_iso_times(
    cluster: Cluster, observer: Observer, zk_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = Ledger()
    worker = cluster.make(ledger.handler(), total=2, cron="0 0 * * *")
    observer.wait_settled(2, 1, workers=[worker])
    before = time.time()
    worker.trigger()
    wait_until(
        lambda: all((observer.marker(s) or {}).get("state") == "done" for s in (0, 1)),
        5,
        what="two runs done",
    )
    claims = observer.claims()
    base = ("--zk", zk_hosts, "--service", SERVICE)
    assert main(["status", "--json", *base]) == 0
    data = json.loads(capsys.readouterr().out)
    (instance,) = data["instances"]
    assert instance["health"] == "GREEN"
    assert (
        abs(parse_iso(instance["created_at"]).timestamp() - worker.host.instance.created_at) < 1e-3
    )
    assert before - 1 <= parse_iso(data["taken_at"]).timestamp() <= time.time()
    for shard in data["shards"]:
        assert shard["token"] == claims[shard["shard"]].token  # a plain integer
        assert before - 0.01 <= parse_iso(shard["fire_time"]).timestamp() <= time.time()
        assert (parse_iso(shard["next_fire"]).hour, parse_iso(shard["next_fire"]).minute) == (0, 0)
    assert main(["status", *base]) == 0
    text = capsys.readouterr().out
    for shard in (0, 1):
        assert f" {claims[shard].token} " in text
    assert "0x" not in text


def test_status_shows_a_run_whose_instance_is_gone_as_interrupted(
    cluster: Cluster, observer: Observer, zk_client: Any, zk_hosts: str
) -> None:
    # Shard 0's marker says running, written by a session that no longer exists.
    marker = {
        "owner": "gone",
        "lease": "0x3039",
        "run_id": "r0",
        "fire_time": time.time() - 60,
        "token": 1,
        "state": "running",
    }
    zk_client.create(f"/goworker/{SERVICE}/running/0", json.dumps(marker).encode(), makepath=True)
    config = DiscoveryConfig(hosts=zk_hosts, connect_timeout=5.0)
    with ClusterAdmin(config, SERVICE) as admin:
        (shard,) = admin.status().shards
        assert shard.state == "interrupted"
        assert "interrupted" in format_status(admin.status())
    # A run in flight on a live instance shows as running.
    ledger = Ledger()
    worker = cluster.make(ledger.handler(duration=30), total=1, cron=HOURLY, failover=False)
    observer.wait_settled(1, 1, workers=[worker])
    worker.trigger()
    wait_until(lambda: ledger.in_flight(), 5, what="a run in flight")
    wait_until(lambda: (observer.marker(0) or {}).get("run_id") != "r0", 5)
    with ClusterAdmin(config, SERVICE) as admin:
        (shard,) = admin.status().shards
    assert shard.state == "running"
    assert shard.owner == worker.host.instance.id
