"""The load conditions of the cron-lateness benchmarks (B2's variants, ``bench_cron_load``).

- ``idle``: nothing else runs (the ``bench_cron_compare_*`` scripts);
- ``gil``: one CPU-bound pure-Python thread spins in the measured interpreter from the end of
  set-up to the end of the measured window (GIL contention: a waking thread waits for the
  spinner to give up the GIL, up to ``sys.getswitchinterval()``, 5 ms, each time);
- ``hogs``: the parent runs 2 external CPU-hog processes (``while True: pass``) while the
  child runs: the cores are busy, the measured interpreter's GIL is not.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

LOADS = ("idle", "gil", "hogs")
LOAD_LABELS = {
    "idle": "idle",
    "gil": "one GIL-busy thread",
    "hogs": "2 CPU-hog processes",
}
#: External CPU-hog processes of the ``hogs`` condition (B2: "2 external CPU-hog processes").
HOG_PROCESSES = 2


# -- load conditions ----------------------------------------------------------------------------


@contextlib.contextmanager
def gil_busy_thread() -> Iterator[dict[str, float]]:
    """One pure-Python thread spinning (holding the GIL but for forced switches) meanwhile.

    Yields a dict that, on exit, holds the spinner's loop iterations per second (evidence that
    it really ran: compare across contenders of one run).
    """
    running = [True]
    info: dict[str, float] = {}

    def spin() -> None:
        count, started = 0, time.perf_counter()
        while running[0]:
            count += 1
        info["busy_loops_per_s"] = round(count / max(time.perf_counter() - started, 1e-9))

    thread = threading.Thread(target=spin, name="bench-gil-busy", daemon=True)
    thread.start()
    try:
        yield info
    finally:
        running[0] = False
        thread.join(10)


@contextlib.contextmanager
def in_process_load(load: str) -> Iterator[dict[str, float]]:
    """The part of ``load`` that runs inside the measured interpreter (``gil`` only)."""
    if load == "gil":
        with gil_busy_thread() as info:
            yield info
    else:
        yield {}


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` from ``/proc/<pid>/stat`` (NaN if unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


@contextlib.contextmanager
def cpu_hog_processes(count: int = HOG_PROCESSES) -> Iterator[dict[str, Any]]:
    """``count`` external processes spinning in pure Python meanwhile (killed on exit).

    Yields a dict that, on exit, holds each hog's CPU share (% of a core) over its lifetime.
    They are started through ``setpriv --pdeathsig`` where available, so they die with this
    process even if it is killed.
    """
    from _cluster import die_with_parent_prefix

    info: dict[str, Any] = {"hogs": count}
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [*die_with_parent_prefix(), sys.executable, "-c", "while True: pass"],
            stdin=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        time.sleep(0.3)  # let them get going
        yield info
    finally:
        wall = time.monotonic() - started
        info["hog_cpu_percent"] = [
            round(_proc_cpu_seconds(proc.pid) / wall * 100, 1) for proc in procs
        ]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@contextlib.contextmanager
def parent_load(load: str) -> Iterator[dict[str, Any]]:
    """The part of ``load`` that runs outside the measured interpreter (``hogs`` only)."""
    if load == "hogs":
        with cpu_hog_processes() as info:
            yield info
    else:
        yield {}
