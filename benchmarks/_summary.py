"""The side-by-side tables at the top of ``results.md``: goworker-py next to what a user would
use instead (APScheduler 3, hand-rolled threads) and next to the machine's floor, from the
figures of one ``run_all.py`` run.

Each cell names the benchmark and the figure(s) it shows (several figures are joined with
" / ", e.g. p50 / p99 / max), or other figures when none of those is in the run (``alt``: a
``--quick`` run's smaller scenario). A figure missing from the run (a benchmark skipped with
``--only``, or failed) shows as "n/a"; a row with nothing to show is left out. The "target"
column repeats the targets of the goworker-py figures of the row, with "✓" when met and "✗" when
not — or a table's own target text for the row, each cell then marked "✓" / "✗" by its figures'
targets (the backends table: the same target for ZooKeeper, etcd and Redis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from _targets import BACKENDS, LABELS, figure_name

APS = "APScheduler 3 BackgroundScheduler"
FLOOR = "bare Event.wait threads (floor)"
PCT = ("p50", "p99", "max")


@dataclass(frozen=True)
class Cell:
    """Figures ``names`` of benchmark ``bench``, shown together (``alt`` instead, when none of
    ``names`` is in the run)."""

    bench: str
    names: tuple[str, ...]
    alt: tuple[str, ...] = ()
    #: Figures whose targets mark the cell ✓ / ✗ instead of those of ``names`` (e.g. ratios to
    #: another column's figures).
    judge: tuple[str, ...] = ()

    def shown(self, summary: dict[str, Any]) -> Cell:
        """This cell, or its ``alt`` figures when the run has none of ``names``."""
        if self.alt and not any(_figure(summary, self.bench, n) for n in self.names):
            return Cell(self.bench, self.alt)
        return self


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[tuple[str, list[Cell | None]]] = field(default_factory=list)
    #: Index of the column whose figures' targets fill the "target" column.
    target_column: int = 0
    note: str = ""
    #: Row label -> the "target" column's text; each cell is then marked ✓ / ✗ itself.
    targets: dict[str, str] = field(default_factory=dict)


def _figure(summary: dict[str, Any], bench: str, name: str) -> dict[str, Any] | None:
    report = summary["benchmarks"].get(bench)
    if not report:
        return None
    for fig in report.get("figures", []):
        if fig["figure"] == name:
            result: dict[str, Any] = fig
            return result
    return None


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int) and abs(value) >= 1000:
        return f"{value:,}"
    return str(value)


def _cell_text(summary: dict[str, Any], cell: Cell | None) -> tuple[str, bool]:
    """The cell's text and whether any of its figures was found."""
    if cell is None:
        return "", False
    cell = cell.shown(summary)
    figs = [_figure(summary, cell.bench, name) for name in cell.names]
    found = [f for f in figs if f is not None]
    if not found:
        return "n/a", False
    units = {f["unit"] for f in found}
    if len(units) > 1:  # different units: each value with its own
        return " / ".join(f"{_number(f['value'])} {f['unit']}" if f else "n/a" for f in figs), True
    values = " / ".join(_number(f["value"]) if f else "n/a" for f in figs)
    return f"{values} {found[0]['unit']}".strip(), True


def _mark(summary: dict[str, Any], cell: Cell | None) -> str:
    """ " ✗" if a figure of the cell missed its target, " ✓" if all with a target met it."""
    if cell is None:
        return ""
    cell = cell.shown(summary)
    names = cell.judge or cell.names
    met = [f.get("met") for n in names if (f := _figure(summary, cell.bench, n))]
    met = [m for m in met if m is not None]
    if not met:
        return ""
    return " ✓" if all(met) else " ✗"


def _target_text(summary: dict[str, Any], cell: Cell | None) -> str:
    if cell is None:
        return ""
    cell = cell.shown(summary)
    parts = []
    for name in cell.names:
        fig = _figure(summary, cell.bench, name)
        if fig and fig.get("target"):
            mark = {True: " ✓", False: " ✗", None: ""}[fig.get("met")]
            parts.append(f"{fig['target']}{mark}")
    return "; ".join(parts)


