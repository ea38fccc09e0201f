"""Prometheus metrics and /healthz, scraped over HTTP from a real server on a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, WorkerTracker, wait_until

from goworker_py import (
    ConfigError,
    Context,
    DefaultRetryPolicy,
    Handler,
    WorkerConfig,
)
from goworker_py.metrics import MetricsServer

pytestmark = pytest.mark.timeout(60)

UTC = WorkerConfig(timezone="UTC")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of metric ``name`` with exactly ``labels`` in Prometheus text format."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        metric, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == wanted:
            return float(value)
    return None


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(port=0, host="127.0.0.1").start()
    yield srv
    srv.stop()


def url(srv: MetricsServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


class Mixed(Handler):
    """Shard 0 succeeds; shard 1 fails its first attempt of do, then succeeds."""

    attempts: dict[str, int] = {}

    def do(self, ctx: Context) -> None:
        if ctx.shard.index == 1 and ctx.attempt == 1:
            raise RuntimeError("first attempt fails")


def test_runs_retries_durations_and_lateness_are_counted(
    workers: WorkerTracker, server: MetricsServer
) -> None:
    worker = workers.make(
        Mixed,
        UTC,
        "@every 100ms",
        sharding_total_count=2,
        name="mixed",
        retry_policy=DefaultRetryPolicy(initial_interval=0.01),
    )
    server.track(worker)
    worker.run()

    def scraped() -> str:
        return get(url(server, "/metrics"))[1]

    wait_until(
        lambda: (sample(scraped(), "goworker_runs_total", worker="mixed", outcome="ok") or 0) >= 6,
        10,
    )
    text = scraped()
    assert (sample(text, "goworker_retries_total", worker="mixed", step="do") or 0) >= 3
    count = sample(text, "goworker_run_duration_seconds_count", worker="mixed")
    assert count is not None and count >= 6
    late = sample(text, "goworker_run_lateness_seconds_count", worker="mixed")
    assert late is not None and late >= 6
    assert sample(text, "goworker_up", worker="mixed") == 1
    assert sample(text, "goworker_shards", worker="mixed") == 2
    assert sample(text, "goworker_health", worker="mixed") == 0
    assert sample(text, "goworker_paused", worker="mixed") == 0


def test_failed_and_cancelled_outcomes_and_misfires(
    workers: WorkerTracker, server: MetricsServer
) -> None:
    class Fails(Handler):
        def do(self, ctx: Context) -> None:
            raise RuntimeError("always")

    failing = workers.make(
        Fails,
        UTC,
        "@every 100ms",
        name="failing",
        retry_policy=DefaultRetryPolicy(non_retryable_error_types=(RuntimeError,)),
    )
    failing.run()

    class Slow(Handler):
        def do(self, ctx: Context) -> None:
            ctx.wait(0.35)  # overruns three fire times of "@every 100ms"
            ctx.raise_if_cancelled()

    slow = workers.make(Slow, UTC, "@every 100ms", name="slow")
    slow.run()
    paused = workers.make(Slow, UTC, "@every 50ms", name="paused")
    paused.pause()
    paused.run()
    server.track(paused)

    def scraped() -> str:
        return get(url(server, "/metrics"))[1]

    wait_until(
        lambda: (
            (sample(scraped(), "goworker_runs_total", worker="failing", outcome="failed") or 0) >= 2
        ),
        10,
        what="failed runs",
    )
    wait_until(
        lambda: (sample(scraped(), "goworker_misfires_total", worker="slow") or 0) >= 2,
        10,
        what=f"misfires of an overrunning worker: {scraped()}",
    )
    wait_until(
        lambda: (sample(scraped(), "goworker_misfires_total", worker="paused") or 0) >= 2,
        10,
        what="fire times passed while paused",
    )
    assert sample(scraped(), "goworker_paused", worker="paused") == 1
    wait_until(lambda: slow.stop_run() == 1, 5, what="a run of 'slow' in flight to cancel")
    wait_until(
        lambda: (
            (sample(scraped(), "goworker_runs_total", worker="slow", outcome="cancelled") or 0) >= 1
        ),
        10,
        what="a cancelled run",
    )


def test_healthz_follows_the_workers(workers: WorkerTracker, server: MetricsServer) -> None:
    code, body = get(url(server, "/healthz"))
    assert code == 503, "no worker: nothing is healthy"
    worker = workers.make(Mixed, UTC, "@every 1h", name="h")
    server.track(worker)
    code, body = get(url(server, "/healthz"))
    assert code == 503 and json.loads(body)["workers"]["h"]["state"] == "INITIALIZED"
    worker.run()
    code, body = get(url(server, "/healthz"))
    assert code == 200
    data = json.loads(body)
    assert data["status"] == "ok"
    assert data["workers"]["h"] == {
        "state": "RUNNING",
        "health": "GREEN",
        "shards": [0],
        "paused": False,
        "ok": True,
    }
    worker.cancel()
    worker.wait(5)
    assert get(url(server, "/healthz"))[0] == 503
    assert get(url(server, "/nope"))[0] == 404


def test_every_labelled_series_exists_before_its_first_event(
    workers: WorkerTracker, server: MetricsServer
) -> None:
    """A rate() or an alert on failures works before the first failure: the series is 0."""
    early = workers.make(Mixed, UTC, "@every 1h", name="early")
    with_worker = MetricsServer(early, port=0, host="127.0.0.1").start()
    try:
        texts = {"early": get(url(with_worker, "/metrics"))[1]}
    finally:
        with_worker.stop()
    late = workers.make(Mixed, UTC, "@every 1h", name="late")
    server.track(late)
    texts["late"] = get(url(server, "/metrics"))[1]
    for name, text in texts.items():
        for outcome in ("ok", "failed", "cancelled"):
            assert sample(text, "goworker_runs_total", worker=name, outcome=outcome) == 0
        for step in ("before", "do", "after"):
            assert sample(text, "goworker_retries_total", worker=name, step=step) == 0
        for counter in ("goworker_misfires_total", "goworker_failovers_total"):
            assert sample(text, counter, worker=name) == 0, counter
        for histogram in ("goworker_run_duration_seconds", "goworker_run_lateness_seconds"):
            assert sample(text, f"{histogram}_count", worker=name) == 0, histogram


def test_metrics_listen_on_this_machine_only_by_default() -> None:
    srv = MetricsServer(port=0).start()
    try:
        assert srv.host == "127.0.0.1"
        assert srv._server is not None and srv._server.server_address[0] == "127.0.0.1"
    finally:
        srv.stop()


def test_a_port_in_use_is_a_clear_error(server: MetricsServer) -> None:
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
        MetricsServer(port=server.port, host="127.0.0.1").start()
    with pytest.raises(ConfigError, match="port must be"):
        MetricsServer(port=70000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cli_run_with_metrics_port(tmp_path: Path) -> None:
    (tmp_path / "metrics_job.py").write_text(
        "from goworker_py import Handler\nclass Job(Handler):\n    def do(self, ctx):\n"
        "        pass\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "goworker_py.cli",
            "run",
            "metrics_job:Job",
            "--cron",
            "@every 100ms",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def ok_runs() -> float:
            try:
                text = get(f"http://127.0.0.1:{port}/metrics")[1]
            except OSError:
                return 0.0
            return sample(text, "goworker_runs_total", worker="Job", outcome="ok") or 0.0

        wait_until(lambda: ok_runs() >= 3, 20, what="runs counted by the CLI's metrics server")
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
