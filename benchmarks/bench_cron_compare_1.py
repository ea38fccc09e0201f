"""B2 bench_cron_compare_1: 1 job firing every second: goworker-py vs APScheduler vs floor.

Lateness of each run behind its scheduled second, for goworker-py (``*/1 * * * * *``),
APScheduler 3's ``BackgroundScheduler`` with the same ``CronTrigger(second='*')`` and bare
``threading.Event.wait`` threads (the floor), each in a fresh interpreter, 10 measured fires
each after one warm-up fire (about 35 s; ``--quick``: 3 fires, about 15 s). See ``_cron.py`` for
the method.

Run: ``.venv/bin/python benchmarks/bench_cron_compare_1.py [--quick] [--fires N]``
"""

from __future__ import annotations

from _cron import compare_main

if __name__ == "__main__":
    compare_main(workers=1, script=__file__, doc=__doc__ or "", fires=(3, 10))
