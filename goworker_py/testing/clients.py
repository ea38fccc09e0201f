"""kazoo clients for tests that watch a cluster from outside and must survive server restarts."""

from __future__ import annotations

from kazoo.client import KazooClient

from goworker_py.cluster.backends.zookeeper.clock import ReplyClock

#: Reconnect quickly after a server restart (kazoo's default backs off to 60 s between tries).
FAST_RECONNECT = {"max_tries": -1, "delay": 0.05, "backoff": 2, "max_delay": 0.5}


def observer_client(
    hosts: str, *, session_timeout: float = 10.0, give_up_after: float = 1.0
) -> KazooClient:
    """A kazoo client (not started) that reconnects soon after a restarted server serves again.

    As goworker-py's ZooKeeper backend does, it gives up a connect attempt not answered within
    ``give_up_after`` seconds: a restarting ZooKeeper accepts connections before it serves them
    and leaves some unanswered, and kazoo would hold such an attempt (and every read behind it)
    for the whole ``session_timeout``.
    """
    client = KazooClient(
        hosts=hosts, timeout=session_timeout, connection_retry=dict(FAST_RECONNECT)
    )
    ReplyClock(client, session_timeout, give_up_after=give_up_after)
    return client