def render(summary: dict[str, Any], tables: Sequence[Table]) -> list[str]:
    """Markdown lines for ``tables`` (tables without any figure are left out)."""
    out: list[str] = []
    for table in tables:
        lines = []
        for label, cells in table.rows:
            texts = [_cell_text(summary, cell) for cell in cells]
            if not any(found for _, found in texts):
                continue
            if label in table.targets:
                target = table.targets[label]
                texts = [
                    (text + (_mark(summary, cell) if found else ""), found)
                    for (text, found), cell in zip(texts, cells, strict=True)
                ]
            else:
                target = _target_text(summary, cells[table.target_column])
            lines.append(f"| {label} | " + " | ".join(text for text, _ in texts) + f" | {target} |")
        if not lines:
            continue
        out += [f"### {table.title}", ""]
        if table.note:
            out += [table.note, ""]
        out.append("| | " + " | ".join(table.columns) + " | target |")
        out.append("|---|" + "---|" * (len(table.columns) + 1))
        out += [*lines, ""]
    return out


def _lateness(bench: str, what: str, contender: str) -> Cell:
    return Cell(bench, tuple(f"lateness {p}, {what}, {contender}" for p in PCT))


def tables() -> list[Table]:
    """The side-by-side tables of issue #5."""
    lateness = Table(
        "Lateness behind the fire time (p50 / p99 / max), jobs firing every second",
        ["goworker-py", "APScheduler 3", "bare `Event.wait` threads (floor)"],
        note="Fire second → handler entry, each contender in a fresh interpreter, same minute.",
    )
    for count in (1, 100, 1000):
        bench, what = f"bench_cron_compare_{count}", f"{count} job(s)"
        lateness.rows.append(
            (
                f"{count:,} job{'s' if count > 1 else ''}",
                [_lateness(bench, what, c) for c in ("goworker-py", APS, FLOOR)],
            )
        )
    for condition in ("one GIL-busy thread", "2 CPU-hog processes"):
        what = f"16 jobs, {condition}"
        lateness.rows.append(
            (what, [_lateness("bench_cron_load", what, c) for c in ("goworker-py", APS, FLOOR)])
        )

    throughput = Table(
        'Most no-op runs per second, "run now" in a closed loop (B4)',
        [
            "goworker-py `trigger()`",
            "APScheduler 3 `modify(next_run_time=now)`",
            "bare `Event` threads (floor)",
            "goworker-py cluster (2 ZooKeeper writes a run)",
        ],
    )
    for n in (1, 4, 16):
        throughput.rows.append(
            (
                f"{n} handler{'s' if n > 1 else ''}",
                [
                    Cell("bench_throughput", (f"no-op runs/s, {n} handler(s), {name}",))
                    for name in (
                        "goworker-py local",
                        APS,
                        "bare Event threads (floor)",
                        "goworker-py cluster (2 ZK writes per run)",
                    )
                ],
            )
        )

    overhead = Table(
        "Framework cost of one run (B3)",
        ["goworker-py", "floor: the handler called directly / a bare ZooKeeper multi + set"],
    )
    overhead.rows += [
        (
            "no-op run, local mode (INFO log to a file)",
            [
                Cell(
                    "bench_run_overhead",
                    ("framework overhead per run, loguru INFO sink to a file",),
                ),
                Cell("bench_run_overhead", ("direct call of before+do+after (same handler)",)),
            ],
        ),
        (
            "no-op run, cluster mode (begin + end in ZooKeeper)",
            [
                Cell(
                    "bench_run_overhead",
                    (
                        "cluster mode: framework overhead per run, incl. its 2 ZooKeeper writes "
                        "(INFO sink)",
                    ),
                ),
                Cell(
                    "bench_run_overhead", ("floor of a cluster run: multi + set round trips, p50",)
                ),
            ],
        ),
        (
            "ZooKeeper writes / requests per run (cluster mode)",
            [
                Cell(
                    "bench_run_overhead",
                    (
                        "cluster mode: ZooKeeper writes per run (mntr zk_cnt_updatelatency)",
                        "cluster mode: ZooKeeper requests per run (mntr zk_packets_received)",
                    ),
                ),
                None,
            ],
        ),
    ]

    idle = Table(
        "Idle cost: 1,000 sleeping cron jobs in one process (B8, B11)",
        [
            "goworker-py, 1,000 workers",
            "APScheduler 3, 1,000 jobs",
            "16 threads polling every 10 ms (anti-pattern)",
            "goworker-py cluster instance, 16 shards",
        ],
    )
    goworker, aps = "1000 idle goworker-py workers", "APScheduler holding 1000 daily jobs"
    cluster_idle = "1 idle cluster-mode goworker-py instance, 16 shards"
    polling = "16 threads polling every 10 ms (anti-pattern)"
    for label, key in (("CPU", "idle CPU"), ("context switches", "context switches")):
        idle.rows.append(
            (
                label,
                [
                    Cell("bench_idle", (f"{key}, {goworker}",)),
                    Cell("bench_idle", (f"{key}, {aps}",)),
                    Cell("bench_idle", (f"{'CPU' if key == 'idle CPU' else key}, {polling}",)),
                    Cell("bench_idle", (f"{key}, {cluster_idle}",)),
                ],
            )
        )
    idle.rows += [
        (
            "RSS",
            [
                Cell("bench_idle", (f"RSS, {goworker}",)),
                Cell("bench_idle", (f"RSS, {aps}",)),
                None,
                Cell("bench_memory", ("RSS, 1 cluster-mode worker x 16 shards",)),
            ],
        ),
        (
            "threads",
            [
                Cell("bench_idle", (f"threads, {goworker}",)),
                Cell("bench_idle", (f"threads, {aps}",)),
                None,
                Cell("bench_idle", (f"threads, {cluster_idle}",)),
            ],
        ),
    ]

    cluster = Table(
        "Cluster mode on ZooKeeper (B5-B7, B9, B10)",
        ["goworker-py", "floor / reference on this machine"],
    )
    rtt = ("sync exists round trip p50", "sync exists round trip p99")
    cluster.rows += [
        (
            "ZooKeeper round trip (p50 / p99)",
            [None, Cell("bench_zk_rtt", rtt)],
        ),
        (
            "hand-over after a clean stop, in-process (p50 / p99)",
            [
                Cell(
                    "bench_handover",
                    tuple(
                        f"hand-over, cancel() -> new owner claimed + shard thread waiting, {p}"
                        for p in ("p50", "p99")
                    ),
                ),
                Cell("bench_zk_rtt", ("ephemeral node gone after a clean stop() p50",)),
            ],
        ),
        (
            "hand-over after SIGTERM, across processes (p50 / p99)",
            [
                Cell(
                    "bench_handover",
                    tuple(
                        "hand-over (processes), SIGTERM -> observer sees standby's claim, " + p
                        for p in ("p50", "p99")
                    ),
                ),
                None,
            ],
        ),
    ]
    for size, kind in ((20, "instances"), (100, "worker processes")):
        joins = "instance" if kind == "instances" else "process"
        scale = f"{size} {kind} x 1,000 shards"
        maximum = ": convergence (max)" if size == 20 else ": convergence (max of 2)"
        cluster.rows += [
            (
                f"re-balance after a join, {scale}",
                [
                    Cell(
                        "bench_rebalance",
                        (f"re-balance after {joins} {size + 1} joins, {scale}{maximum}",),
                    ),
                    None,
                ],
            ),
            (
                f"ZooKeeper requests per join re-balance, {scale}",
                [
                    Cell("bench_rebalance", (f"ZooKeeper requests per join re-balance, {scale}",)),
                    None,
                ],
            ),
            (
                f"shards moved per join / minimal, {scale}",
                [Cell("bench_rebalance", (f"shards moved per join / minimal, {scale}",)), None],
            ),
        ]
    for t in (1, 2, 4):
        cluster.rows.append(
            (
                f"failover after kill -9, session timeout T = {t} s (max; observed - T max)",
                [
                    Cell(
                        "bench_failover",
                        (
                            f"failover T={t} s: kill -> failover run start, max",
                            f"failover T={t} s: observed - T, max",
                        ),
                    ),
                    None,
                ],
            )
        )
    cluster.rows += [
        (
            "ZooKeeper requests per run (4 instances sharing 16 jobs/s)",
            [Cell("bench_zk_load", ("ZK requests per run, 4 instances sharing 16 jobs/s",)), None],
        ),
        (
            "idle ZooKeeper requests per instance, T = 10 s",
            [Cell("bench_zk_load", ("idle ZK requests per instance, session T = 10 s",)), None],
        ),
        (
            "SIGTERM → process exit, 16 runs in flight (max)",
            [
                Cell(
                    "bench_shutdown",
                    ("SIGTERM -> process exit, 16 in-flight cooperative runs, max",),
                ),
                None,
            ],
        ),
    ]
    from _summary_idle import issue12_table  # it builds on this module's Cell and Table

    return [lateness, throughput, overhead, idle, issue12_table(), cluster, backends_table()]


