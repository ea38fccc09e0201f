"""B3's cluster-mode run cost on any backend (issue #11): what one run costs, and how many
requests and writes it sends to the coordination server.

A real cluster-mode ``Worker`` (one shard, a daily schedule that never fires meanwhile, lease
10 s) claims its shard on the target's server; its shard runner's ``execute(fire_time)`` is
then called directly (a fire time an hour ahead: ``begin_run``'s misfire check never trips),
as ``bench_run_overhead`` does on ZooKeeper. Measured:

- the floor: the backend's own ``begin_run`` + ``end_run`` called through the seam (what a run
  writes, nothing else), each pair timed;
- ``runs`` x ``reps`` executes (median repetition, minus the direct call of the handler): the
  framework's overhead per run, its round trips included;
- the server's request counts over those runs (``_targets.Target.counter``: etcd's gRPC
  messages and Raft proposals, Redis's top-level commands and scripts), per completed run.
  The lease's keep-alives that went by meanwhile (about 0.3/s at T = 10 s: etcd's
  ``LeaseKeepAlive`` requests, Redis's ``TICK`` scripts; counted by the backend object) are
  subtracted, and reported apart.
"""

from __future__ import annotations

import functools
import statistics
import time
import timeit
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from _cluster import WorkerPool, one_shard_host
from _common import Report, fmt_stats, stats
from _targets import Target, figure_name

#: Writes (and round trips) per cluster-mode run: begin and end.
TARGET_PER_RUN = 2.0


def _per_call_us(func: Any, runs: int, reps: int) -> tuple[float, float]:
    """(median, min) over ``reps`` of the µs per call of ``func`` (as bench_run_overhead's)."""
    func()
    timings = [timeit.Timer(func).timeit(runs) / runs * 1e6 for _ in range(reps)]
    return statistics.median(timings), min(timings)


class KeepAlives:
    """Counts the lease's keep-alive requests of one backend object while they go by."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._ticks = 0
        tick = getattr(backend, "_tick", None)
        if tick is not None and not hasattr(backend, "keepalive_requests"):  # Redis: TICK

            def counted() -> Any:
                self._ticks += 1
                return tick()

            backend._tick = counted

    def read(self) -> int:
        return int(getattr(self.backend, "keepalive_requests", self._ticks))


def backend_run_costs(
    server: Target, handler: Any, runs: int, reps: int, floor_n: int
) -> dict[str, Any]:
    """The cluster run path on ``server`` (see the module docstring)."""
    from goworker_py.cluster.backend import RunRecord, RunState

    out: dict[str, Any] = {"server": server.describe(), "runs": runs, "reps": reps}
    with WorkerPool() as pool:
        host = one_shard_host(pool, server.discovery, handler, f"bench-{server.name}")
        runner = host.runners[0]
        fire = datetime.now(runner.settings.zone) + timedelta(hours=1)
        for _ in range(50):
            runner.execute(fire)
        if not runner.execute(fire).ok:
            raise RuntimeError(f"a cluster-mode run on {server.label} did not complete")

        backend, claim = host.backend, host.claims[0]
        record = RunRecord(
            0, host.instance.id, backend.lease_id, "floor", fire.timestamp(), claim.token
        )
        done = replace(record, state=RunState.DONE)
        pairs = []
        for _ in range(floor_n):
            start = time.perf_counter()
            began = backend.begin_run(claim, record)
            backend.end_run(claim, done)
            pairs.append(time.perf_counter() - start)
            if not began:
                raise RuntimeError(f"begin_run on {server.label} refused the floor's record")
        out["floor_us"] = stats(pairs, 1e6, 1)

        counter, keepalives = server.counter(), KeepAlives(backend)
        sent = getattr(backend, "requests_sent", None)
        before, runs0, alive0 = counter.snapshot(), runner.runs, keepalives.read()
        sent0 = sent if sent is None else int(sent)
        median, fastest = _per_call_us(functools.partial(runner.execute, fire), runs, reps)
        after, alive = counter.snapshot(), keepalives.read() - alive0
        count = runner.runs - runs0
        if count != runs * reps + 1:  # _per_call_us calls once before timing
            raise RuntimeError(f"{runs * reps + 1} runs expected, {count} completed")
        out["execute_us_median"] = round(median, 3)
        out["execute_us_min"] = round(fastest, 3)
        out["completed_runs"] = count
        out["totals"] = {k: after[k] - before[k] for k in after}
        out["keepalives"] = alive
        # Keep-alives are requests; Redis's TICK is a script, counted as a write too.
        minus = {"requests": alive, "writes": alive if server.name == "redis" else 0}
        out["per_run"] = {
            k: round((total - minus.get(k, 0)) / count, 4) for k, total in out["totals"].items()
        }
        if sent0 is not None:
            client = int(backend.requests_sent) - sent0 - alive
            out["client_requests_per_run"] = round(client / count, 4)
    return out


def report_backend_costs(report: Report, name: str, costs: dict[str, Any], direct: float) -> None:
    """Print and record the figures of :func:`backend_run_costs` for backend ``name``."""
    label = costs["server"]
    floor = costs["floor_us"]
    print(f"    {label}: begin_run + end_run through the seam: {fmt_stats(floor, 'µs')}")
    print(
        f"    {label}: execute() {costs['execute_us_median']:.1f} µs per run (fastest rep "
        f"{costs['execute_us_min']:.1f}); {costs['completed_runs']} runs; per run "
        f"{costs['per_run']}",
        flush=True,
    )
    report.add(
        figure_name(name, "floor of a cluster run: begin_run + end_run through the seam, p50"),
        floor["p50"],
        "µs",
    )
    report.add(
        figure_name(name, "cluster mode: framework overhead per run, incl. its round trips"),
        costs["execute_us_median"] - direct,
        "µs",
        note=f"median of {costs['reps']} reps of {costs['runs']} runs (INFO sink)",
    )
    per_run = costs["per_run"]
    if name == "etcd":
        writes = "Raft proposals committed (etcd_server_proposals_committed_total)"
        requests = "gRPC messages received (grpc_server_msg_received_total)"
    else:
        writes = "Lua scripts run (EVALSHA: one atomic step each), INFO commandstats"
        requests = "top-level commands, INFO commandstats"
    client = costs.get("client_requests_per_run")
    report.add(
        figure_name(name, "cluster mode: backend writes per run"),
        per_run["writes"],
        "writes",
        TARGET_PER_RUN,
        note=writes,
    )
    report.add(
        figure_name(name, "cluster mode: backend requests per run"),
        per_run["requests"],
        "requests",
        TARGET_PER_RUN,
        note=requests
        + f"; minus the {costs['keepalives']} keep-alive(s) meanwhile"
        + ("" if client is None else f"; the backend's own count: {client}/run")
        + (
            f"; commands incl. inside scripts {per_run['commands']}/run"
            if "commands" in per_run
            else ""
        ),
    )
