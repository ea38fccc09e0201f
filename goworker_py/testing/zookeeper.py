"""A real ZooKeeper server process for tests: start, stop, kill, pause, restart, logs.

Cluster behaviour can only be trusted when it is tested against a real server, so this module
runs ZooKeeper itself: a JVM child process on a free loopback port, with its own temp data dir
and log file, started, broken and closed by :class:`~goworker_py.testing.process.ServerProcess`
(a restart keeps the port and the data dir, so sessions survive an outage shorter than their
timeout; a pause is a partition, as clients see it). What is ZooKeeper's own is here: the JVM's
command line, ``zoo.cfg``, the logging config, and "serving" meaning ``srvr`` reports a mode.

Where ZooKeeper comes from: see :func:`goworker_py.testing.install.find_zookeeper`. Sessions are
expired for real by :func:`goworker_py.testing.sessions.expire_session`; a 3-server quorum is
:class:`goworker_py.testing.ensemble.ZooKeeperEnsemble`.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from goworker_py.testing.errors import ZooKeeperStartError
from goworker_py.testing.install import ZooKeeperInstall, find_zookeeper
from goworker_py.testing.network import FourLetterWords, free_ports
from goworker_py.testing.process import ServerProcess

STANDALONE_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"
QUORUM_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"

# A small, quick JVM: C1 JIT only, the serial GC, class-data sharing. Measured on 2 cores: start
# about 0.27 s, and a quarter less CPU than the JVM defaults (it matters when tests share CPUs).
DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-Xms16m",
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

_LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{HH:mm:ss,SSS} %-5p [%t] %c{1} - %m%n
"""

_LOGBACK_XML = """\
<configuration>
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level [%thread] %logger{1} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""


@dataclass(frozen=True)
class _Quorum:
    myid: int
    peers: tuple[str, ...]  # "server.N=127.0.0.1:peer:election" lines


class ZooKeeperServer(ServerProcess, FourLetterWords):
    """A real ZooKeeper server in a child JVM, for tests.

    ``tick_time`` (ms) is small by default so sessions can expire sub-second: the server accepts
    session timeouts from ``2 * tick_time`` up to ``max_session_timeout`` ms. ``stop()`` keeps the
    data dir so ``start()`` resumes with the same sessions (the server reloads them: sessions
    whose timeout is longer than an outage survive it); ``close()`` also removes it. Use as a
    context manager, or call :meth:`close`; anything left open is closed at exit.

    One difference of :meth:`pause` from a real partition: the kernel still accepts connections
    to a stopped process, so a client's reconnect attempts queue up, and on resume ZooKeeper may
    handle one (reviving the session) before its expiry thread runs. Sessions whose deadline
    passed during the pause therefore expire at resume only if their client stayed away (as it
    would behind a real partition): to be sure, point it elsewhere meanwhile (kazoo's
    ``client.set_hosts``).
    """

    kind = "ZooKeeper"
    _dir_prefix = "goworker-zk-"
    _log_name = "zookeeper.log"
    _start_error = ZooKeeperStartError

    def __init__(
        self,
        tick_time: int = 100,
        *,
        max_session_timeout: int = 60_000,
        port: int | None = None,
        install: ZooKeeperInstall | None = None,
        jvm_flags: Sequence[str] | None = None,
        start_timeout: float = 30.0,
        fsync: bool = False,
        _quorum: _Quorum | None = None,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout)
        self.tick_time = tick_time
        self.max_session_timeout = max_session_timeout
        self.fsync = fsync
        self._install = install
        extra = shlex.split(os.environ.get("ZOOKEEPER_JVM_FLAGS", ""))
        self._jvm_flags = [*(DEFAULT_JVM_FLAGS if jvm_flags is None else jvm_flags), *extra]
        self._auto_port = port is None
        self._quorum = _quorum
        self._served = False

    def _address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __repr__(self) -> str:
        return f"<ZooKeeperServer {self.hosts} tick={self.tick_time}ms {self._state()}>"

    # -- what is ZooKeeper's own ------------------------------------------------------------------

    def _find_program(self) -> None:
        if self._install is None:
            self._install = find_zookeeper()

    def _prepare(self, workdir: Path) -> None:
        (workdir / "data").mkdir()
        if self._quorum is not None:
            (workdir / "data" / "myid").write_text(f"{self._quorum.myid}\n")
        (workdir / "log4j.properties").write_text(_LOG4J_PROPERTIES)
        (workdir / "logback.xml").write_text(_LOGBACK_XML)

    def _spawn_until_serving(self) -> None:
        for attempt in range(3):
            try:
                super()._spawn_until_serving()
                break
            except ZooKeeperStartError:
                # Lost a race for a port we picked: pick another, but only before any client
                # knows it (a restart must come back on the same port).
                in_use = "already in use" in self.log_tail()
                self.kill()
                if not (in_use and self._auto_port and not self._served and attempt < 2):
                    raise
                self._port = free_ports(1)[0]
        self._served = True

    def _command(self) -> list[str]:
        assert self._workdir is not None and self._install is not None
        work = self._workdir
        cfg = work / "zoo.cfg"
        cfg.write_text(self._config_text())
        props = [
            f"-Dlog4j.configuration=file:{work / 'log4j.properties'}",
            f"-Dlogback.configurationFile={work / 'logback.xml'}",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
            "-Dzookeeper.jmx.log4j.disable=true",
            f"-Dzookeeper.forceSync={'yes' if self.fsync else 'no'}",
            "-Dzookeeper.cnxTimeout=1000",
        ]
        if self._quorum is not None:
            # Election rounds back off up to 60 s by default; a test needs a leader in seconds.
            props.append("-Dzookeeper.fastleader.maxNotificationInterval=1000")
        main = STANDALONE_MAIN if self._quorum is None else QUORUM_MAIN
        cmd = [self._install.java, *self._jvm_flags, *props, "-cp", self._install.classpath]
        return [*cmd, main, str(cfg)]

    def _config_text(self) -> str:
        assert self._workdir is not None
        lines = [
            f"tickTime={self.tick_time}",
            f"dataDir={self._workdir / 'data'}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            f"minSessionTimeout={2 * self.tick_time}",
            f"maxSessionTimeout={self.max_session_timeout}",
            "4lw.commands.whitelist=*",
            "admin.enableServer=false",
            "maxClientCnxns=0",  # every test client comes from 127.0.0.1: no per-IP limit
            "preAllocSize=1024",
        ]
        if self._quorum is not None:
            # In ticks: about 10 s to sync at start, 4 s before a lagging follower is dropped.
            sync = max(10, 4000 // self.tick_time)
            lines += [f"initLimit={max(20, 10_000 // self.tick_time)}", f"syncLimit={sync}"]
            lines += list(self._quorum.peers)
        return "\n".join(lines) + "\n"

    def _serves(self) -> bool:
        """``srvr`` reports a ``Mode``: the server serves clients."""
        return self.mode(timeout=1.0) is not None
