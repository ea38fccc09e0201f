"""B2 bench_cron_lateness: how late a run starts behind its fire time (issue #2's target).

One local worker on ``*/1 * * * * *`` (every second), 32 measured fires after one warm-up fire
(about 35 s; ``--quick``: 5 fires), then 6 fires (``--quick``: 3) with a clock that records
when the shard thread's wait returned, splitting lateness into timer and framework parts
(about 8 s); about 45 s in all (``--quick``: about 15 s). Lateness = ``time.time()`` at ``do``
entry - ``ctx.scheduled_time.timestamp()``. Also reported: missed fires, the interval jitter
between consecutive runs on the monotonic clock, and the largest disagreement between the
wall-clock and monotonic measurements of the same entries (non-zero only if the clock was
stepped).
Logging: goworker-py's loguru sink at INFO to a file in /tmp. A *noise witness* runs meanwhile
in another process: ``Event.wait`` lateness at every tenth of a second between the fires,
telling a slow framework from a busy machine.

Targets (printed, not asserted): p50 ≤ 1 ms, p99 ≤ 5 ms.

Run: ``.venv/bin/python benchmarks/bench_cron_lateness.py [--quick] [--fires N]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from _common import Report, calibrate, fmt_stats, last_json_line, parse_args, timer_witness
from _cron import run_goworker


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fires", type=int, default=None, help="measured fires (default 32)")
    parser.add_argument("--witness", type=float, default=None, help=argparse.SUPPRESS)


def start_witness(seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--witness", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def witness_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=30)
    return last_json_line(out) or {"n": 0}


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0], _extra)
    if args.witness:
        print(json.dumps(timer_witness(seconds=args.witness)), flush=True)
        return
    fires = args.fires or (5 if args.quick else 32)
    report = Report("bench_cron_lateness", "B2", args.quick)
    report.calibration = calibrate(quick=True)
    print(f"one worker on '*/1 * * * * *', {fires} measured fires (+1 warm-up) ...", flush=True)
    noise = start_witness(fires + 2.5)
    result = run_goworker(1, fires)
    seen = witness_result(noise)
    s = result["lateness_ms"]
    print(f"lateness: {fmt_stats(s, 'ms')}")
    print(f"meanwhile, Event.wait lateness in another process: {fmt_stats(seen, 'ms')}")
    report.add("lateness p50, 1 worker every second", s.get("p50"), "ms", 1.0)
    report.add("lateness p99, 1 worker every second", s.get("p99"), "ms", 5.0)
    report.add("lateness max, 1 worker every second", s.get("max"), "ms")
    report.add("missed fires", result["missed"], "fires", 0)
    jitter = result.get("interval_jitter_ms", {})
    if jitter.get("n"):
        report.add("interval jitter p99 (monotonic, |Δ - 1 s|)", jitter["p99"], "ms")
    if "wall_vs_monotonic_max_us" in result:
        report.add("wall vs monotonic disagreement max", result["wall_vs_monotonic_max_us"], "µs")
    report.add("CPU while firing", result["cpu_percent_while_firing"], "% of a core")
    report.add("noise witness: Event.wait lateness p50, same minute", seen.get("p50"), "ms")
    report.add("noise witness: Event.wait lateness p99, same minute", seen.get("p99"), "ms")

    split_fires = 3 if args.quick else 6
    print(f"where the lateness goes: {split_fires} more fires with a wake-recording clock ...")
    split = run_goworker(1, split_fires, split=True)
    timer, path = split["timer_lateness_ms"], split["wake_to_do_ms"]
    print(f"  timer (wait returns - fire time): {fmt_stats(timer, 'ms')}")
    print(f"  framework (wait returns -> do entry): {fmt_stats(path, 'ms')}")
    report.add("split: timer lateness p50 (Event.wait returns - fire time)", timer.get("p50"), "ms")
    report.add("split: wake-up -> do entry p50 (framework path, cold)", path.get("p50"), "ms")
    report.details = {**result, "split": split, "witness_ms": seen}
    report.emit()


if __name__ == "__main__":
    main()
