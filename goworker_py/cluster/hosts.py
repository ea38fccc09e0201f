"""Host lists, as every backend takes them: ``"host:port[,host:port...]"``.

:func:`refuse_fast` spares a user the whole connect timeout when nothing listens at any of the
hosts: a refused TCP connect (or a name that does not resolve) will not do better a few seconds
later. Anything else — a host that does not answer at all, one that accepts — is left to the
backend's client and its connect timeout.
"""

from __future__ import annotations

import socket

from goworker_py.errors import BackendUnavailable, DiscoveryError


def parse_hosts(hosts: str, what: str) -> list[tuple[str, int]]:
    """``[(host, port)]`` of ``"h1:p1,h2:p2"`` (a ZooKeeper chroot after ``/`` is ignored)."""
    result: list[tuple[str, int]] = []
    for item in hosts.split("/", 1)[0].split(","):
        name, colon, port = item.strip().rpartition(":")
        if not colon or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise DiscoveryError(
                f"bad {what} hosts {hosts!r}: {item.strip()!r} is not host:port "
                "(e.g. 127.0.0.1:2181)"
            )
        result.append((name.strip("[]"), int(port)))
    return result


def refuse_fast(
    hosts: str,
    what: str,
    timeout: float,
    error: type[BackendUnavailable] = BackendUnavailable,
) -> None:
    """Raise ``error`` (a :class:`BackendUnavailable`) at once if every host refuses
    connections."""
    reasons: list[str] = []
    for host, port in parse_hosts(hosts, what):
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            reasons.append(f"{host}: unknown host ({exc.strerror})")
            continue
        for family, kind, proto, _, address in addresses:
            try:
                with socket.socket(family, kind, proto) as probe:
                    probe.settimeout(min(timeout, 2.0))
                    probe.connect(address)
            except ConnectionRefusedError:
                continue
            except OSError:
                return  # no answer, or some other trouble: let the client try
            return  # something listens there
        reasons.append(f"{host}:{port} refused the connection")
    raise error(
        f"cannot reach {what} at {hosts!r}: {'; '.join(reasons)}. "
        "Is the server running and the address right?"
    )
