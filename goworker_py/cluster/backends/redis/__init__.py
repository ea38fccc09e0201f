"""The Redis backend (redis-py): :class:`RedisBackend`; the key layout, the fencing tokens and
what the backend guarantees are described in :mod:`goworker_py.cluster.backends.redis.backend`."""

from goworker_py.cluster.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
