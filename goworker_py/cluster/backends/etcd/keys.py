"""etcd keys as the gateway's JSON speaks them: transaction parts, key-values, parsed values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from goworker_py.cluster.backend import ControlState, RunRecord
from goworker_py.cluster.backends.etcd.transport import decode, encode, prefix_end
from goworker_py.errors import DiscoveryError


def service_prefix(namespace: str, service: str) -> str:
    """``/<namespace>/<service>/``: the prefix of every key of a service."""
    if not service or "/" in service:
        raise DiscoveryError(f"service name {service!r} must be non-empty, without '/'")
    parts = [part for part in namespace.strip("/").split("/") if part]
    return "/" + "/".join([*parts, service]) + "/"


def compare(key: str, target: str, value: int, result: str = "EQUAL") -> dict[str, Any]:
    """A transaction condition on ``key``'s ``CREATE`` or ``MOD`` revision."""
    fields = {"CREATE": "create_revision", "MOD": "mod_revision"}
    return {"key": encode(key), "result": result, "target": target, fields[target]: str(value)}


def put(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    """A transaction's write of ``key`` (attached to ``lease`` unless 0)."""
    request: dict[str, Any] = {"key": encode(key), "value": encode(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def get(key: str) -> dict[str, Any]:
    """A transaction's read of ``key``."""
    return {"request_range": {"key": encode(key)}}


@dataclass
class KV:
    """A key as a range returned it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def parse(cls, item: dict[str, Any]) -> KV:
        """From the gateway's JSON (base64 bytes, int64 as strings, zeros omitted)."""
        return cls(
            key=decode(item.get("key", "")).decode(errors="replace"),
            value=decode(item.get("value", "")),
            create_revision=int(item.get("create_revision", 0)),
            mod_revision=int(item.get("mod_revision", 0)),
            lease=int(item.get("lease", 0)),
        )


def kvs(reply: dict[str, Any]) -> list[KV]:
    """The keys a range reply holds."""
    return [KV.parse(item) for item in reply.get("kvs", [])]


def failure_kv(reply: dict[str, Any]) -> KV | None:
    """The key a failed transaction's ``request_range`` read (None: absent)."""
    for response in reply.get("responses", []):
        found = kvs(response.get("response_range", {}))
        if found:
            return found[0]
    return None


def revision(reply: dict[str, Any]) -> int:
    """The store revision a reply was made at (a write's own revision)."""
    return int(reply.get("header", {}).get("revision", 0))


def prefix_count(prefix: str) -> dict[str, Any]:
    """A range request counting the keys under ``prefix`` (its header: the current revision)."""
    return {"key": encode(prefix), "range_end": prefix_end(prefix), "count_only": True}


def owner(kv: KV) -> str:
    """A claim key's owner ("" if unreadable)."""
    try:
        data = json.loads(kv.value)
    except ValueError:
        return ""
    return str(data.get("owner", "")) if isinstance(data, dict) else ""


def nonce(kv: KV) -> str:
    """The writer's nonce in the control key ("" if none)."""
    try:
        data = json.loads(kv.value)
    except ValueError:
        return ""
    return str(data.get("nonce", "")) if isinstance(data, dict) else ""


def control(kv: KV | None) -> ControlState:
    """The control state a key holds (nothing requested if absent or unreadable)."""
    if kv is None:
        return ControlState()
    try:
        return ControlState.from_dict(json.loads(kv.value))
    except ValueError:
        return ControlState()


def parse_record(shard: int, raw: bytes) -> RunRecord | None:
    """A run record from its JSON (None if unreadable)."""
    try:
        return RunRecord.parse(shard, raw)
    except (ValueError, TypeError, KeyError):
        return None


def record(shard: int, kv: KV | None) -> RunRecord | None:
    """The run record a key holds (None if absent or unreadable)."""
    return None if kv is None else parse_record(shard, kv.value)
