"""Shard parameters: the seed's ``"0=Beijing,1=Shanghai,2=Guangzhou"`` format."""

from __future__ import annotations

import pytest

from goworker_py import resolve_cluster_parameter as exported
from goworker_py.errors import ConfigError, InvalidParamsError
from goworker_py.params import check_params_fit, resolve_cluster_parameter

pytestmark = pytest.mark.timeout(30)


def test_the_seeds_example() -> None:
    assert resolve_cluster_parameter("0=Beijing,1=Shanghai,2=Guangzhou") == {
        0: "Beijing",
        1: "Shanghai",
        2: "Guangzhou",
    }
    assert exported is resolve_cluster_parameter


@pytest.mark.parametrize("params", ["", " ", "\t\n"])
def test_empty_gives_an_empty_map(params: str) -> None:
    assert resolve_cluster_parameter(params) == {}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (" 0 = a , 1 = b ", {0: "a", 1: "b"}),
        ("0=a=b", {0: "a=b"}),  # the value is everything after the first '='
        ("0=", {0: ""}),
        ("7=x", {7: "x"}),
        ("2=c,0=a", {2: "c", 0: "a"}),
        ("10=ten,01=one", {10: "ten", 1: "one"}),
        ("0=São Paulo", {0: "São Paulo"}),
    ],
)
def test_valid_forms(params: str, expected: dict[int, str]) -> None:
    assert resolve_cluster_parameter(params) == expected


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ("0=a,b", "item 2 'b' has no '='"),
        ("x=1", "item 1 'x=1'"),
        ("-1=a", "item 1 '-1=a'"),
        ("+1=a", "'+1'"),
        ("1.5=a", "'1.5'"),
        ("1_0=a", "'1_0'"),
        ("=a", "item 1 '=a'"),
        ("0=a,0=b", "shard 0 appears twice"),
        ("01=a,1=b", "shard 1 appears twice"),
        ("0=a,", "item 2 ''"),
        ("0=a,,1=b", "item 2 ''"),
        ("Beijing", "item 1 'Beijing' has no '='"),
        ("\u00b2=a", "item 1"),  # superscript two: isdigit() but not a number int() reads
        ("\u0661=a", "item 1"),  # Arabic-Indic one: not an ASCII shard index
    ],
)
def test_malformed_items_are_named(params: str, named: str) -> None:
    with pytest.raises(InvalidParamsError) as info:
        resolve_cluster_parameter(params)
    assert named in str(info.value)


def test_index_errors_explain_the_format() -> None:
    with pytest.raises(InvalidParamsError, match=r"must be an integer >= 0"):
        resolve_cluster_parameter("-1=a")
    with pytest.raises(InvalidParamsError, match=r"0=Beijing,1=Shanghai"):
        resolve_cluster_parameter("0=a,b")


@pytest.mark.parametrize("params", [None, 5, b"0=a", ["0=a"]])
def test_non_strings_are_rejected(params: object) -> None:
    with pytest.raises(InvalidParamsError, match="params must be a string"):
        resolve_cluster_parameter(params)  # type: ignore[arg-type]


def test_invalid_params_error_is_a_config_error() -> None:
    assert issubclass(InvalidParamsError, ConfigError)


def test_check_params_fit_accepts_params_inside_the_shard_range() -> None:
    check_params_fit({}, 1)
    check_params_fit({0: "a", 1: "b"}, 2)
    check_params_fit({1: "b"}, 5)  # shards without a param are fine


@pytest.mark.parametrize(
    ("params_map", "total", "named"),
    [
        ({0: "a", 2: "b"}, 2, "shard(s) 2 but sharding_total_count is 2 (shards 0..1)"),
        ({5: "x", 3: "y", 0: "z"}, 3, "shard(s) 3, 5 but sharding_total_count is 3"),
        ({1: "x"}, 1, "shards 0..0"),
    ],
)
def test_check_params_fit_names_shards_outside_the_range(
    params_map: dict[int, str], total: int, named: str
) -> None:
    with pytest.raises(InvalidParamsError) as info:
        check_params_fit(params_map, total)
    assert named in str(info.value)
