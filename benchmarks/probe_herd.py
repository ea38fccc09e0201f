"""Where a herd's time goes: a diagnostic for issue #12 (not a ``bench_*`` script: ``run_all``
does not run it, and it prints no report).

Two probes, each in this interpreter:

- ``path``: the CPU cost of one scheduled fire on one shard thread with the waits taken out —
  an injected clock that jumps to each fire time instead of sleeping (``*/1 * * * * *``, an
  INFO sink to a file), so the shard goes from fire to fire back to back: wall time per run is
  the framework's own path (wake → ``do`` → next wait), which in a herd every thread runs while
  holding the GIL. ``--profile`` adds a cProfile of that thread (functions by own time).
- ``herd``: N workers firing in the same second (an injected clock that notes times only, so
  the runs take the thread path, as in B2), split per run into: timer lateness (fire time →
  the shard's wait returned: queueing for the GIL behind the other threads of the herd), wake →
  ``do`` entry, ``do`` exit → next wait entered; then the process's CPU, user and system time
  and context switches per run, beside N bare ``Event.wait`` threads (the floor) measured the
  same way.

Run: ``.venv/bin/python benchmarks/probe_herd.py path [--runs N] [--profile]`` or
``.venv/bin/python benchmarks/probe_herd.py herd [--jobs N] [--fires N]``
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import resource
import threading
import time
from typing import Any

from _common import fmt_stats, quiet_logging, stats
from _cron import FloorThreads


def probe_path(runs: int, profile: bool) -> None:
    from goworker_py import Context, Handler, Worker
    from goworker_py.clock import SystemClock

    quiet_logging("INFO")

    class Jump(SystemClock):
        """Time stands still but for waits, which return at once at their end."""

        def __init__(self) -> None:
            self.now = time.time()

        def time(self) -> float:
            return self.now

        def monotonic(self) -> float:
            return self.now

        def wait(self, event: threading.Event, timeout: float | None) -> bool:
            if event.is_set():
                return True
            self.now += timeout or 0.0
            return False

    done, count = threading.Event(), [0]

    class Count(Handler):
        def do(self, ctx: Context) -> None:
            count[0] += 1
            if count[0] == runs:
                done.set()

    profiler = cProfile.Profile()
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        if profile and self.name.startswith("goworker:"):
            profiler.runcall(original, self)
        else:
            original(self)

    threading.Thread.run = run  # type: ignore[method-assign]
    worker = Worker(Count, cron="*/1 * * * * *", handle_signals=False, name="path", clock=Jump())
    started, cpu = time.perf_counter(), time.process_time()
    worker.run()
    done.wait(600)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.cancel()
    worker.wait(30)
    threading.Thread.run = original  # type: ignore[method-assign]
    print(
        f"{count[0]} scheduled runs back to back: {elapsed / count[0] * 1e6:.1f} µs per run "
        f"({cpu / count[0] * 1e6:.1f} µs of CPU)"
    )
    if profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def _usage() -> tuple[float, float, int, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_nvcsw, usage.ru_nivcsw


def _per_run(before: tuple[float, ...], after: tuple[float, ...], runs: int) -> str:
    user, system, voluntary, involuntary = (b - a for a, b in zip(before, after, strict=True))
    return (
        f"CPU {(user + system) / runs * 1e6:.0f} µs per run (user {user / runs * 1e6:.0f}, "
        f"system {system / runs * 1e6:.0f}); context switches per run: voluntary "
        f"{voluntary / runs:.1f}, involuntary {involuntary / runs:.1f}"
    )


def _window(first: float, fires: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Resource usage half a second before ``first`` and 0.9 s after the last fire."""
    pause = threading.Event()
    while (remaining := first - 0.5 - time.time()) > 0:
        pause.wait(remaining)
    before = _usage()
    while (remaining := first + fires - 1 + 0.9 - time.time()) > 0:
        pause.wait(remaining)
    return before, _usage()


def probe_herd(jobs: int, fires: int) -> None:
    from goworker_py import Context, Handler, Worker
    from goworker_py.clock import SystemClock

    quiet_logging("INFO")
    notes: dict[int, dict[str, Any]] = {}
    rows: list[list[float]] = []

    class Noting(SystemClock):
        def wait(self, event: threading.Event, timeout: float | None) -> bool:
            mine = notes.setdefault(threading.get_ident(), {})
            if "row" in mine and len(mine["row"]) == 3:
                mine["row"].append(time.time() - mine["do_exit"])
            fired = event.wait(timeout)
            mine["wake"] = time.time()
            return fired

    class Probe(Handler):
        def do(self, ctx: Context) -> None:
            mine = notes.setdefault(threading.get_ident(), {})
            row = [ctx.scheduled_time.timestamp(), mine.get("wake", math.nan), time.time()]
            rows.append(row)
            mine["row"] = row
            mine["do_exit"] = time.time()

    clock = Noting()
    pool = [
        Worker(Probe, cron="*/1 * * * * *", handle_signals=False, name=f"herd{i}", clock=clock)
        for i in range(jobs)
    ]
    for worker in pool:
        worker.run()
    first = float(math.floor(time.time()) + 2)
    before, after = _window(first, fires)
    for worker in pool:
        worker.cancel()
    for worker in pool:
        worker.wait(30)
    kept = [r for r in rows if first <= r[0] <= first + fires - 1 and len(r) == 4]
    print(f"goworker-py, {jobs} jobs x {fires} fires ({len(kept)} runs):")
    timer = stats((r[1] - r[0] for r in kept), 1e3)
    print("  timer lateness (fire → wait returned):", fmt_stats(timer, "ms"))
    print("  wake → do entry:", fmt_stats(stats((r[2] - r[1] for r in kept), 1e6), "µs"))
    print("  do exit → next wait:", fmt_stats(stats((r[3] for r in kept), 1e6), "µs"))
    print("  " + _per_run(before, after, max(len(kept), 1)))

    samples: list[tuple[float, float]] = []
    floor_threads = FloorThreads(jobs, lambda slot: samples.append((slot, time.time())))
    floor_threads.start()
    first = float(math.floor(time.time()) + 2)
    before, after = _window(first, fires)
    floor_threads.stop()
    floor = [e - s for s, e in samples if first <= s <= first + fires - 1]
    print(f"floor, {jobs} bare Event.wait threads ({len(floor)} runs):")
    print("  lateness:", fmt_stats(stats(floor, 1e3), "ms"))
    print("  " + _per_run(before, after, max(len(floor), 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("probe", choices=("path", "herd"))
    parser.add_argument("--runs", type=int, default=20_000, help="path: runs (20000)")
    parser.add_argument("--profile", action="store_true", help="path: cProfile the thread")
    parser.add_argument("--jobs", type=int, default=1000, help="herd: jobs (1000)")
    parser.add_argument("--fires", type=int, default=3, help="herd: measured fires (3)")
    args = parser.parse_args()
    if args.probe == "path":
        probe_path(args.runs, args.profile)
    else:
        probe_herd(args.jobs, args.fires)


if __name__ == "__main__":
    main()
