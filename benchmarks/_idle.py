"""Shared code of the idle-cost benchmarks (B8 ``bench_idle``, B12 ``bench_scale``).

:func:`measure_window` measures what an idle process costs the machine over a window the
measuring thread sleeps through:

- CPU: user + system time of the whole process (``getrusage(RUSAGE_SELF)``, terminated
  threads included) over the window, as % of one core;
- context switches/s: voluntary + involuntary switches of the whole process (``getrusage``,
  threads that ended meanwhile included);
- **wake-ups/s**: the same minus the measuring thread's own (``getrusage(RUSAGE_THREAD)``: its
  one sleep through the window) — what the library's threads cost, however many there are.
  A thread that wakes and goes back to sleep counts one voluntary switch, so this is the
  process's wake-up rate (issue #12's goal: at most 1/s);
- ``task_context_switches_per_s``: the sum over the threads alive at both ends
  (``/proc/self/task/*/status``), a cross-check.
"""

from __future__ import annotations

import datetime as dt
import glob
import resource
import threading
import time
from typing import Any

#: Goals of issue #12 (printed, never asserted).
WAKEUPS_TARGET = 1.0
#: Idle CPU of goworker-py within this factor of APScheduler's (same job count, same window).
CPU_RATIO_TARGET = 2.0


def daily_cron() -> tuple[str, int]:
    """A daily schedule firing twelve hours from now (never during the benchmark)."""
    hour = (dt.datetime.now().hour + 12) % 24
    return f"0 {hour} * * *", hour


def task_switches() -> int:
    """Voluntary + involuntary context switches of every live thread (/proc/self/task)."""
    total = 0
    for path in glob.glob("/proc/self/task/*/status"):
        try:
            with open(path, encoding="ascii") as status:
                for line in status:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def _switches(usage: resource.struct_rusage) -> int:
    return usage.ru_nvcsw + usage.ru_nivcsw


def measure_window(seconds: float) -> dict[str, Any]:
    """CPU %, context switches/s, wake-ups/s and wall time over an idle window of ``seconds``.

    Call it on a thread that does nothing else meanwhile (it sleeps through the window).
    """
    pause = threading.Event()
    switches0 = task_switches()
    own0 = resource.getrusage(resource.RUSAGE_THREAD)
    usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    pause.wait(seconds)
    usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    own1 = resource.getrusage(resource.RUSAGE_THREAD)
    switches1 = task_switches()
    wall = wall1 - wall0
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    process = _switches(usage1) - _switches(usage0)
    own = _switches(own1) - _switches(own0)
    return {
        "window_s": round(wall, 3),
        "cpu_s": round(cpu, 6),
        "cpu_percent": round(cpu / wall * 100, 4),
        "context_switches_per_s": round(process / wall, 3),
        "wakeups": process - own,
        "wakeups_per_s": round((process - own) / wall, 3),
        "measuring_thread_switches": own,
        "task_context_switches_per_s": round((switches1 - switches0) / wall, 2),
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, None when either is missing or the reference is 0."""
    if value is None or reference is None or reference <= 0:
        return None
    return round(value / reference, 3)
