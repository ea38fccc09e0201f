"""The coordination seam's neutral pieces: discovery URLs, run records, control state."""

from __future__ import annotations

import pytest

from goworker_py import DiscoveryConfig, DiscoveryError
from goworker_py.cluster.backend import ControlState, RunRecord, RunState


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "zookeeper://h1:2181,h2:2181/chroot/x",
            {"protocol": "zookeeper", "hosts": "h1:2181,h2:2181/chroot/x", "use_ssl": False},
        ),
        ("zk://127.0.0.1:2181", {"protocol": "zookeeper", "hosts": "127.0.0.1:2181"}),
        (
            "zookeeper://alice:s3cret@h:2181",
            {"hosts": "h:2181", "auth_user": "alice", "auth_password": "s3cret"},
        ),
        ("etcd://h1:2379,h2:2379", {"protocol": "etcdv3", "hosts": "h1:2379,h2:2379"}),
        ("etcds://h:2379", {"protocol": "etcdv3", "use_ssl": True}),
        (
            "redis://user:p%40ss@h:6379/3",
            {
                "protocol": "redis",
                "hosts": "h:6379",
                "auth_user": "user",
                "auth_password": "p@ss",
                "database": 3,
            },
        ),
        ("redis://:pw@h:6379", {"auth_user": None, "auth_password": "pw", "database": 0}),
        ("rediss://h:6380", {"protocol": "redis", "use_ssl": True}),
        ("memory://demo", {"protocol": "memory", "hosts": "demo"}),
    ],
)
def test_discovery_urls(url: str, expected: dict[str, object]) -> None:
    config = DiscoveryConfig.from_url(url)
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_url_settings_set_the_other_fields() -> None:
    config = DiscoveryConfig.from_url("redis://h:6379", session_timeout=2.0, namespace="ns")
    assert (config.session_timeout, config.namespace, config.hosts) == (2.0, "ns", "h:6379")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h:21", "unknown scheme (known: zookeeper://"),
        ("h1:2181", "unknown scheme"),
        ("redis://", "names no host"),
        ("redis://h", "'h' is not host:port"),
        ("etcd://h:99999", "'h:99999' is not host:port"),
        ("redis://h:6379/zero", "the Redis database must be a number"),
        ("etcd://h:2379/prefix", "a etcdv3 URL takes no path"),
    ],
)
def test_bad_discovery_urls_name_the_problem(url: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=message.replace("(", r"\(")):
        DiscoveryConfig.from_url(url)


def test_a_run_record_round_trips_through_its_json() -> None:
    record = RunRecord(
        shard=3,
        owner="abc",
        lease="0x17",
        run_id="r1",
        fire_time=1_800_000_000.5,
        token=42,
        state=RunState.INTERRUPTED,
        completed=(1.0, 2.0),
    )
    assert RunRecord.parse(3, record.to_json()) == record
    assert RunRecord.parse(3, b'{"state":"done"}').state is RunState.DONE


@pytest.mark.parametrize(
    "raw", [b"[]", b'{"completed": 3}', b'{"state": "exploded"}', b"not json", b'{"token": "x"}']
)
def test_a_malformed_run_record_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        RunRecord.parse(0, raw)


def test_control_state_tolerates_malformed_data() -> None:
    assert ControlState.from_dict(None) == ControlState()
    assert ControlState.from_dict({"paused": "yes", "trigger": True, "stop_run": 2}) == (
        ControlState(paused=False, trigger=0, stop_run=2)
    )
    state = ControlState(paused=True, trigger=3, stop_run=1)
    assert ControlState.from_dict(state.to_dict()) == state
