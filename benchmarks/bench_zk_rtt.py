"""B5 bench_zk_rtt: kazoo <-> ZooKeeper round trips and pipelined throughput — the cluster floor.

Against the benchmark's own ZooKeeper server (``ZK_HOSTS`` to use another), one kazoo client:

- session establishment (``KazooClient.start``);
- synchronous round trips: ``exists`` and ``get`` (reads), ``set``, ``create``, ``delete``,
  ``get_children`` and a two-op ``multi`` (check + create: what a cluster run's ``begin_run``
  costs);
- pipelined asynchronous ``create`` / ``get`` / ``delete`` (all requests sent, then all
  replies awaited): operations per second of one Python client;
- watch notification: another client writes, this one's data (child) watch callback runs;
- a clean ``stop()`` of a session → an observer's watch sees its ephemeral node gone (the floor
  of a clean hand-over).

These are the floors the cluster figures (B3, B6, B7, hand-over) sit on. No targets: the
reference values of BENCHMARKS.md's floors table are printed next to each figure.
About 10 s (``--quick`` about 3 s).

Run: ``.venv/bin/python benchmarks/bench_zk_rtt.py [--quick]``
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from _cluster import zookeeper
from _common import Report, calibrate, fmt_stats, parse_args, stats


def timed(count: int, op: Callable[[int], Any]) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - start)
    return samples


def pipelined(count: int, send: Callable[[int], Any]) -> float:
    """Operations per second: ``count`` async requests sent back to back, then awaited."""
    start = time.perf_counter()
    pending = [send(i) for i in range(count)]
    for request in pending:
        request.get(timeout=60)
    return count / (time.perf_counter() - start)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0])
    from kazoo.client import KazooClient

    report = Report("bench_zk_rtt", "B5", args.quick)
    sync_n = 300 if args.quick else 2000
    async_n = 1000 if args.quick else 5000
    watch_n = 50 if args.quick else 300
    sessions_n = 5 if args.quick else 20
    with zookeeper(tick_time=100) as zk:
        print(zk.describe(), flush=True)
        report.calibration = calibrate(quick=True, zk_hosts=zk.hosts)
        base = f"/bench-rtt-{uuid.uuid4().hex[:8]}"
        clients: list[KazooClient] = []

        def connect() -> KazooClient:
            client = KazooClient(hosts=zk.hosts, timeout=10.0)
            clients.append(client)
            client.start(timeout=10.0)
            return client

        try:
            # -- session establishment
            connects = []
            for _ in range(sessions_n):
                start = time.perf_counter()
                c = connect()
                connects.append(time.perf_counter() - start)
                c.stop()
                c.close()
                clients.remove(c)
            client = connect()
            client.ensure_path(base)
            client.create(f"{base}/node", b"x" * 64)
            for i in range(sync_n):
                client.exists(base)  # warm-up
                if i > 50:
                    break

            # -- synchronous round trips
            node = f"{base}/node"
            sync: dict[str, list[float]] = {
                "exists": timed(sync_n, lambda i: client.exists(node)),
                "get": timed(sync_n, lambda i: client.get(node)),
                "get_children": timed(sync_n, lambda i: client.get_children(base)),
                "set": timed(sync_n, lambda i: client.set(node, b"y" * 64)),
                "create": timed(sync_n, lambda i: client.create(f"{base}/c{i}", b"z" * 64)),
                "delete": timed(sync_n, lambda i: client.delete(f"{base}/c{i}")),
            }

            def multi(i: int) -> None:
                tx = client.transaction()
                tx.check(node, -1)
                tx.create(f"{base}/m{i}", b"m" * 64)
                tx.commit()

            sync["multi(check+create)"] = timed(sync_n, multi)
            for i in range(sync_n):
                client.delete_async(f"{base}/m{i}")
            rtt = {name: stats(values, 1e3) for name, values in sync.items()}
            reads_note = "floor table: p50 0.23-0.27 ms, p99 3-5 ms"
            writes_note = "floor table: p50 0.39-0.55 ms, p99 3-5 ms"
            for name in sync:
                s = rtt[name]
                note = reads_note if name in ("exists", "get", "get_children") else writes_note
                report.add(f"sync {name} round trip p50", s["p50"], "ms", note=note)
                report.add(f"sync {name} round trip p99", s["p99"], "ms")
                print(f"    {name}: {fmt_stats(s, 'ms')}", flush=True)

            # -- pipelined async
            client.sync(base)
            ops = {
                "create": pipelined(
                    async_n, lambda i: client.create_async(f"{base}/a{i}", b"a" * 64)
                ),
                "get": pipelined(async_n, lambda i: client.get_async(f"{base}/a{i}")),
                "delete": pipelined(async_n, lambda i: client.delete_async(f"{base}/a{i}")),
            }
            floors = {"create": "≈ 5,000/s", "get": "≈ 9,500/s", "delete": "≈ 10,300/s"}
            for name, rate in ops.items():
                report.add(
                    f"async pipelined {name} throughput",
                    round(rate),
                    "ops/s",
                    note=f"floor table: {floors[name]}",
                )

            # -- watch notification: writer sets, this client's data watch callback runs
            writer = connect()
            data_lat: list[float] = []
            fired = threading.Event()
            stamp: list[float] = [0.0]

            def on_data(_event: Any) -> None:
                stamp[0] = time.perf_counter()
                fired.set()

            for i in range(watch_n):
                client.get(node, watch=on_data)
                fired.clear()
                start = time.perf_counter()
                writer.set(node, str(i).encode())
                if fired.wait(5):
                    data_lat.append(stamp[0] - start)
            child_lat: list[float] = []
            for i in range(watch_n):
                client.get_children(base, watch=on_data)
                fired.clear()
                start = time.perf_counter()
                writer.create(f"{base}/w{i}", ephemeral=True)
                if fired.wait(5):
                    child_lat.append(stamp[0] - start)
            ds, cs = stats(data_lat, 1e3), stats(child_lat, 1e3)
            report.add(
                "data watch notification p50",
                ds["p50"],
                "ms",
                note="floor table: p50 0.56 ms, p99 5.5 ms (includes the writer's set)",
            )
            report.add("data watch notification p99", ds["p99"], "ms")
            report.add(
                "child watch notification p50",
                cs["p50"],
                "ms",
                note="floor table: p50 0.48 ms, p99 1.6 ms (includes the writer's create)",
            )
            report.add("child watch notification p99", cs["p99"], "ms")

            # -- clean stop of a session -> its ephemeral node gone, seen by a watcher
            gone: list[float] = []
            for i in range(sessions_n):
                owner = connect()
                path = f"{base}/e{i}"
                owner.create(path, ephemeral=True)
                fired.clear()
                client.exists(path, watch=on_data)
                start = time.perf_counter()
                owner.stop()
                if fired.wait(5):
                    gone.append(stamp[0] - start)
                owner.close()
                clients.remove(owner)
            gs, ss = stats(gone, 1e3), stats(connects, 1e3)
            report.add(
                "ephemeral node gone after a clean stop() p50",
                gs["p50"],
                "ms",
                note="floor table: p50 0.9 ms, p99 7.7 ms",
            )
            report.add("ephemeral node gone after a clean stop() max", gs["max"], "ms")
            report.add("session establishment (client.start) p50", ss["p50"], "ms")
            report.add("session establishment (client.start) max", ss["max"], "ms")
            report.details = {
                "server": zk.describe(),
                "sync_rtt_ms": rtt,
                "async_ops_per_s": {k: round(v) for k, v in ops.items()},
                "data_watch_ms": ds,
                "child_watch_ms": cs,
                "ephemeral_gone_after_stop_ms": gs,
                "session_start_ms": ss,
                "counts": {"sync": sync_n, "async": async_n, "watch": watch_n},
            }
            client.delete(base, recursive=True)
        finally:
            for c in clients:
                try:
                    c.stop()
                    c.close()
                except Exception:  # noqa: BLE001 - best-effort cleanup
                    pass
    report.emit()


if __name__ == "__main__":
    main()
