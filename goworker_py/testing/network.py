"""Loopback ports, connection strings, and four-letter-word queries to a ZooKeeper server."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

from goworker_py.testing.errors import ZooKeeperError


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free loopback ports, below the kernel's ephemeral range.

    Ports outside the ephemeral range can never be taken by a client's outgoing connection
    while the server is down (nor "self-connect" to it), which matters for restarts.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = list(range(10000, low)) if low > 11000 else []
    random.shuffle(candidates)
    ports: list[int] = []
    for port in [*candidates, *([0] * count)]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            chosen = int(sock.getsockname()[1])
        if chosen not in ports:
            ports.append(chosen)
        if len(ports) == count:
            return ports
    raise ZooKeeperError(f"could not find {count} free loopback ports")


def four_letter_word(address: tuple[str, int], word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter command (``ruok``, ``srvr``, ``mntr``...) and return the reply.

    Raises :class:`OSError` when the server does not answer in time.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(word.encode("ascii"))
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_mntr(text: str) -> dict[str, int | float | str]:
    """Parse a ``mntr`` reply into ``{key: number or string}``."""
    result: dict[str, int | float | str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("\t")
        if not sep:
            continue
        value: int | float | str = raw.strip()
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                pass
        result[key.strip()] = value
    return result


def split_hosts(hosts: str) -> tuple[list[tuple[str, int]], str]:
    """Split ``"h1:p1,h2:p2/chroot"`` into ``([(h1, p1), (h2, p2)], "/chroot")``."""
    host_part, slash, chroot = hosts.partition("/")
    addresses = []
    for item in filter(None, (h.strip() for h in host_part.split(","))):
        if item.startswith("["):  # [::1]:2181
            host, _, rest = item[1:].partition("]")
            port = rest.lstrip(":")
        else:
            host, _, port = item.partition(":")
        addresses.append((host, int(port) if port else 2181))
    return addresses, (slash + chroot).rstrip("/")


def with_chroot(hosts: str, chroot: str) -> str:
    """Append a chroot path to a connection string (after any chroot it already has)."""
    return hosts.rstrip("/") + "/" + chroot.strip("/")


class FourLetterWords:
    """Status queries shared by local and external servers."""

    def _address(self) -> tuple[str, int]:
        raise NotImplementedError

    def srvr(self, timeout: float = 2.0) -> str:
        """The ``srvr`` reply (version, latency, connections, ``Mode:``)."""
        return four_letter_word(self._address(), "srvr", timeout)

    def mode(self, timeout: float = 2.0) -> str | None:
        """``standalone``, ``leader`` or ``follower``; ``None`` if not serving or unreachable."""
        try:
            reply = self.srvr(timeout)
        except OSError:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.partition(":")[2].strip()
        return None

    def ruok(self, timeout: float = 2.0) -> bool:
        """``True`` when the server answers ``ruok`` with ``imok``."""
        try:
            return four_letter_word(self._address(), "ruok", timeout).strip() == "imok"
        except OSError:
            return False

    def mntr(self, timeout: float = 2.0) -> dict[str, int | float | str]:
        """The ``mntr`` metrics as a dict, e.g. ``{"zk_packets_received": 42, ...}``."""
        reply = four_letter_word(self._address(), "mntr", timeout)
        metrics = parse_mntr(reply)
        if not metrics:
            raise ZooKeeperError(f"mntr gave no metrics: {reply.strip()!r}")
        return metrics
