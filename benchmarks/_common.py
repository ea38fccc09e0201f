"""Shared helpers of the benchmark scripts: statistics, machine info, calibration, JSON output.

Every ``bench_*.py`` script:

1. parses ``--quick`` (a short run) with :func:`parse_args`;
2. prints the machine's calibration line first (:func:`calibrate`: ``Event.wait`` lateness,
   thread hand-off, ``time.monotonic`` resolution, and the ZooKeeper round trip when
   ``ZK_HOSTS`` is set);
3. records figures on a :class:`Report` (each printed as ``value  (target ...)``; targets are
   *printed*, never asserted);
4. ends with :meth:`Report.emit`, which prints the whole report as one JSON object on the
   **last line of stdout** — the contract ``run_all.py`` relies on.

Figures from a shared, noisy machine are only comparable within one run: read them next to
the calibration line printed with them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# -- statistics ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of already sorted values, linear interpolation."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def stats(values: Iterable[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """n, min, mean, p50, p90, p99 and max of ``values`` multiplied by ``scale``."""
    data = sorted(v * scale for v in values)
    if not data:
        return {"n": 0}
    out: dict[str, float] = {
        "n": len(data),
        "min": data[0],
        "mean": sum(data) / len(data),
        "p50": percentile(data, 50),
        "p90": percentile(data, 90),
        "p99": percentile(data, 99),
        "max": data[-1],
    }
    return {k: (v if k == "n" else round(v, digits)) for k, v in out.items()}


def fmt_stats(s: dict[str, float], unit: str) -> str:
    """``p50 x / p90 x / p99 x / max x unit (n=...)``."""
    if not s.get("n"):
        return "no samples"
    return (
        f"p50 {s['p50']:.3g} / p90 {s['p90']:.3g} / p99 {s['p99']:.3g} / max {s['max']:.3g} "
        f"{unit} (n={s['n']})"
    )


# -- machine ------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Cores, Python, platform and load: printed with every result."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "loadavg": load,
        "switch_interval_ms": sys.getswitchinterval() * 1e3,
    }


def proc_status(key: str) -> int:
    """An integer field of ``/proc/self/status`` (``VmRSS`` in kB, ``Threads``); -1 if absent."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def rss_mb() -> float:
    """Resident set size of this process in MiB (VmRSS)."""
    return proc_status("VmRSS") / 1024.0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (``getrusage``, µs resolution)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- calibration (B1's floor, short) ------------------------------------------------------------


def wait_lateness(timeout: float, count: int) -> list[float]:
    """Lateness in seconds of ``count`` ``Event.wait(timeout)`` calls that time out."""
    event = threading.Event()
    late: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        event.wait(timeout)
        late.append(time.perf_counter() - start - timeout)
    return late


def handoff_latency(count: int, pause: float = 0.0005) -> list[float]:
    """Seconds from ``Event.set()`` on this thread to the waiting thread running."""
    go, ack = threading.Event(), threading.Event()
    woken: list[float] = []
    stop = False

    def waiter() -> None:
        while True:
            go.wait()
            woken.append(time.perf_counter())
            go.clear()
            if stop:
                ack.set()
                return
            ack.set()

    thread = threading.Thread(target=waiter, name="bench-handoff", daemon=True)
    thread.start()
    sent: list[float] = []
    for _ in range(count):
        time.sleep(pause)
        ack.clear()
        sent.append(time.perf_counter())
        go.set()
        ack.wait(5)
    stop = True
    ack.clear()
    go.set()
    ack.wait(5)
    thread.join(5)
    return [w - s for s, w in zip(sent, woken, strict=False)]


def monotonic_resolution(calls: int = 200_000) -> dict[str, float]:
    """Declared resolution, smallest observed step and cost per call of ``time.monotonic``."""
    info = time.get_clock_info("monotonic")
    mono = time.monotonic
    smallest = math.inf
    start = time.perf_counter()
    previous = mono()
    for _ in range(calls):
        now = mono()
        step = now - previous
        if 0 < step < smallest:
            smallest = step
        previous = now
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(calls):
        mono()
    per_call = (time.perf_counter() - start) / calls
    return {
        "implementation": info.implementation,  # type: ignore[dict-item]
        "declared_resolution_ns": info.resolution * 1e9,
        "smallest_step_ns": round(smallest * 1e9, 1) if smallest != math.inf else math.nan,
        "ns_per_call": round(per_call * 1e9, 1),
        "loop_ns_per_iteration": round(elapsed / calls * 1e9, 1),
    }


def zk_round_trip(hosts: str, count: int) -> dict[str, float] | None:
    """Round trip of ``exists('/')`` to ZooKeeper in ms, or None if it does not answer."""
    try:
        from kazoo.client import KazooClient
    except ImportError:
        return None
    client = KazooClient(hosts=hosts, timeout=5.0)
    try:
        client.start(timeout=5.0)
    except Exception:  # noqa: BLE001 - calibration only: report it missing
        client.close()
        return None
    try:
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            client.exists("/")
            rtts.append(time.perf_counter() - start)
        return stats(rtts, 1e3)
    finally:
        client.stop()
        client.close()


def timer_witness(
    seconds: float | None = None, stop: threading.Event | None = None
) -> dict[str, float]:
    """Timer lateness of the machine meanwhile, in ms: the noise witness of a measurement.

    Waits (``Event.wait``) for every tenth of a second except the whole seconds, where the
    measured schedulers fire, for ``seconds`` or until ``stop`` is set. Run it in another
    process than the one measured (or in the idle parent of a measured child) so that it
    sees the same minute of the machine without competing for the same GIL or instants.
    """
    pause = stop or threading.Event()
    late: list[float] = []
    end = time.time() + seconds if seconds is not None else math.inf

    def next_target(now: float) -> float:
        # The next tenth of a second after ``now`` that is not a whole second (a late wake-up
        # skips the targets it overslept instead of counting each of them late).
        tenth = math.floor(now * 10) + 1
        return (tenth + 1 if tenth % 10 == 0 else tenth) / 10

    target = next_target(time.time())
    while target < end and not (stop is not None and stop.is_set()):
        while (remaining := target - time.time()) > 0:
            if pause.wait(remaining) and stop is not None:
                return stats(late, 1e3)
        now = time.time()
        late.append(now - target)
        target = next_target(now)
    return stats(late, 1e3)


class WitnessThread:
    """:func:`timer_witness` on a thread of this (otherwise idle) process."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.result: dict[str, float] = {"n": 0}
        self._thread = threading.Thread(target=self._run, name="bench-witness", daemon=True)

    def _run(self) -> None:
        self.result = timer_witness(stop=self._stop)

    def __enter__(self) -> WitnessThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def calibrate(quick: bool = True, zk_hosts: str | None = None) -> dict[str, Any]:
    """Measure the machine's floor and print it as one ``calibration:`` line.

    ``quick`` (every benchmark) takes about 1.5 s; the full version (B1) about 10 s.
    ``zk_hosts`` (default: the ``ZK_HOSTS`` environment variable) adds a ZooKeeper round trip.
    """
    counts = (100, 30, 6, 300) if quick else (1000, 300, 40, 3000)
    waits = {
        "wait_1ms": stats(wait_lateness(0.001, counts[0]), 1e3),
        "wait_10ms": stats(wait_lateness(0.010, counts[1]), 1e3),
        "wait_100ms": stats(wait_lateness(0.100, counts[2]), 1e3),
    }
    result: dict[str, Any] = {"quick": quick, **waits}
    result["handoff_us"] = stats(handoff_latency(counts[3]), 1e6, 1)
    result["monotonic"] = monotonic_resolution(50_000 if quick else 500_000)
    hosts = zk_hosts if zk_hosts is not None else os.environ.get("ZK_HOSTS", "").strip()
    if hosts:
        result["zk_rtt_ms"] = zk_round_trip(hosts, 50 if quick else 500)
    print(format_calibration(result), flush=True)
    return result


def format_calibration(cal: dict[str, Any]) -> str:
    """The one-line summary of :func:`calibrate`'s result."""
    parts = []
    for key, label in (("wait_1ms", "1ms"), ("wait_10ms", "10ms"), ("wait_100ms", "100ms")):
        s = cal[key]
        parts.append(f"{label} p50 {s['p50']:.3f}/p99 {s['p99']:.3f}")
    hand = cal["handoff_us"]
    mono = cal["monotonic"]
    line = (
        f"calibration: Event.wait lateness ms: {', '.join(parts)}; "
        f"hand-off µs p50 {hand['p50']:.1f}/p99 {hand['p99']:.1f}; "
        f"monotonic {mono['implementation']}, step {mono['smallest_step_ns']} ns, "
        f"{mono['ns_per_call']} ns/call"
    )
    zk = cal.get("zk_rtt_ms")
    if zk:
        line += f"; ZK exists() RTT ms p50 {zk['p50']:.3f}/p99 {zk['p99']:.3f}"
    info = machine_info()
    line += f" | {info['usable_cores']} cores, Python {info['python']}, load {info['loadavg']}"
    return line


# -- reporting ----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured value, with its target if the issue sets one."""

    benchmark: str
    figure: str
    value: float | None
    unit: str
    target: float | None = None
    #: "<=" (value must not exceed the target) or ">=".
    op: str = "<="
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None or math.isnan(self.value):
            return None
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        symbol = "≤" if self.op == "<=" else "≥"
        return f"{symbol} {self.target:g} {self.unit}"

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        text = f"  {self.figure}: {value} {self.unit}"
        if self.target is not None:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[self.met]
            text += f"   (target {self.target_text}: {verdict})"
        if self.note:
            text += f"   [{self.note}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "figure": self.figure,
            "value": self.value,
            "unit": self.unit,
            "target": self.target_text or None,
            "target_value": self.target,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Report:
    """Collects one benchmark's figures and details; :meth:`emit` prints them as JSON."""

    name: str
    bench_id: str
    quick: bool
    calibration: dict[str, Any] | None = None
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(
        self,
        figure: str,
        value: float | None,
        unit: str,
        target: float | None = None,
        op: str = "<=",
        note: str = "",
    ) -> Figure:
        """Record and print one figure."""
        fig = Figure(self.name, figure, value, unit, target, op, note)
        self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "id": self.bench_id,
            "quick": self.quick,
            "machine": machine_info(),
            "calibration": self.calibration,
            "elapsed_s": round(time.monotonic() - self.started, 2),
            "figures": [f.as_dict() for f in self.figures],
            "details": self.details,
        }

    def emit(self) -> None:
        """Print the report as one JSON line: the last line of stdout."""
        sys.stdout.flush()
        print(json.dumps(sanitize(self.as_dict()), default=_json_default), flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def sanitize(value: Any) -> Any:
    """Replace NaN/inf by None recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    return value


def last_json_line(stdout: str) -> dict[str, Any] | None:
    """The JSON object on the last line of ``stdout`` that holds one (the report)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def run_child(
    script: str, args: Sequence[str], timeout: float, stderr_path: str | None = None
) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter; return its last-line JSON.

    The child's non-JSON stdout is echoed (indented) so its progress lines stay visible. Its
    stderr is captured through a pipe, or written to the file ``stderr_path`` (a log sink on
    stderr then writes to a plain file, as when a service's stderr goes to a journal or file).
    """
    with contextlib.ExitStack() as stack:
        stderr: Any = subprocess.PIPE
        if stderr_path is not None:
            stderr = stack.enter_context(open(stderr_path, "w", encoding="utf-8"))
        proc = subprocess.run(
            [sys.executable, script, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=timeout,
            check=False,
        )
    result = last_json_line(proc.stdout)
    for line in proc.stdout.strip().splitlines():
        if not line.startswith("{"):
            print("    " + line, flush=True)
    if proc.returncode != 0 or result is None:
        errors = proc.stderr or ""
        if stderr_path is not None:
            with open(stderr_path, encoding="utf-8", errors="replace") as written:
                errors = written.read()
        tail = errors.strip().splitlines()[-15:]
        raise RuntimeError(
            f"child {os.path.basename(script)} {' '.join(args)} failed "
            f"(exit {proc.returncode}):\n" + "\n".join(tail)
        )
    return result


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """``--quick`` plus whatever ``extra`` adds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def quiet_logging(level: str = "INFO") -> str:
    """Configure goworker-py's loguru sink at ``level`` to a file in /tmp; return its path.

    The production-like set-up: per-run DEBUG lines are filtered, INFO lines are written.
    """
    from goworker_py import LoggerConfig, configure_logging

    path = os.path.join("/tmp", f"goworker-bench-{os.getpid()}.log")
    configure_logging(LoggerConfig(level=level, sink=path))
    return path


def remove_file(path: str) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(OSError):
        os.remove(path)
