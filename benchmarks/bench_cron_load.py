"""B2 bench_cron_load: 16 jobs firing every second under load: goworker-py vs APScheduler vs floor.

B2's load variants, each contender measured the same way as ``bench_cron_compare_*`` (see
``_cron.py``): lateness of each run behind its scheduled second (p50 / p99 / max) and missed
runs, for 16 jobs firing every second in

- goworker-py: 16 local workers on ``*/1 * * * * *`` (the same schedule as ``* * * * * *``),
- APScheduler 3: one ``BackgroundScheduler`` with 16 ``CronTrigger(second='*')`` jobs,
- the floor: 16 bare threads ``Event.wait``-ing for the next whole second,

under two conditions, one after the other:

- one GIL-busy thread: a CPU-bound pure-Python thread spins in the measured interpreter;
- 2 CPU-hog processes: two external ``while True: pass`` processes keep both cores busy.

Each contender runs in a fresh interpreter, one after the other; a noise witness in the parent
measures the machine's own timer lateness meanwhile. 8 measured fires (128 runs) per contender
and condition, after one warm-up fire: about 60 s (``--quick``: 2 fires, about 25 s). No
targets: the floor under the same load is the reference.

Run: ``.venv/bin/python benchmarks/bench_cron_load.py [--quick] [--fires N]``
"""

from __future__ import annotations

from _cron import load_main

if __name__ == "__main__":
    load_main(workers=16, script=__file__, doc=__doc__ or "", fires=(2, 8))
