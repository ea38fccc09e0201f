"""The reliability harness: worker instances as OS processes, faults, an observer, the history.

A :class:`Scenario` (one per test, from the ``scenario`` fixture) owns everything a test
starts: :class:`Instance` processes running ``instance_main.py``, :class:`~.proxy.TcpProxy`
proxies, and an observer (:mod:`.observer`) that reads what the coordination server holds - for
ZooKeeper a kazoo client of its own, straight at the server; for etcd and Redis a backend
connected through the seam without registering. Every instance appends to one history file;
:meth:`Scenario.runs` pairs its start and end events and :meth:`Scenario.check` hands them to the
independent :mod:`.checker`. At teardown every process is killed and every proxy closed; when the
test failed, the instances' stderr tails and the history are added to its report.

A scenario runs on one backend (:attr:`Scenario.backend`: ``"zookeeper"``, ``"etcd"`` or
``"redis"``); instances get ``--hosts`` on ZooKeeper and a ``--discovery`` URL on the others.
The history's ``session`` of an instance is its lease: the ZooKeeper session id in hex
(``0x...``), the etcd lease id in hex, the Redis lease's token - what the observer reports as
the holder of claims and member entries.

Times in the history are ``time.time()`` (one machine, every process); the harness stamps its
faults (:attr:`Instance.killed_at`, :attr:`Instance.frozen`) with the same clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from goworker_py.testing.process import die_with_parent_prefix, wait_for_threads

from .checker import check_fenced_writes, check_history
from .observer import ClaimSample as ClaimSample  # re-exported: the scenarios' imports
from .observer import ClaimSamples as ClaimSamples
from .observer import Observer, ObserverBase, SeamObserver, wait_for
from .proxy import PartitionMode, TcpProxy

INSTANCE_MAIN = Path(__file__).with_name("instance_main.py")
REPO = Path(__file__).resolve().parents[2]

#: Defaults of :meth:`Scenario.spawn` (``Scenario.defaults``): every instance of one service
#: must share ``shards`` and ``cron`` (ZooKeeper's service config node refuses others).
DEFAULTS: dict[str, Any] = {
    "service": "svc",
    "shards": 3,
    "cron": "* * * * * *",
    "session_timeout": 2.0,
    "run_seconds": 0.2,
    "misfire_policy": "skip",
    "shutdown_timeout": 5.0,
}
_VALUE_FLAGS = (
    "service",
    "shards",
    "cron",
    "session_timeout",
    "run_seconds",
    "shard_run_seconds",
    "misfire_policy",
    "shutdown_timeout",
    "gil_hog",
    "connect_timeout",
    "tick",
    "slow_watch",
    "handover_timeout",
)
_BOOL_FLAGS = ("ignore_cancel", "fork_child", "tick_busy")
#: The backends a scenario may run on: ``{name: discovery protocol}``.
PROTOCOLS = {"zookeeper": "zookeeper", "etcd": "etcdv3", "redis": "redis"}
#: The private-server fixture of each backend (``conftest.scenario`` requests it).
SERVER_FIXTURES = {
    "zookeeper": "zookeeper_private",
    "etcd": "etcd_private",
    "redis": "redis_private",
}
_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


def on_backends(*backends: str) -> Callable[[_F], _F]:
    """Run the decorated scenario test once per backend (test ids ``[zookeeper]``, ...)."""
    unknown = set(backends) - set(SERVER_FIXTURES)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)} (one of {sorted(SERVER_FIXTURES)})")
    mark: Callable[[_F], _F] = pytest.mark.parametrize(
        "scenario", list(backends), indirect=True, ids=list(backends)
    )
    return mark


def period_of(cron: str) -> float | None:
    """The period (s) of the fixed-period schedules scenarios use (``* * * * * *``,
    ``*/N * * * * *``, ``@every 200ms``), or None for anything else."""
    text = cron.strip()
    if text == "* * * * * *":
        return 1.0
    if text.startswith("*/") and text.endswith(" * * * * *"):
        return float(text[2:].split()[0])
    if text.startswith("@every "):
        spec = text.split(None, 1)[1].strip()
        for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            number = spec[: -len(unit)]
            if spec.endswith(unit) and number.replace(".", "", 1).isdigit():
                return float(number) * scale
    return None


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# -- one worker process ----------------------------------------------------------------------------


class Instance:
    """One ``instance_main.py`` process. Faults are stamped with ``time.time()``."""

    def __init__(
        self,
        scenario: Scenario,
        name: str,
        args: list[str],
        proxy: TcpProxy | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.scenario = scenario
        #: The instance's name in the history (``"instance"`` of every event).
        self.name = name
        self.args = args
        #: Its own proxy in front of ZooKeeper (``spawn(via_proxy=True)``), else None.
        self.proxy = proxy
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = scenario.dir / f"{name}.stderr"
        self.started_at: float | None = None
        #: When ``sigkill()`` was sent (the runs it had in flight ended then).
        self.killed_at: float | None = None
        #: ``[(stopped, continued)]``: when ``sigstop()`` had frozen it, until ``sigcont()``.
        self.frozen: list[tuple[float, float]] = []
        self._stopped_at: float | None = None

    def __repr__(self) -> str:
        return f"<Instance {self.name} pid {self.pid} {'alive' if self.alive else 'exited'}>"

    def start(self) -> Instance:
        """Start the process (its stdout and stderr go to ``<name>.stderr``)."""
        env = dict(os.environ)
        env.pop("CI", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(self.env)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [*die_with_parent_prefix(), sys.executable, str(INSTANCE_MAIN), *self.args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int:
        """The process id (0 before ``start()``)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        """True while the process runs (also while stopped)."""
        return self.proc is not None and self.proc.poll() is None

    def _signal(self, signum: int) -> None:
        assert self.proc is not None, f"{self.name} was not started"
        self.proc.send_signal(signum)

    def sigterm(self) -> None:
        """Ask for a graceful stop."""
        self._signal(signal.SIGTERM)

    def sigkill(self) -> float:
        """Crash it (``kill -9``); return the time of death."""
        self._signal(signal.SIGKILL)
        self.killed_at = time.time()
        if self._stopped_at is not None:  # killed while frozen: it did nothing meanwhile
            self.frozen.append((self._stopped_at, self.killed_at))
            self._stopped_at = None
        self.scenario.note("sigkill", instance=self.name, at=self.killed_at)
        assert self.proc is not None
        self.proc.wait(10)
        return self.killed_at

    def sigstop(self) -> float:
        """Freeze it; return once every thread is stopped (the time then)."""
        self._signal(signal.SIGSTOP)
        wait_for_threads(self.pid, stopped=True)
        self._stopped_at = time.time()
        self.scenario.note("sigstop", instance=self.name, at=self._stopped_at)
        return self._stopped_at

    def sigcont(self) -> float:
        """Thaw it; return the time just before the signal."""
        at = time.time()
        self._signal(signal.SIGCONT)
        if self._stopped_at is not None:
            self.frozen.append((self._stopped_at, at))
            self._stopped_at = None
        self.scenario.note("sigcont", instance=self.name, at=at)
        return at

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; return its exit code (negative: killed by a signal)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s\n{self.stderr_tail()}"
            ) from None

    def kill(self) -> None:
        """Teardown: kill it if it still runs."""
        if self.alive:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                assert self.proc is not None
                self.proc.kill()
                self.proc.wait(10)

    def thread_stacks(self, timeout: float = 2.0) -> str:
        """Every thread's stack and the backend's attributes, as the running process writes
        them on SIGUSR1 and SIGUSR2 ("" when it is not running: exited, or frozen by
        :meth:`sigstop`)."""
        if not self.alive or self._stopped_at is not None:
            return ""
        before = self.stderr_path.stat().st_size
        with contextlib.suppress(OSError):
            self._signal(signal.SIGUSR1)  # the stacks (faulthandler)
            time.sleep(0.05)
            self._signal(signal.SIGUSR2)  # the backend's state (instance_main.dump_backend)
        deadline, size = time.monotonic() + timeout, before
        while time.monotonic() < deadline:
            time.sleep(0.1)
            grown = self.stderr_path.stat().st_size
            if grown > before and grown == size:
                break  # written, and done writing
            size = grown
        with open(self.stderr_path, "rb") as err:
            err.seek(before)
            return err.read().decode(errors="replace")

    def stderr_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of its stderr (its log)."""
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- from the history --------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """This instance's history events (of one ``kind``)."""
        return [
            e
            for e in self.scenario.history()
            if e.get("instance") == self.name and (kind is None or e.get("event") == kind)
        ]

    @property
    def session(self) -> str | None:
        """Its latest session (hex) as it registered it, or None."""
        registered = self.events("registered")
        return registered[-1]["session"] if registered else None

    @property
    def health(self) -> str | None:
        """Its latest health (``GREEN``, ``YELLOW``, ``RED``) as it reported it."""
        health = self.events("health")
        return health[-1]["health"] if health else None


