"""A real ZooKeeper quorum on loopback, for leader-failure and partial-outage tests.

Each member is a :class:`~goworker_py.testing.zookeeper.ZooKeeperServer` with its own client,
peer and election ports, its own ``myid`` and data dir, so every fault helper of a single server
(kill, stop, pause, logs) also works on one member: ``ensemble.servers[i].pause()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from goworker_py.testing.errors import ZooKeeperError
from goworker_py.testing.install import ZooKeeperInstall, find_zookeeper
from goworker_py.testing.network import free_ports
from goworker_py.testing.process import ServerCluster
from goworker_py.testing.zookeeper import ZooKeeperServer, _Quorum


class ZooKeeperEnsemble(ServerCluster[ZooKeeperServer]):
    """``size`` ZooKeeper servers forming one quorum on 127.0.0.1.

    ``start()`` returns once a leader is elected and every running member serves. The cluster
    serves while a majority (2 of 3) runs; :meth:`stop_leader` forces a new election.
    """

    def __init__(
        self,
        size: int = 3,
        tick_time: int = 100,
        *,
        max_session_timeout: int = 60_000,
        install: ZooKeeperInstall | None = None,
        jvm_flags: Sequence[str] | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if size < 1:
            raise ZooKeeperError(f"an ensemble needs at least one server, not {size}")
        self.start_timeout = start_timeout
        install = install or find_zookeeper()
        ports = free_ports(3 * size)
        client_ports, peer_ports, election_ports = ports[:size], ports[size:-size], ports[-size:]
        peers = tuple(
            f"server.{i + 1}=127.0.0.1:{peer}:{election}"
            for i, (peer, election) in enumerate(zip(peer_ports, election_ports, strict=True))
        )
        super().__init__(
            ZooKeeperServer(
                tick_time,
                max_session_timeout=max_session_timeout,
                port=client_port,
                install=install,
                jvm_flags=jvm_flags,
                start_timeout=start_timeout,
                _quorum=_Quorum(myid=i + 1, peers=peers),
            )
            for i, client_port in enumerate(client_ports)
        )

    @property
    def majority(self) -> int:
        """How many members must run for the ensemble to serve."""
        return len(self.servers) // 2 + 1

    def __repr__(self) -> str:
        return f"<ZooKeeperEnsemble {self.hosts} modes={self.modes()}>"

    def modes(self) -> list[str | None]:
        """Each member's ``Mode`` (``leader``/``follower``), ``None`` when not serving."""
        return [server.mode(timeout=1.0) if server.is_running else None for server in self.servers]

    def leader(self) -> int:
        """The index (in :attr:`servers`) of the current leader; raises if there is none."""
        modes = self.modes()
        if "leader" in modes:
            return modes.index("leader")
        if "standalone" in modes:  # a 1-server "ensemble"
            return modes.index("standalone")
        raise ZooKeeperError(f"no ZooKeeper leader right now (modes: {modes})")

    def start(self, index: int | None = None) -> ZooKeeperEnsemble:
        """Start every member (or member ``index``), then wait until the quorum serves."""
        members = self.servers if index is None else [self.servers[index]]
        for server in members:
            server.start(wait=False)
        self.wait_for_quorum()
        return self

    def wait_for_quorum(self, timeout: float | None = None) -> None:
        """Block until a leader is elected and every running member serves."""
        limit = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            running = [server for server in self.servers if server.is_running]
            if len(running) < self.majority:
                raise ZooKeeperError(
                    f"only {len(running)} of {len(self.servers)} ZooKeeper servers run: no quorum"
                )
            modes = [server.mode(timeout=1.0) for server in running]
            serving = all(modes) and modes.count("leader") + modes.count("standalone") == 1
            if serving:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"-- {s.hosts}:\n{s.log_tail(30)}" for s in running)
                raise ZooKeeperError(
                    f"no ZooKeeper quorum after {limit}s (modes {modes}):\n{tails}"
                )
            time.sleep(0.05)

    def stop(self, index: int | None = None) -> None:
        """Stop (``SIGTERM``) every member, or member ``index``; data dirs are kept."""
        for server in self.servers if index is None else [self.servers[index]]:
            server.stop()

    def kill(self, index: int) -> None:
        """Kill member ``index`` with ``SIGKILL``."""
        self.servers[index].kill()

    def stop_leader(self, *, kill: bool = True, wait: bool = True) -> int:
        """Kill (or stop) the leader and return its index; ``wait``: until a new leader serves."""
        index = self.leader()
        if kill:
            self.servers[index].kill()
        else:
            self.servers[index].stop()
        if wait:
            self.wait_for_quorum()
        return index
