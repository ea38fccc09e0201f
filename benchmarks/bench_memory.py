"""B11 bench_memory: resident memory of 1, 16 and 256 local workers, and of cluster instances.

Each configuration runs in a fresh interpreter: RSS (``VmRSS``) is read before importing
goworker-py, after importing it, and after the workers ran a few times on
``*/1 * * * * *`` (warm-up: 3 fires; ``--quick``: 1). Standalone: 1, 16 and 256 workers, and
1 worker x 256 shards. Cluster mode, against a real ZooKeeper (a private server, or
``ZK_HOSTS``): one instance with 16 shards, then one with 256 shards (the library's default
session timeout); "after imports" there includes kazoo and goworker-py's ZooKeeper module, and
the warm-up starts once the instance holds every shard. "RSS added by the worker(s)" is the
running RSS minus the RSS after imports of the same interpreter. About 20 s (``--quick``:
about 10 s).

Run: ``.venv/bin/python benchmarks/bench_memory.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from _cluster import zookeeper
from _common import Report, calibrate, parse_args, proc_status, rss_mb, run_child

CONFIGS = ((1, 1), (16, 1), (256, 1), (1, 256))
#: Shards of the one cluster-mode instance of each cluster configuration.
CLUSTER_SHARDS = (16, 256)


def child(workers: int, shards: int, fires: int) -> dict[str, Any]:
    rss_bare = rss_mb()
    from _common import quiet_logging, remove_file

    from goworker_py import Context, Handler, Worker

    rss_import = rss_mb()
    log_path = quiet_logging("INFO")
    runs = [0]

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            runs[0] += 1

    pool = [
        Worker(
            Tick,
            cron="*/1 * * * * *",
            sharding_total_count=shards,
            handle_signals=False,
            name=f"mem{i}",
        )
        for i in range(workers)
    ]
    for worker in pool:
        worker.run()
    pause = threading.Event()
    deadline = time.monotonic() + fires + 1.5
    while runs[0] < workers * shards * fires and time.monotonic() < deadline:
        pause.wait(0.1)
    rss_running = rss_mb()
    threads = proc_status("Threads")
    for worker in pool:
        worker.cancel()
    for worker in pool:
        worker.wait(30)
    remove_file(log_path)
    return {
        "workers": workers,
        "shards": shards,
        "runs": runs[0],
        "threads": threads,
        "rss_mb_bare_python": round(rss_bare, 2),
        "rss_mb_after_import": round(rss_import, 2),
        "rss_mb_running": round(rss_running, 2),
        "import_mb": round(rss_import - rss_bare, 2),
        "workers_mb": round(rss_running - rss_import, 2),
        "kb_per_shard_thread": round((rss_running - rss_import) * 1024 / (workers * shards), 1),
    }


def child_cluster(hosts: str, shards: int, fires: int) -> dict[str, Any]:
    """One cluster-mode instance owning ``shards`` shards that fire every second."""
    rss_bare = rss_mb()
    import kazoo.client  # noqa: F401 - the cluster worker's client: part of "after imports"
    from _cluster import EVERY_SECOND, cluster_worker, service_name, settled
    from _common import quiet_logging, remove_file

    import goworker_py.cluster.backends.zookeeper  # noqa: F401 - imported lazily by a cluster worker
    from goworker_py import Context, DiscoveryConfig, Handler

    rss_import = rss_mb()
    log_path = quiet_logging("INFO")
    runs = [0]

    class Tick(Handler):
        def do(self, ctx: Context) -> None:
            runs[0] += 1

    worker = cluster_worker(
        hosts,
        service_name("bench-memory"),
        shards,
        handler=Tick,
        cron=EVERY_SECOND,
        session_timeout=DiscoveryConfig().session_timeout,
        name="mem-cluster",
    )
    worker.run()
    try:
        ready_at, state = settled([worker], shards, timeout=30)
        if ready_at is None:
            raise RuntimeError(f"the instance did not claim its {shards} shards: {state.why}")
        pause = threading.Event()
        target = runs[0] + shards * fires
        deadline = time.monotonic() + fires + 2.5
        while runs[0] < target and time.monotonic() < deadline:
            pause.wait(0.1)
        rss_running = rss_mb()
        threads = proc_status("Threads")
        claims = len(worker.host.claims)
    finally:
        worker.cancel()
        worker.wait(60)
        remove_file(log_path)
    return {
        "mode": "cluster",
        "workers": 1,
        "shards": shards,
        "claims": claims,
        "runs": runs[0],
        "threads": threads,
        "rss_mb_bare_python": round(rss_bare, 2),
        "rss_mb_after_import": round(rss_import, 2),
        "rss_mb_running": round(rss_running, 2),
        "import_mb": round(rss_import - rss_bare, 2),
        "workers_mb": round(rss_running - rss_import, 2),
        "kb_per_shard_thread": round((rss_running - rss_import) * 1024 / shards, 1),
    }


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--child", nargs=2, type=int, metavar=("WORKERS", "SHARDS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--fires", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cluster", metavar="HOSTS", default="", help=argparse.SUPPRESS)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    fires = args.fires or (1 if args.quick else 3)
    if args.child and args.cluster:
        print(json.dumps(child_cluster(args.cluster, args.child[1], fires)), flush=True)
        return
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], fires)), flush=True)
        return
    report = Report("bench_memory", "B11", args.quick)
    report.calibration = calibrate(quick=True)
    results = []
    for workers, shards in CONFIGS:
        result = run_child(
            __file__,
            ["--child", str(workers), str(shards), "--fires", str(fires)],
            timeout=60,
        )
        results.append(result)
        label = f"{workers} worker(s)" if shards == 1 else f"{workers} worker x {shards} shards"
        print(
            f"{label}: RSS {result['rss_mb_running']} MiB (bare Python "
            f"{result['rss_mb_bare_python']}, +{result['import_mb']} import, "
            f"+{result['workers_mb']} workers), {result['threads']} threads, "
            f"{result['runs']} runs",
            flush=True,
        )
        report.add(f"RSS, {label}", result["rss_mb_running"], "MiB")
        report.add(f"RSS added by the workers, {label}", result["workers_mb"], "MiB")
    report.add("RSS added by importing goworker_py", results[0]["import_mb"], "MiB")
    big = results[2]
    report.add(
        "RSS per worker (256 workers: shard + supervisor thread)",
        round(big["workers_mb"] * 1024 / big["workers"], 1),
        "KiB",
    )
    clustered = []
    with zookeeper() as zk:
        print(zk.describe(), flush=True)
        for shards in CLUSTER_SHARDS:
            result = run_child(
                __file__,
                ["--child", "1", str(shards), "--fires", str(fires), "--cluster", zk.hosts],
                timeout=90,
            )
            clustered.append(result)
            label = f"1 cluster-mode worker x {shards} shards"
            print(
                f"{label}: RSS {result['rss_mb_running']} MiB (bare Python "
                f"{result['rss_mb_bare_python']}, +{result['import_mb']} import, "
                f"+{result['workers_mb']} worker), {result['threads']} threads, "
                f"{result['claims']} claims, {result['runs']} runs",
                flush=True,
            )
            report.add(f"RSS, {label}", result["rss_mb_running"], "MiB")
            report.add(f"RSS added by the worker, {label}", result["workers_mb"], "MiB")
    report.add(
        "RSS added by importing goworker_py and kazoo (cluster mode)",
        clustered[0]["import_mb"],
        "MiB",
    )
    report.details = {"configs": results, "cluster": clustered}
    report.emit()


if __name__ == "__main__":
    main()
