"""The etcd v3 coordination backend (``DiscoveryConfig(protocol="etcdv3")``, alias ``"etcd"``;
``pip install 'goworker-py[etcd]'``).

The client is `etcd3gw <https://opendev.org/openstack/etcd3gw>`_ — OpenStack's, what tooz uses —
over etcd's HTTP/JSON gateway (``/v3/`` from etcd 3.4 on): pure Python on ``requests``, no gRPC
build, maintained. The gRPC ``etcd3`` package has seen no release in years.

Key layout, under ``/<namespace>/<service>/``:

- ``members/<instance id>-<nonce>`` — one per registration, attached to the instance's lease;
  the value is the :class:`~goworker_py.instance.WorkerInstance` JSON. Rank = the key's create
  revision. Created by a transaction "only if absent": a retried request finds its own key (same
  lease) instead of making a twin; the nonce keeps a restarted instance with the same id from
  taking its predecessor's key for its own.
- ``claims/<shard>`` — attached to the lease of the shard's owner: ``{"owner", "lease"}``.
  Created only if absent (``create_revision == 0``); its create revision is the **fencing
  token**. etcd's revision only grows, and survives restarts (it is on disk): every new claim
  of a shard has a larger token than any before it.
- ``runs/<shard>`` — the shard's :class:`~goworker_py.cluster.backend.RunRecord` (no lease: it
  outlives its writer). ``begin_run`` and ``end_run`` write it in one transaction that compares
  the claim key's create revision with the token and this registration's member key's create
  revision with the rank: a stale owner can never write it.
- ``settings`` — the service's settings (JSON); ``create_only`` is a create-if-absent.
- ``control`` — the operator's :class:`~goworker_py.cluster.backend.ControlState` (JSON plus the
  writer's nonce), changed by compare-and-set on its mod revision.

The lease (TTL = the session timeout, rounded up to whole seconds) is kept alive at TTL/3 by a
thread of its own (:mod:`.lease`); one prefix watch on ``/<namespace>/<service>/`` turns changes
into :class:`~goworker_py.cluster.backend.Change` events, resumed from the last revision seen
across reconnects (:mod:`.watches`); requests, hosts, TLS, auth and error translation are in
:mod:`.transport`.

Guarantees: all of :class:`~goworker_py.cluster.backend.Guarantee` — tokens are revisions
(they grow, across restarts too), keys on a lease vanish with it, ``begin_run`` is one fenced
transaction, etcd's leader expires leases by its own clock, and what etcd acknowledged is on
a quorum's disks (Raft, fsynced WAL).
"""

from __future__ import annotations

from goworker_py.cluster.backends.etcd.backend import EtcdBackend
from goworker_py.cluster.backends.etcd.keys import service_prefix

__all__ = ["EtcdBackend", "service_prefix"]
