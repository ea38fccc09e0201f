"""B11 bench_memory: resident memory of 1, 16 and 256 local workers (and 1 worker x 256 shards).

Each configuration runs in a fresh interpreter: RSS (``VmRSS``) is read before importing
goworker-py, after importing it, and after the workers ran a few times on
``*/1 * * * * *`` (warm-up: 3 fires; ``--quick``: 1). About 20 s (``--quick``: about 10 s).

Run: ``.venv/bin/python benchmarks/bench_memory.py [--quick]``
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from _common import Report, calibrate, parse_args, proc_status, rss_mb, run_child

CONFIGS = ((1, 1), (16, 1), (256, 1), (1, 256))


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


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--child", nargs=2, type=int, metavar=("WORKERS", "SHARDS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--fires", type=int, default=None, help=argparse.SUPPRESS)


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    fires = args.fires or (1 if args.quick else 3)
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
    report.details = {"configs": results}
    report.emit()


if __name__ == "__main__":
    main()
