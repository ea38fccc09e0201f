"""Prometheus metrics and a ``/healthz`` endpoint (the optional extra ``goworker-py[metrics]``).

::

    from goworker_py.metrics import MetricsServer

    server = MetricsServer(worker, port=9100).start()     # GET /metrics, GET /healthz

or ``goworker-py run ... --metrics-port 9100``. Exposed (label ``worker``; ``outcome`` is
``ok``, ``failed`` or ``cancelled``; ``step`` is ``before``, ``do`` or ``after``):

=========================================  =====================================================
``goworker_runs_total{outcome}``           runs ended, by outcome (failures are ``failed``)
``goworker_run_duration_seconds``          histogram of run durations
``goworker_run_lateness_seconds``          histogram: run start behind its fire time (scheduled
                                           runs; not triggered or failover runs)
``goworker_retries_total{step}``           attempts after a failed one
``goworker_misfires_total``                fire times that passed without a run
``goworker_failovers_total``               runs re-run after a dead instance (cluster mode)
``goworker_rebalances_total``              membership changes that re-balanced (cluster mode)
``goworker_shards``                        shards the worker runs now
``goworker_health``                        0 GREEN, 1 YELLOW, 2 RED
``goworker_backend_connected``             1 while connected to the coordination backend
                                           (labels: worker, backend)
``goworker_paused``                        1 while paused
``goworker_up``                            1 while the worker is running
=========================================  =====================================================

Every labelled series of a tracked worker exists from the start at 0 (``outcome="failed"``
before the first failure), so a rate or an alert on it works before its first event.

``/healthz`` answers 200 while every worker runs and none is ``RED``, else 503; its JSON body
lists each worker's state, health, shards and paused flag.

The server listens on 127.0.0.1 by default (this machine only); give ``host="0.0.0.0"`` (the
command line's ``--metrics-host 0.0.0.0``) for a Prometheus on another machine to scrape it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from goworker_py.cluster.backend import ConnectionState
from goworker_py.errors import ConfigError
from goworker_py.hooks import add_observer, remove_observer

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Histogram,
        generate_latest,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "goworker_py.metrics needs prometheus-client: pip install 'goworker-py[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from goworker_py.handler import Context
    from goworker_py.run import RunResult
    from goworker_py.worker import Worker

#: The label values of a worker's series, created at 0 when the worker is tracked.
OUTCOMES = ("ok", "failed", "cancelled")
STEPS = ("before", "do", "after")

#: Histogram buckets (seconds) of run durations and of lateness behind the fire time.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)
LATENESS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)


class GoWorkerMetrics:
    """The metrics of a set of workers, on a Prometheus registry (a fresh one by default)."""

    def __init__(self, *workers: Worker, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.workers: list[Worker] = list(workers)
        self._lock = threading.Lock()
        self.runs = Counter(
            "goworker_runs_total",
            "Runs ended, by outcome",
            ["worker", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "goworker_run_duration_seconds",
            "Run durations",
            ["worker"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "goworker_run_lateness_seconds",
            "Run start behind its fire time (scheduled runs)",
            ["worker"],
            buckets=LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "goworker_retries_total",
            "Attempts after a failed one",
            ["worker", "step"],
            registry=self.registry,
        )
        self.misfires = Counter(
            "goworker_misfires_total",
            "Fire times that passed without a run",
            ["worker"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "goworker_failovers_total",
            "Runs re-run after a dead instance",
            ["worker"],
            registry=self.registry,
        )
        self.registry.register(_WorkerCollector(self))
        for worker in self.workers:
            self._create_series(worker.name)
        add_observer(self)

    def track(self, worker: Worker) -> None:
        """Also report ``worker``'s state gauges (its runs are counted in any case)."""
        with self._lock:
            if worker not in self.workers:
                self.workers.append(worker)
        self._create_series(worker.name)

    def _create_series(self, name: str) -> None:
        """Every labelled series of worker ``name`` at 0, before its first event."""
        for outcome in OUTCOMES:
            self.runs.labels(name, outcome)
        for step in STEPS:
            self.retries.labels(name, step)
        for per_worker in (self.duration, self.lateness, self.misfires, self.failovers):
            per_worker.labels(name)

    def close(self) -> None:
        """Stop counting runs."""
        remove_observer(self)

    # -- RunObserver ------------------------------------------------------------------------------

    def run_finished(
        self, worker: str, ctx: Context, result: RunResult, started: float, ended: float
    ) -> None:
        outcome = "ok" if result.ok else ("cancelled" if result.cancelled else "failed")
        self.runs.labels(worker, outcome).inc()
        self.duration.labels(worker).observe(max(ended - started, 0.0))
        if ctx.is_failover:
            self.failovers.labels(worker).inc()
        elif not ctx.is_triggered:
            self.lateness.labels(worker).observe(max(started - ctx.scheduled_time.timestamp(), 0.0))

    def retried(self, worker: str, step: str) -> None:
        self.retries.labels(worker, step).inc()

    def misfired(self, worker: str, count: int) -> None:
        self.misfires.labels(worker).inc(count)

    # -- health -----------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, details)``: healthy while every worker runs and none is RED."""
        from goworker_py.instance import HealthStatus
        from goworker_py.worker import WorkerState

        with self._lock:
            workers = list(self.workers)
        details: dict[str, Any] = {}
        healthy = bool(workers)
        for worker in workers:
            running = worker.state is WorkerState.RUNNING and not worker.stopping
            ok = running and worker.health is not HealthStatus.RED
            healthy = healthy and ok
            details[worker.name] = {
                "state": worker.state.name,
                "health": worker.health.name,
                "shards": list(worker.shards),
                "paused": worker.paused,
                "ok": ok,
            }
        return healthy, details


