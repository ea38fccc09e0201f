"""The "Idle and herd (issue #12)" table of ``results.md`` and the README: each goal of issue
#12, goworker-py beside APScheduler 3 and the floor, from B8 ``bench_idle``, B12
``bench_scale`` and the B2 herds (``bench_cron_compare_100`` / ``_1000``).

A goworker-py cell is marked ✓ / ✗ by the targets of its own figures, or (``Cell.judge``) of
the ratios its benchmark computed against the other columns (2x APScheduler's idle CPU, 1.5x
the floor's lateness...).
"""

from __future__ import annotations

from _summary import APS, FLOOR, Cell, Table

#: bench_scale's job counts and fire windows (s): the full run's, then ``--quick``'s.
SCALE = ((10_000, 60), (2_000, 20))


def _scale(templates: tuple[str, ...], contender: str) -> Cell:
    """bench_scale's figures ``templates`` ("{}" is the contender's label) of a contender."""

    def label(count: int) -> str:
        if contender == "goworker-py":
            return f"{count} goworker-py workers"
        return f"APScheduler holding {count} daily jobs"

    (full, _), (quick, _) = SCALE
    return Cell(
        "bench_scale",
        tuple(t.format(label(full)) for t in templates),
        tuple(t.format(label(quick)) for t in templates),
    )


def _spread(templates: tuple[str, ...], contender: str) -> Cell:
    """bench_scale's lateness figures ``templates`` ("{}": the jobs) of a contender."""
    full, quick = (f"{count} daily jobs spread over {spread} s" for count, spread in SCALE)
    name = "goworker-py" if contender == "goworker-py" else APS
    return Cell(
        "bench_scale",
        tuple(f"{t.format(full)}, {name}" for t in templates),
        tuple(f"{t.format(quick)}, {name}" for t in templates),
    )


def _herd(bench: str, what: str, contender: str, judge: tuple[str, ...] = ()) -> Cell:
    """A herd benchmark's p50 / p99 lateness of a contender."""
    names = tuple(f"lateness {p}, {what}, {contender}" for p in ("p50", "p99"))
    return Cell(bench, names, judge=judge)


def issue12_table() -> Table:
    """Issue #12's goals, side by side."""
    table = Table(
        "Idle and herd (issue #12)",
        ["goworker-py", "APScheduler 3", "bare `Event.wait` threads (floor)"],
        note="Jobs daily (idle and scale rows) or firing every second (herds); each contender "
        "in a fresh interpreter, one after the other. Wake-ups: context switches of the whole "
        "process but the measuring thread's own. APScheduler runs with its defaults (the "
        "standard library's logging unconfigured: no line per run). goworker-py logs INFO to a "
        "file, and in the herd rows also runs with the logging defaults a user gets (loguru's "
        "default sink, stderr; the child's stderr is a file). Each goworker-py cell is marked "
        "✓ / ✗ against the row's goal.",
    )

    def row(label: str, goal: str, cells: list[Cell | None]) -> None:
        table.rows.append((label, cells))
        table.targets[label] = goal

    gw, aps = "1000 idle goworker-py workers", "APScheduler holding 1000 daily jobs"
    versus = "1000 idle workers, goworker-py / APScheduler"
    row(
        "1,000 idle daily jobs: wake-ups",
        "≤ 1 /s",
        [Cell("bench_idle", (f"wake-ups, {gw}",)), Cell("bench_idle", (f"wake-ups, {aps}",)), None],
    )
    for label, key in (("context switches", "context switches"), ("CPU", "idle CPU")):
        row(
            f"1,000 idle daily jobs: {label}",
            "≤ 2x APScheduler's",
            [
                Cell("bench_idle", (f"{key}, {gw}",), judge=(f"{key} ratio, {versus}",)),
                Cell("bench_idle", (f"{key}, {aps}",)),
                None,
            ],
        )
    row(
        "1,000 idle daily jobs: threads",
        "",
        [Cell("bench_idle", (f"threads, {gw}",)), Cell("bench_idle", (f"threads, {aps}",)), None],
    )
    times = ("start-up time, {}", "clean stop time, {}")
    row(
        "1,000 jobs: start / clean stop",
        "≤ 0.2 s / ≤ 0.1 s",
        [
            Cell("bench_idle", tuple(t.format(gw) for t in times)),
            Cell("bench_idle", tuple(t.format(aps) for t in times)),
            None,
        ],
    )
    row(
        "1,000 idle daily jobs: RSS per job",
        "≤ 16 KiB",
        [
            Cell("bench_idle", (f"RSS per worker, {gw}",)),
            Cell("bench_idle", (f"RSS per job, {aps}",)),
            None,
        ],
    )
    contenders = ("goworker-py", "APScheduler")
    for label, goal, templates in (
        ("start / clean stop", "", times),
        ("idle wake-ups / CPU", "≤ 1 /s", ("wake-ups, {}", "idle CPU, {}")),
        ("idle RSS per job / RSS", "≤ 16 KiB", ("RSS per job, {}", "RSS, {}")),
    ):
        cells: list[Cell | None] = [_scale(templates, c) for c in contenders]
        row(f"10,000 daily jobs (--quick: 2,000): {label}", goal, [*cells, None])
    spread: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("lateness p50 / p99 / max", tuple(f"lateness {p}, {{}}" for p in ("p50", "p99", "max"))),
        ("missed fires / peak threads", ("missed fires, {}", "peak threads while firing, {}")),
    )
    for label, spread_templates in spread:
        cells = [_spread(spread_templates, c) for c in contenders]
        row(
            f"10,000 daily jobs fired over 60 s (--quick: 2,000 over 20 s): {label}",
            "",
            [*cells, None],
        )

    for count in (1000, 100):
        bench, what = f"bench_cron_compare_{count}", f"{count} job(s)"
        for variant, label in (
            ("goworker-py", "INFO sink to a file"),
            ("goworker-py, default logging", "loguru's default sink (stderr to a file)"),
        ):
            judge = tuple(
                f"lateness {p} / {ref}, {what}, {variant}"
                for p in ("p50", "p99")
                for ref in ("floor's", "APScheduler's")
            )
            row(
                f"{count:,} jobs in the same second, {label}: lateness p50 / p99",
                "≤ 1.5x the floor's, ahead of APScheduler",
                [
                    _herd(bench, what, variant, judge),
                    _herd(bench, what, APS),
                    _herd(bench, what, FLOOR),
                ],
            )
        cpu = f"CPU per run while firing, {what}"
        row(
            f"{count:,} jobs in the same second, INFO sink: CPU of the process per run",
            "",
            [Cell(bench, (f"{cpu}, {c}",)) for c in ("goworker-py", APS, FLOOR)],
        )
    return table
