"""Shard parameters: the seed's ``"0=Beijing,1=Shanghai,2=Guangzhou"`` format."""

from __future__ import annotations

from goworker_py.errors import InvalidParamsError


def resolve_cluster_parameter(params: str) -> dict[int, str]:
    """Parse ``params`` into ``{shard_index: param}``.

    Items are ``index=value`` separated by commas; the index is an integer >= 0 and the value
    is everything after the first ``=`` (spaces around items are ignored). An empty string
    gives ``{}``. A malformed item raises :class:`InvalidParamsError` naming it (the seed
    silently returned nil).
    """
    if not isinstance(params, str):
        raise InvalidParamsError(f"params must be a string like '0=a,1=b', got {params!r}")
    result: dict[int, str] = {}
    if not params.strip():
        return result
    for position, raw in enumerate(params.split(","), start=1):
        item = raw.strip()
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise InvalidParamsError(
                f"params item {position} {item!r} has no '=': write it as <shard index>=<value>, "
                "e.g. '0=Beijing,1=Shanghai'"
            )
        # isdigit() alone accepts superscripts and other scripts' digits: ASCII only.
        if not (key.isascii() and key.isdigit()):
            raise InvalidParamsError(
                f"params item {position} {item!r}: the shard index {key!r} must be an integer >= 0"
            )
        index = int(key)
        if index in result:
            raise InvalidParamsError(
                f"params item {position} {item!r}: shard {index} appears twice"
            )
        result[index] = value.strip()
    return result


def check_params_fit(params_map: dict[int, str], total: int) -> None:
    """Raise :class:`InvalidParamsError` if a param names a shard ``>= total``."""
    outside = sorted(index for index in params_map if index >= total)
    if outside:
        raise InvalidParamsError(
            f"params name shard(s) {', '.join(map(str, outside))} but sharding_total_count is "
            f"{total} (shards 0..{total - 1})"
        )