# -- one scenario ----------------------------------------------------------------------------------


class Scenario:
    """Everything one reliability test starts, and what it observed.

    ``server`` is anything with ``.hosts``: a ``ZooKeeperServer`` or a ``ZooKeeperEnsemble``
    for ``backend="zookeeper"`` (the default), an ``EtcdServer`` for ``"etcd"``, a
    ``RedisServer`` for ``"redis"``; ``defaults`` override :data:`DEFAULTS` for every
    :meth:`spawn`.
    """

    def __init__(
        self,
        server: Any,
        directory: Path,
        *,
        request: Any = None,
        backend: str = "zookeeper",
        **defaults: Any,
    ) -> None:
        if backend not in PROTOCOLS:
            raise ValueError(f"unknown backend {backend!r} (one of {sorted(PROTOCOLS)})")
        self.server = server
        #: The backend the instances coordinate through (a key of :data:`PROTOCOLS`).
        self.backend = backend
        #: Where instances connect by default (the server itself; a proxy per instance with
        #: ``spawn(via_proxy=True)``).
        self.hosts: str = server.hosts
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.history_path = self.dir / "history.jsonl"
        self.history_path.touch()
        self.fence_dir = self.dir / "fence"
        self.defaults: dict[str, Any] = {**DEFAULTS, **defaults}
        self.instances: list[Instance] = []
        self.proxies: list[TcpProxy] = []
        self.figures: dict[str, Any] = {}
        self._request = request
        self._names = 0
        self._observer: ObserverBase | None = None
        self._history_lock = threading.Lock()
        self._history_offset = 0
        self._history_events: list[dict[str, Any]] = []
        #: ``{instance name or "*": [(start, end or None)]}``: when instances could not reach
        #: ZooKeeper because of a fault the harness injected ("*": all of them).
        self.cut_off: dict[str, list[list[float | None]]] = {}
        if request is not None:
            scenarios = getattr(request.node, "reliability_scenarios", [])
            scenarios.append(self)
            request.node.reliability_scenarios = scenarios

    # -- instances and proxies ----------------------------------------------------------------

    @property
    def observer(self) -> ObserverBase:
        """The observer (connected on first use): kazoo's on ZooKeeper, the seam's on the
        other backends (see :mod:`.observer`)."""
        if self._observer is None:
            service = self.defaults["service"]
            if self.backend == "zookeeper":
                self._observer = Observer(self.server.hosts, service)
            else:
                self._observer = SeamObserver(PROTOCOLS[self.backend], self.server.hosts, service)
        return self._observer

    def discovery_args(self, hosts: str) -> list[str]:
        """``instance_main.py``'s flags to reach the backend at ``hosts``: ``--hosts`` for
        ZooKeeper, a ``--discovery`` URL for the others."""
        if self.backend == "zookeeper":
            return ["--hosts", hosts]
        if self.backend == "redis":
            return ["--discovery", f"redis://{hosts}/0"]
        return ["--discovery", f"etcd://{hosts}"]

    def proxy(self) -> TcpProxy:
        """A new proxy in front of the (single) server, closed at teardown."""
        addresses = [h for h in self.server.hosts.split("/")[0].split(",") if h]
        if len(addresses) != 1:
            raise NotImplementedError("a proxy fronts a single server, not an ensemble")
        host, _, port = addresses[0].rpartition(":")
        proxy = TcpProxy(host, int(port))
        self.proxies.append(proxy)
        return proxy

    def spawn(
        self,
        n: int = 1,
        *,
        wait: bool = True,
        timeout: float = 30.0,
        via_proxy: bool | TcpProxy = False,
        name: str | None = None,
        hosts: str | None = None,
        fence_dir: bool | str | Path = False,
        env: dict[str, str] | None = None,
        **opts: Any,
    ) -> list[Instance]:
        """Start ``n`` instances; with ``wait`` (default), return once each has registered.

        ``opts`` are ``instance_main.py`` flags in Python spelling (``run_seconds=0.5``,
        ``ignore_cancel=True``, ``gil_hog=4.0``, ``fork_child=True``, ``tick=0.04``,
        ``tick_busy=True``, ``slow_watch=6.0``, ``handover_timeout=5.0``, ...) over
        :attr:`defaults`. ``via_proxy=True`` puts a proxy of its own in front of each instance
        (``instance.proxy``); an existing :class:`TcpProxy` may be passed instead (armed
        beforehand, e.g. ``drop_next_reply``). ``fence_dir=True`` uses the scenario's fenced
        store. ``name`` names a single instance (default ``i1``, ``i2``...).
        """
        if name is not None and n != 1:
            raise ValueError("name= is for a single instance")
        settings = {**self.defaults, **opts}
        spawned: list[Instance] = []
        for _ in range(n):
            self._names += 1
            label = name or f"i{self._names}"
            proxy: TcpProxy | None = None
            if isinstance(via_proxy, TcpProxy):
                proxy = via_proxy
            elif via_proxy:
                proxy = self.proxy()
            target = hosts or (proxy.hosts if proxy is not None else self.hosts)
            args = [
                *self.discovery_args(target),
                *("--history", str(self.history_path), "--name", label),
            ]
            for key in _VALUE_FLAGS:
                if settings.get(key) is not None:
                    args += [f"--{key.replace('_', '-')}", str(settings[key])]
            for key in _BOOL_FLAGS:
                if settings.get(key):
                    args.append(f"--{key.replace('_', '-')}")
            if fence_dir:
                directory = self.fence_dir if fence_dir is True else Path(fence_dir)
                args += ["--fence-dir", str(directory)]
            instance = Instance(self, label, args, proxy=proxy, env=env)
            self.instances.append(instance)
            spawned.append(instance.start())
        if wait:
            for instance in spawned:
                self.wait_registered(instance, timeout)
        return spawned

    def wait_registered(self, instance: Instance, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for ``instance``'s first ``registered`` event (fail early if it exits)."""

        def registered() -> dict[str, Any] | None:
            events = instance.events("registered")
            if events:
                return events[0]
            if not instance.alive:
                raise AssertionError(
                    f"{instance.name} exited ({instance.proc and instance.proc.returncode}) "
                    f"before registering:\n{instance.stderr_tail()}"
                )
            return None

        return wait_for(registered, timeout, f"{instance.name} registered", interval=0.02)

    # -- faults that cut instances off ZooKeeper ----------------------------------------------

    def _cut(self, who: str, fault: str, **fields: Any) -> float:
        at = self.note(fault, **fields)
        self.cut_off.setdefault(who, []).append([at, None])
        return at

    def _mend(self, who: str, fault: str, **fields: Any) -> float:
        at = self.note(fault, **fields)
        for window in self.cut_off.get(who, []):
            if window[1] is None:
                window[1] = at
        return at

    def blackhole(self, instance: Instance) -> float:
        """Partition ``instance`` (spawned ``via_proxy``) from ZooKeeper; return when."""
        return self.partition(instance, "drop")

    def partition(self, instance: Instance, mode: PartitionMode) -> float:
        """Partition ``instance`` (spawned ``via_proxy``) from ZooKeeper the way ``mode`` says
        (:meth:`TcpProxy.partition`); return when. The history notes a ``blackhole`` fault for
        ``"drop"``, else ``partition_<mode>``."""
        assert instance.proxy is not None, f"{instance.name} was not spawned via_proxy"
        fault = "blackhole" if mode == "drop" else f"partition_{mode}"
        at = self._cut(instance.name, fault, instance=instance.name)
        instance.proxy.partition(mode)
        return at

    def heal(self, instance: Instance) -> float:
        """End ``instance``'s partition; return when."""
        assert instance.proxy is not None
        instance.proxy.heal()
        return self._mend(instance.name, "heal", instance=instance.name)

    def pause_zookeeper(self) -> float:
        """SIGSTOP the server (every instance is cut off); return once it is frozen."""
        self.server.pause()
        return self._cut("*", "zk_pause")

    def resume_zookeeper(self) -> float:
        """SIGCONT the server; return the time just before."""
        at = self._mend("*", "zk_resume")
        self.server.resume()
        return at

    def kill_zookeeper(self) -> float:
        """SIGKILL the server (its data dir is kept); return when it died."""
        self.server.kill()
        return self._cut("*", "zk_kill")

    def start_zookeeper(self) -> float:
        """Start the server again (same port, same data); return once it serves."""
        self.server.start()
        return self._mend("*", "zk_serving")

    def cut_off_windows(self) -> dict[str, list[tuple[float, float]]]:
        """:attr:`cut_off` with open windows closed now (for the checker)."""
        now = time.time()
        return {
            who: [(float(a or 0.0), now if b is None else float(b)) for a, b in windows]
            for who, windows in self.cut_off.items()
        }

    # -- the history ----------------------------------------------------------------------------

    def note(self, fault: str, at: float | None = None, **fields: Any) -> float:
        """Append a ``fault`` event (what the test did, and when) to the history; return when."""
        when = time.time() if at is None else at
        record = {"event": "fault", "fault": fault, "instance": "harness", "t": when, **fields}
        fd = os.open(self.history_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        finally:
            os.close(fd)
        return when

    def history(self) -> list[dict[str, Any]]:
        """Every event so far, in file order (a line still being written is left out).

        The file only grows, so only what was appended since the last call is read and parsed
        (tests poll the history every few ms, and ticking handlers write thousands of lines).
        The list is the caller's; the events in it are shared: read them, do not change them.
        """
        with self._history_lock:
            with open(self.history_path, "rb") as history:
                history.seek(self._history_offset)
                chunk = history.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._history_offset += len(complete)
            for line in complete.splitlines():
                with contextlib.suppress(ValueError):
                    self._history_events.append(json.loads(line))
            return list(self._history_events)

    def events(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        """Events of one kind whose fields equal ``match``."""
        return [
            e
            for e in self.history()
            if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())
        ]

    @staticmethod
    def pair_runs(history: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pair ``start`` and ``end`` events by run id, in start order (``end`` None: no end)."""
        runs: dict[str, dict[str, Any]] = {}
        for event in history:
            kind = event.get("event")
            if kind == "start":
                runs[event["run_id"]] = {
                    "shard": event["shard"],
                    "instance": event["instance"],
                    "pid": event["pid"],
                    "session": event["session"],
                    "member": event.get("member"),
                    "token": event["token"],
                    "fire": event["fire"],
                    "start": event["t"],
                    "end": None,
                    "outcome": None,
                    "failover": event["failover"],
                    "run_id": event["run_id"],
                }
            elif kind == "end" and event.get("run_id") in runs:
                run = runs[event["run_id"]]
                run["end"] = event["t"]
                run["outcome"] = event["outcome"]
        return sorted(runs.values(), key=lambda r: float(r["start"]))

    def runs(self) -> list[dict[str, Any]]:
        """Every run so far (see :meth:`pair_runs`)."""
        return self.pair_runs(self.history())

    def wait_history(
        self,
        predicate: Callable[[list[dict[str, Any]]], _T | None],
        timeout: float,
        what: str = "",
    ) -> _T:
        """Wait until ``predicate(history)`` is truthy; return its value."""
        return wait_for(lambda: predicate(self.history()), timeout, what, interval=0.01)

    def wait_runs(
        self,
        predicate: Callable[[list[dict[str, Any]]], _T | None],
        timeout: float,
        what: str = "",
    ) -> _T:
        """Wait until ``predicate(runs)`` is truthy; return its value."""
        return wait_for(lambda: predicate(self.runs()), timeout, what, interval=0.01)

    def wait_healthy(
        self, instances: Sequence[Instance] | None = None, timeout: float = 15.0
    ) -> None:
        """Wait until every (given) live instance last reported ``GREEN``."""
        targets = [i for i in (instances or self.instances) if i.alive]

        def green() -> bool:
            latest: dict[str, str] = {}
            for event in self.history():
                if event.get("event") == "health":
                    latest[event["instance"]] = event["health"]
            return all(latest.get(i.name) == "GREEN" for i in targets)

        wait_for(green, timeout, "every instance GREEN", interval=0.01)

    def check(self, *, fenced_writes: bool | None = None, **kwargs: Any) -> list[dict[str, Any]]:
        """Run the checker over :meth:`runs` and fail with a readable report on violations.

        ``kwargs`` go to :func:`checker.check_history`; ``shards``, ``cron_period`` and
        ``misfire_policy`` default to the scenario's, ``ended`` and ``frozen`` to the faults
        the harness injected. Fenced writes are checked when there are any. Returns the runs.
        """
        history = self.history()
        runs = self.pair_runs(history)
        kwargs.setdefault("shards", self.defaults["shards"])
        kwargs.setdefault("cron_period", period_of(str(self.defaults["cron"])))
        kwargs.setdefault("misfire_policy", self.defaults["misfire_policy"])
        kwargs.setdefault(
            "ended", {i.name: i.killed_at for i in self.instances if i.killed_at is not None}
        )
        kwargs.setdefault("frozen", {i.name: list(i.frozen) for i in self.instances if i.frozen})
        kwargs.setdefault("cut_off", self.cut_off_windows())
        violations = check_history(runs, **kwargs)
        if fenced_writes is None:
            fenced_writes = any(e.get("event") == "fenced_write" for e in history)
        if fenced_writes:
            violations += check_fenced_writes(history)
        assert not violations, (
            f"{len(violations)} violation(s) in {len(runs)} runs:\n  "
            + "\n  ".join(violations)
            + "\n"
            + self.runs_table(runs)
        )
        return runs

    @staticmethod
    def runs_table(runs: Sequence[dict[str, Any]], limit: int = 200) -> str:
        """The runs as a table (the last ``limit``)."""
        rows = [
            f"{r['shard']:>5} {r['instance']:>8} {r['session']:>20} {r['token']:>12} "
            f"{r['fire']:>15.3f} {r['start']:>15.3f} "
            f"{(r['end'] or 0):>15.3f} {r['outcome'] or '-':>9} {'F' if r['failover'] else ''}"
            for r in runs[-limit:]
        ]
        header = (
            f"{'shard':>5} {'inst':>8} {'session':>20} {'token':>12} {'fire':>15} "
            f"{'start':>15} {'end':>15} {'outcome':>9}"
        )
        return "\n".join([header, *rows])

    # -- figures and reports -----------------------------------------------------------------

    def figure(self, name: str, value: Any, text: str = "") -> None:
        """Record a figure: printed (``pytest -s``) and in the report (``record_property``)."""
        self.figures[name] = value
        if self._request is not None:
            self._request.node.user_properties.append((name, value))
        print(f"{name}: {text or value}")

    def report(self, history_lines: int = 400) -> str:
        """Stderr tails of every instance, the thread stacks of those still running, and the
        end of the history."""
        parts = []
        for instance in self.instances:
            tail = instance.stderr_tail()
            parts.append(
                f"---- {instance.name} (pid {instance.pid}, exit "
                f"{instance.proc.returncode if instance.proc else None}) stderr tail ----\n" + tail
            )
            if stacks := instance.thread_stacks():
                parts.append(f"---- {instance.name} thread stacks ----\n{stacks}")
        try:
            lines = self.history_path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        parts.append(
            f"---- history: last {min(len(lines), history_lines)} of {len(lines)} lines ----\n"
            + "\n".join(lines[-history_lines:])
        )
        return "\n".join(parts)

    def close(self) -> None:
        """Kill every instance, close every proxy and the observer."""
        for instance in self.instances:
            instance.kill()
        for proxy in self.proxies:
            proxy.close()
        if self._observer is not None:
            self._observer.close()
