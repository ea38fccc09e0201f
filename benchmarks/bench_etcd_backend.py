"""B-etcd bench_etcd_backend: the etcd v3 backend's floors, through its own API, on a local etcd.

Against a private etcd 3.4 (``goworker_py.testing.EtcdServer``: Debian's ``etcd-server``):

- ``connect()`` (gateway discovery, a read, a lease grant);
- round trips: ``round_trip`` (a lease keep-alive), ``claim`` + ``release``, ``begin_run`` (one
  fenced transaction: one round trip, one write), ``members()`` of 5;
- change delivery: another backend writes the settings, this one's ``on_change`` runs;
- a clean ``close()`` → an observer's ``CLAIMS`` change (the floor of a clean hand-over);
- a silent owner (keep-alives stopped, as after kill -9) → its claim gone, counted from its last
  keep-alive reply (target: the lease's TTL + 0.5 s);
- idle keep-alive requests per instance per second.

No server-side tuning beyond 50 ms heartbeats. About 15 s (``--quick`` about 8 s).

Run: ``.venv/bin/python benchmarks/bench_etcd_backend.py [--quick]``
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from _common import Report, calibrate, fmt_stats, parse_args, stats

from goworker_py.cluster.backend import Change, RunRecord
from goworker_py.cluster.backends.etcd import EtcdBackend
from goworker_py.config import DiscoveryConfig
from goworker_py.instance import WorkerInstance
from goworker_py.testing.etcd import EtcdServer

TTL = 2.0


def timed(count: int, op: Callable[[int], Any]) -> list[float]:
    samples = []
    for i in range(count):
        start = time.perf_counter()
        op(i)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    args = parse_args((__doc__ or "").splitlines()[0])
    report = Report("bench_etcd_backend", "B-etcd", args.quick)
    n = 200 if args.quick else 1000
    rounds = 5 if args.quick else 20
    with EtcdServer() as server:
        report.calibration = calibrate(quick=True)
        config = DiscoveryConfig(
            protocol="etcdv3",
            hosts=server.hosts,
            namespace=f"bench-{uuid.uuid4().hex[:8]}",
            session_timeout=TTL,
            connect_timeout=5.0,
        )
        made: list[EtcdBackend] = []

        def backend(on_change: Callable[[Change], None] | None = None) -> EtcdBackend:
            made.append(EtcdBackend(config, "svc"))
            made[-1].connect(on_change)
            return made[-1]

        try:
            connects = []
            for _ in range(rounds):
                start = time.perf_counter()
                backend().close()
                connects.append(time.perf_counter() - start)
            figures: dict[str, list[float]] = {"connect()": connects}

            changed = threading.Event()
            stamp = [0.0]

            def on_change(change: Change) -> None:
                if change in (Change.SETTINGS, Change.CLAIMS):
                    stamp[0] = time.perf_counter()
                    changed.set()

            me = backend(on_change)
            me.register(WorkerInstance.create("svc"))
            figures["round_trip (keep-alive)"] = timed(n, lambda i: me.round_trip(1.0))

            def claim_release(i: int) -> None:
                claim = me.claim(i % 8, "me")
                assert claim is not None
                me.release(claim)

            figures["claim + release"] = timed(n, claim_release)
            claim = me.claim(0, "me")
            assert claim is not None

            def begin(i: int) -> None:
                record = RunRecord(0, "me", me.lease_id, f"r{i}", float(i), claim.token)
                assert me.begin_run(claim, record)

            figures["begin_run"] = timed(n, begin)
            for _ in range(4):
                backend().register(WorkerInstance.create("svc"))
            figures["members() of 5"] = timed(n, lambda i: me.members())

            writer = backend()
            delivered = []
            for i in range(n // 4):
                changed.clear()
                start = time.perf_counter()
                writer.write_settings({"i": i}, create_only=False)
                if changed.wait(5):
                    delivered.append(stamp[0] - start)
            figures["settings write → on_change"] = delivered

            handovers = []
            for i in range(rounds):
                owner = backend()
                owner.register(WorkerInstance.create("svc"))
                held = owner.claim(100 + i, "owner")
                assert held is not None and me.claim(100 + i, "me") is None
                changed.clear()
                start = time.perf_counter()
                owner.close()
                if changed.wait(5):
                    handovers.append(stamp[0] - start)
            figures["close() → observer's CLAIMS change"] = handovers

            for name, values in figures.items():
                s = stats(values, 1e3)
                report.add(f"{name} p50", s["p50"], "ms")
                report.add(f"{name} p99", s["p99"], "ms")
                print(f"    {name}: {fmt_stats(s, 'ms')}", flush=True)
                report.details[name] = s

            # A silent owner: its keep-alive thread stops, the server expires the lease.
            expiries = []
            for i in range(2 if args.quick else 5):
                owner = backend()
                held = owner.claim(200 + i, "owner")
                assert held is not None
                owner._lease.close()  # what kill -9 does to the keep-alives
                last = owner.answered_at
                changed.clear()
                if changed.wait(TTL + 5):
                    # perf_counter and monotonic share CLOCK_MONOTONIC on Linux.
                    expiries.append(stamp[0] - last)
            s = stats(expiries)
            report.add(
                f"silent owner: last keep-alive → claim gone (TTL {TTL:g} s) max",
                s.get("max"),
                "s",
                target=TTL + 0.5,
            )
            report.details["silent owner"] = s

            idle = backend()
            before, began = idle.keepalive_requests, time.monotonic()
            time.sleep(3.0 if args.quick else 10.0)
            rate = (idle.keepalive_requests - before) / (time.monotonic() - began)
            report.add(
                f"idle keep-alive requests per instance (TTL {TTL:g} s)",
                round(rate, 2),
                "req/s",
                note="3 / TTL; plus one watch re-open per minute",
            )
        finally:
            for item in made:
                item.close()
    report.emit()


if __name__ == "__main__":
    main()
