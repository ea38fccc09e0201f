"""B2 bench_cron_compare_1000: 1000 jobs firing every second: goworker-py vs APScheduler vs floor.

The herd of issue #12. Lateness of each run behind its scheduled second, for goworker-py
(``*/1 * * * * *``) with an INFO log sink to a file and again with the logging defaults a
user gets (loguru's default sink, to stderr, here a file), APScheduler 3's
``BackgroundScheduler`` with the same ``CronTrigger(second='*')`` and bare
``threading.Event.wait`` threads (the floor), each in a fresh interpreter, 8 measured fires
each after one warm-up fire (about 40 s; ``--quick``: 3 fires, about 24 s). See ``_cron.py`` for
the method. Goals (printed, not asserted): goworker-py's p50 and p99 within 1.5x the floor's
and ahead of APScheduler's, with either logging.

Run: ``.venv/bin/python benchmarks/bench_cron_compare_1000.py [--quick] [--fires N]``
"""

from __future__ import annotations

from _cron import CONTENDERS, compare_main

if __name__ == "__main__":
    compare_main(1000, __file__, __doc__ or "", fires=(3, 8), contenders=CONTENDERS)
