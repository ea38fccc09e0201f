"""B1 bench_clock_floor: the machine's own floor, against which every other figure is read.

Measures ``threading.Event.wait(t)`` lateness for t = 1 / 10 / 100 ms (idle, and with one
CPU-bound pure-Python thread holding the GIL), thread hand-off (``Event.set`` → the waiting
thread runs; ``queue.Queue.put`` → ``get`` returns), ``time.monotonic`` resolution and cost,
and the GIL switch interval. About 10 s (``--quick``: about 2 s).

Run: ``.venv/bin/python benchmarks/bench_clock_floor.py [--quick]``
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from _common import (
    Report,
    calibrate,
    fmt_stats,
    parse_args,
    stats,
    wait_lateness,
)


def queue_handoff(count: int, pause: float = 0.0005) -> list[float]:
    """Seconds from ``Queue.put`` to ``Queue.get`` returning in another thread."""
    jobs: queue.Queue[float | None] = queue.Queue()
    done: queue.Queue[float] = queue.Queue()

    def consumer() -> None:
        while True:
            sent = jobs.get()
            if sent is None:
                return
            done.put(time.perf_counter() - sent)

    thread = threading.Thread(target=consumer, name="bench-queue", daemon=True)
    thread.start()
    out = []
    for _ in range(count):
        time.sleep(pause)
        jobs.put(time.perf_counter())
        out.append(done.get(timeout=5))
    jobs.put(None)
    thread.join(5)
    return out


def with_gil_hog(measure: dict[str, tuple[float, int]]) -> dict[str, dict[str, float]]:
    """``Event.wait`` lateness while another thread runs pure-Python code without pause."""
    stop = threading.Event()

    def hog() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    thread = threading.Thread(target=hog, name="bench-gil-hog", daemon=True)
    thread.start()
    try:
        return {
            name: stats(wait_lateness(timeout, count), 1e3)
            for name, (timeout, count) in measure.items()
        }
    finally:
        stop.set()
        thread.join(5)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    report = Report("bench_clock_floor", "B1", args.quick)
    # The full calibration is this benchmark's main measurement.
    report.calibration = cal = calibrate(quick=args.quick)
    for key, label in (("wait_1ms", "1 ms"), ("wait_10ms", "10 ms"), ("wait_100ms", "100 ms")):
        s = cal[key]
        print(f"Event.wait({label}) lateness, idle: {fmt_stats(s, 'ms')}")
        report.add(f"Event.wait({label}) lateness p50, idle", s["p50"], "ms")
        report.add(f"Event.wait({label}) lateness p99, idle", s["p99"], "ms")
    hand = cal["handoff_us"]
    print(f"Event.set -> waiter runs: {fmt_stats(hand, 'µs')}")
    report.add("thread hand-off (Event.set → waiter runs) p50", hand["p50"], "µs")
    report.add("thread hand-off (Event.set → waiter runs) p99", hand["p99"], "µs")

    q = stats(queue_handoff(300 if args.quick else 3000), 1e6, 1)
    print(f"Queue.put -> get returns: {fmt_stats(q, 'µs')}")
    report.add("thread hand-off (Queue.put → get) p50", q["p50"], "µs")
    report.add("thread hand-off (Queue.put → get) p99", q["p99"], "µs")

    hogged = with_gil_hog(
        {
            "wait_1ms": (0.001, 30 if args.quick else 200),
            "wait_10ms": (0.010, 10 if args.quick else 60),
        }
    )
    for key, label in (("wait_1ms", "1 ms"), ("wait_10ms", "10 ms")):
        s = hogged[key]
        print(f"Event.wait({label}) lateness, one GIL-busy thread: {fmt_stats(s, 'ms')}")
        report.add(f"Event.wait({label}) lateness p50, one GIL-busy thread", s["p50"], "ms")
        report.add(f"Event.wait({label}) lateness p99, one GIL-busy thread", s["p99"], "ms")

    mono = cal["monotonic"]
    print(
        f"time.monotonic: {mono['implementation']}, declared resolution "
        f"{mono['declared_resolution_ns']:g} ns, smallest observed step "
        f"{mono['smallest_step_ns']} ns, {mono['ns_per_call']} ns per call"
    )
    report.add("time.monotonic smallest observed step", mono["smallest_step_ns"], "ns")
    report.add("time.monotonic cost per call", mono["ns_per_call"], "ns")
    report.add("GIL switch interval", sys.getswitchinterval() * 1e3, "ms")
    report.details = {"queue_handoff_us": q, "gil_busy": hogged}
    report.emit()


if __name__ == "__main__":
    main()
