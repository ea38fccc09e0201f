"""Coordination backends behind :class:`~goworker_py.cluster.backend.CoordinationBackend`.

One module (or a few named after it) per backend; each is imported lazily by the discovery
registry (:mod:`goworker_py.cluster.discovery`), so a backend's client library is needed only
when that backend is used (``pip install 'goworker-py[redis]'``, ...).
"""
