"""An existing ZooKeeper server (``ZK_HOSTS``, e.g. a container) that tests may use but not own."""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from goworker_py.testing.errors import FaultInjectionUnsupported, ZooKeeperError
from goworker_py.testing.network import FourLetterWords, four_letter_word, split_hosts


class ExternalZooKeeper(FourLetterWords):
    """A server this process does not own (``ZK_HOSTS``, e.g. a container).

    Status queries work (if its ``4lw.commands.whitelist`` allows them); anything that needs the
    process (stop, kill, pause, restart) raises :class:`FaultInjectionUnsupported`.
    """

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self.addresses, self.chroot = split_hosts(hosts)
        if not self.addresses:
            raise ZooKeeperError(f"no host in ZK_HOSTS={hosts!r}")

    def _address(self) -> tuple[str, int]:
        return self.addresses[0]

    def __repr__(self) -> str:
        return f"<ExternalZooKeeper {self.hosts}>"

    @property
    def bare_hosts(self) -> str:
        """The connection string without its chroot."""
        return self.hosts.partition("/")[0]

    @property
    def is_running(self) -> bool:
        """``True`` when some host serves: ``srvr`` says so, or (4lw disabled) a client connects."""
        reachable = False
        for address in self.addresses:
            try:
                reply = four_letter_word(address, "srvr", timeout=2.0)
            except OSError:
                continue
            if "Mode:" in reply:
                return True
            reachable = True  # e.g. "srvr is not executed because it is not in the whitelist"
        if not reachable:
            return False
        client = KazooClient(hosts=self.bare_hosts, timeout=5.0)
        try:
            client.start(timeout=5.0)
            return True
        except KazooTimeoutError:
            return False
        finally:
            client.stop()
            client.close()

    def _unsupported(self, action: str) -> FaultInjectionUnsupported:
        return FaultInjectionUnsupported(
            f"cannot {action} the external ZooKeeper at {self.hosts} (ZK_HOSTS): this needs a "
            f"server started by goworker_py.testing (unset ZK_HOSTS and install ZooKeeper)"
        )

    def start(self, *, wait: bool = True) -> ExternalZooKeeper:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("start")

    def stop(self, timeout: float = 10.0) -> None:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("stop")

    def kill(self) -> None:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("kill")

    def restart(self, down_for: float = 0.0, *, kill: bool = False) -> None:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("restart")

    def pause(self) -> None:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("pause")

    def resume(self) -> None:
        """Raise :class:`FaultInjectionUnsupported`."""
        raise self._unsupported("resume")

    def close(self) -> None:
        """Nothing to release: the server is not ours."""

    def log_text(self) -> str:
        """Always empty: the log of an external server is not reachable from here."""
        return ""

    def log_tail(self, lines: int = 200) -> str:
        """Always empty (see :meth:`log_text`)."""
        return ""
