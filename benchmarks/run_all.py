"""Run every ``benchmarks/bench_*.py`` and collect their figures.

Contract with the benchmark scripts: each ``bench_*.py`` prints human-readable progress, then
its whole report as **one JSON object on the last line of stdout** (``_common.Report.emit``:
``benchmark``, ``id``, ``machine``, ``calibration``, ``figures`` — each with ``figure``,
``value``, ``unit``, ``target``, ``met`` — and ``details``). Nothing else is read: a script
writes no result file itself, so running one by hand never overwrites collected results.

Each script runs in its own subprocess, one after the other, so they do not disturb each
other; new scripts (cluster benchmarks) are picked up by the glob. Written to
``benchmarks/results/``:

- ``<name>.json`` — one script's report; ``<name>.log`` — its stdout and stderr;
- ``results.json`` — every report, plus the machine and the total run time;
- ``results.md`` — side-by-side tables (goworker-py next to APScheduler, hand-rolled threads
  and the machine's floor: ``_summary.py``), then every figure: benchmark, figure, value,
  target (with core count and Python version).

Targets are printed next to the values, never asserted: this exits non-zero only when a
script fails or times out. ``--only`` and ``--quick`` runs overwrite ``results.*`` too (the
results of one run belong together): point them elsewhere with ``--out DIR``.

The cluster benchmarks (failover, hand-over, run overhead, re-balance, request load) measure
ZooKeeper, etcd and Redis side by side, each on a private server (``make bench`` installs the
three): ``results.md`` has a table of the three next to each other.

Run: ``.venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--timeout S]
[--out DIR]`` (about 15 minutes; ``--quick`` about 7 minutes on a busy machine)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from _common import RESULTS_DIR, last_json_line, machine_info
from _summary import render, tables

HERE = os.path.dirname(os.path.abspath(__file__))


def discover(only: list[str] | None) -> list[str]:
    scripts = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    if only:
        scripts = [s for s in scripts if any(word in os.path.basename(s) for word in only)]
    return scripts


def run_script(
    script: str, quick: bool, timeout: float, out_dir: str
) -> tuple[dict[str, Any] | None, str]:
    """Run one script, echoing its progress; return (its report or None, error text)."""
    name = os.path.splitext(os.path.basename(script))[0]
    log_path = os.path.join(out_dir, f"{name}.log")
    cmd = [sys.executable, script, *(["--quick"] if quick else [])]
    lines: list[str] = []
    timed_out = threading.Event()
    with open(log_path, "w", encoding="utf-8") as log:
        # Its own process group, so a timeout also ends the script's own child processes.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=os.path.dirname(HERE),
            start_new_session=True,
        )

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if not line.startswith("{"):
                    print("  " + line.rstrip(), flush=True)
            proc.wait()
        finally:
            watchdog.cancel()
        log.write("\n--- stdout ---\n" + "".join(lines))
    if timed_out.is_set():
        return None, f"timed out after {timeout:g} s (see {os.path.relpath(log_path)})"
    report = last_json_line("".join(lines))
    if proc.returncode != 0:
        return report, f"exit status {proc.returncode} (see {os.path.relpath(log_path)})"
    if report is None:
        return None, f"no JSON report on the last stdout line (see {os.path.relpath(log_path)})"
    return report, ""


def fmt_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    out = [
        "# goworker-py benchmark results",
        "",
        f"- Date: {summary['date']}",
        f"- Machine: {machine['usable_cores']} cores (of {machine['cores']}), "
        f"Python {machine['python']} ({machine['implementation']}), {machine['platform']}",
        f"- Load average at start: {machine['loadavg']}",
        f"- Mode: {'quick' if summary['quick'] else 'full'}; total run time "
        f"{summary['elapsed_s']:.0f} s",
        "",
        "Shared, noisy machine: compare figures only within one run, next to each benchmark's "
        "calibration line. Targets are printed, not asserted.",
        "",
        "## Side by side",
        "",
        *render(summary, tables()),
        "## Every figure",
        "",
        "| Benchmark | Figure | Value | Target | Met |",
        "|---|---|---|---|---|",
    ]
    for name, report in summary["benchmarks"].items():
        if report is None:
            continue
        label = f"{report.get('id', '')} {name}".strip()
        for fig in report.get("figures", []):
            met = {True: "yes", False: "**no**", None: ""}[fig.get("met")]
            value = f"{fmt_value(fig['value'])} {fig['unit']}"
            out.append(
                f"| {label} | {fig['figure']} | {value} | {fig.get('target') or ''} | {met} |"
            )
    out += ["", "## Calibration line of each benchmark", ""]
    from _common import format_calibration

    for name, report in summary["benchmarks"].items():
        if report and report.get("calibration"):
            cal = format_calibration(report["calibration"]).split(" | ")[0]
            out.append(f"- **{name}** ({report.get('elapsed_s', '?')} s): {cal}")
    if summary["failures"]:
        out += ["", "## Failures", ""]
        out += [f"- **{name}**: {error}" for name, error in summary["failures"].items()]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmarks/bench_*.py")
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--only", nargs="+", help="run scripts whose name contains one of these")
    parser.add_argument("--timeout", type=float, default=300.0, help="per script, seconds")
    parser.add_argument(
        "--out", default=RESULTS_DIR, help="results directory (default benchmarks/results)"
    )
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    scripts = discover(args.only)
    if not scripts:
        print("no benchmark matched", file=sys.stderr)
        return 2
    started = time.monotonic()
    summary: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "quick": args.quick,
        "benchmarks": {},
        "failures": {},
    }
    for script in scripts:
        name = os.path.splitext(os.path.basename(script))[0]
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        report, error = run_script(script, args.quick, args.timeout, out_dir)
        print(f"== {name}: {time.monotonic() - t0:.1f} s{' — FAILED: ' + error if error else ''}")
        summary["benchmarks"][name] = report
        if error:
            summary["failures"][name] = error
        if report is not None:
            with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as out:
                json.dump(report, out, indent=2, ensure_ascii=False)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as out:
        json.dump(summary, out, indent=2, ensure_ascii=False)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as out:
        out.write(markdown(summary))
    print(
        f"wrote {os.path.relpath(out_dir)}/results.json and results.md "
        f"({len(scripts)} benchmarks, {summary['elapsed_s']:.0f} s, "
        f"{len(summary['failures'])} failed)"
    )
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