def backends_table() -> Table:
    """Issue #11's performance targets on every backend, side by side."""
    table = Table(
        "Cluster backends side by side: ZooKeeper, etcd v3, Redis (issue #11)",
        [LABELS[b] for b in BACKENDS],
        note="Each on a private server on loopback (ZooKeeper without fsync, etcd's data on "
        "tmpfs, Redis without persistence), measured one after the other in the same "
        "benchmark run. Each cell is marked ✓ / ✗ against the row's target.",
    )

    def row(label: str, target: str, bench: str, names: Any, alt: Any = None) -> None:
        cells: list[Cell | None] = [
            Cell(bench, tuple(names(b)), tuple(alt(b)) if alt else ()) for b in BACKENDS
        ]
        table.rows.append((label, cells))
        table.targets[label] = target

    row(
        "failover after kill -9, 2 s lease: kill → failover run start (p50 / max)",
        "≤ lease + 0.5 s = 2.5 s",
        "bench_failover",
        lambda b: [
            figure_name(b, f"failover T=2 s: kill -> failover run start, {p}")
            for p in ("p50", "max")
        ],
    )
    handover = "hand-over, cancel() -> new owner claimed + shard thread waiting"
    row(
        "hand-over after a clean stop, in-process (p50 / p99)",
        "p99 ≤ 100 ms",
        "bench_handover",
        lambda b: [figure_name(b, f"{handover}, {p}") for p in ("p50", "p99")],
    )
    row(
        "backend writes / requests per run",
        "≤ 2 writes, ≤ 2 round trips",
        "bench_run_overhead",
        lambda b: (
            [
                "cluster mode: ZooKeeper writes per run (mntr zk_cnt_updatelatency)",
                "cluster mode: ZooKeeper requests per run (mntr zk_packets_received)",
            ]
            if b == "zookeeper"
            else [
                figure_name(b, "cluster mode: backend writes per run"),
                figure_name(b, "cluster mode: backend requests per run"),
            ]
        ),
    )
    big = "instances x 1,000 shards: convergence (max)"
    row(
        "re-balance after a join, 20 instances x 1,000 shards (max; --quick: 10 instances)",
        "≤ 2 s",
        "bench_rebalance",
        lambda b: [figure_name(b, f"re-balance after instance 21 joins, 20 {big}")],
        lambda b: [figure_name(b, f"re-balance after instance 11 joins, 10 {big}")],
    )
    row(
        "idle requests per instance, lease T = 10 s",
        "pings / keep-alives only: ≈ 3/T, + 25 %",
        "bench_zk_load",
        lambda b: [
            figure_name(
                b,
                "idle requests per instance, session T = 10 s",
                "idle ZK requests per instance, session T = 10 s",
            )
        ],
    )
    return table