class _WorkerCollector:
    """Gauges read from the workers at scrape time: nothing on the run path."""

    def __init__(self, metrics: GoWorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from goworker_py.worker import WorkerState

        gauges = {
            "up": GaugeMetricFamily("goworker_up", "1 while the worker runs", labels=["worker"]),
            "shards": GaugeMetricFamily(
                "goworker_shards", "Shards the worker runs now", labels=["worker"]
            ),
            "health": GaugeMetricFamily(
                "goworker_health", "0 GREEN, 1 YELLOW, 2 RED", labels=["worker"]
            ),
            "paused": GaugeMetricFamily("goworker_paused", "1 while paused", labels=["worker"]),
            "connected": GaugeMetricFamily(
                "goworker_backend_connected",
                "1 while connected to the coordination backend with a live lease (cluster mode)",
                labels=["worker", "backend"],
            ),
        }
        rebalances = CounterMetricFamily(
            "goworker_rebalances", "Membership changes that re-balanced", labels=["worker"]
        )
        with self.metrics._lock:
            workers = list(self.metrics.workers)
        for worker in workers:
            name = worker.name
            gauges["up"].add_metric([name], 1 if worker.state is WorkerState.RUNNING else 0)
            gauges["shards"].add_metric([name], len(worker.shards))
            gauges["health"].add_metric([name], int(worker.health))
            gauges["paused"].add_metric([name], 1 if worker.paused else 0)
            host = worker.host
            backend = getattr(host, "backend", None)
            if backend is not None:
                connected = backend.state is ConnectionState.CONNECTED
                gauges["connected"].add_metric([name, backend.protocol], 1 if connected else 0)
                rebalances.add_metric([name], getattr(host, "rebalances", 0))
        yield from gauges.values()
        yield rebalances


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/healthz`` on a daemon thread.

    :param workers: the workers whose state ``/healthz`` and the gauges report.
    :param port: TCP port (0 picks a free one: see :attr:`port` after :meth:`start`).
    :param host: address to listen on: 127.0.0.1 (this machine only) unless given, e.g.
        ``"0.0.0.0"`` for every interface.
    """

    def __init__(self, *workers: Worker, port: int = 9100, host: str = "127.0.0.1") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"metrics port must be an int in 0..65535, got {port!r}")
        self.metrics = GoWorkerMetrics(*workers)
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> MetricsServer:
        """Listen and serve; raise :class:`ConfigError` if the port cannot be bound."""
        metrics = self.metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
                elif path == "/healthz":
                    healthy, details = metrics.health()
                    body = json.dumps(
                        {"status": "ok" if healthy else "unhealthy", "workers": details}
                    ).encode()
                    self._send(200 if healthy else 503, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /healthz\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes are not worth a log line each

        try:
            server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            self.metrics.close()
            raise ConfigError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="goworker:metrics", daemon=True).start()
        return self

    def track(self, worker: Worker) -> None:
        """Report ``worker`` too."""
        self.metrics.track(worker)

    def stop(self) -> None:
        """Stop serving and counting."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.metrics.close()
