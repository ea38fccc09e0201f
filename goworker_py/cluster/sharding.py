"""Shard allocation: which live instance owns which shard.

A :class:`ShardingStrategy` maps the ordered members of a service (by registration sequence,
rank 0 first) and the current claims onto an assignment. Every strategy gives each instance an
even share — loads differ by at most one, and with more instances than shards the extra ones
own nothing (standbys). Every instance computes the same assignment from the same inputs, so
no coordinator is needed: each one claims what is assigned to it and releases what is not.

- :class:`StickyStrategy` (the default) moves as few shards as possible: when an instance
  leaves only its shards move, to the least-loaded instances; when one joins it takes shards
  only from the most-loaded ones.
- :class:`AverageStrategy` deals shards out in rank order like ElasticJob's average
  allocation; simple and predictable, but one join can move most shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class ShardingStrategy(Protocol):
    """Computes the owner of every shard."""

    name: str

    def assign(
        self, members: Sequence[str], total: int, claims: Mapping[int, str]
    ) -> dict[str, list[int]]:
        """Return ``{member id: sorted shard indexes}`` for every member (possibly empty lists).

        ``members`` are live instance ids in rank order; ``claims`` maps shards to the member
        holding them now (only live members appear). Shards ``0..total-1`` are all assigned
        when there is at least one member.
        """


def _quotas(order: Sequence[str], total: int) -> dict[str, int]:
    """Even shares: the first ``total % n`` members of ``order`` get one more."""
    count = len(order)
    base, extra = divmod(total, count)
    return {member: base + (1 if position < extra else 0) for position, member in enumerate(order)}


class StickyStrategy:
    """Even shares that move as few shards as possible (the default)."""

    name = "sticky"

    def assign(
        self, members: Sequence[str], total: int, claims: Mapping[int, str]
    ) -> dict[str, list[int]]:
        if not members:
            return {}
        rank = {member: position for position, member in enumerate(members)}
        owned: dict[str, list[int]] = {member: [] for member in members}
        for shard, owner in sorted(claims.items()):
            if owner in owned and 0 <= shard < total:
                owned[owner].append(shard)
        # Members already holding more keep the larger quotas, so a join only takes from the
        # most-loaded and a settled assignment is a fixed point. Loads are capped at the larger
        # quota first: an old member that already gave back down to it must not lose the larger
        # quota to a slower one (and then take a shard back from someone else).
        cap = total // len(members) + 1
        by_load = sorted(members, key=lambda m: (-min(len(owned[m]), cap), rank[m]))
        quota = _quotas(by_load, total)
        pool: list[int] = [s for s in range(total) if claims.get(s) not in owned]
        for member in members:
            excess = len(owned[member]) - quota[member]
            if excess > 0:
                owned[member].sort()
                pool.extend(owned[member][-excess:])
                del owned[member][-excess:]
        for shard in sorted(pool):
            taker = min(
                (m for m in members if len(owned[m]) < quota[m]),
                key=lambda m: (len(owned[m]), rank[m]),
            )
            owned[taker].append(shard)
        return {member: sorted(shards) for member, shards in owned.items()}


class AverageStrategy:
    """ElasticJob's average allocation: consecutive blocks in rank order, remainder to the first."""

    name = "average"

    def assign(
        self, members: Sequence[str], total: int, claims: Mapping[int, str]
    ) -> dict[str, list[int]]:
        if not members:
            return {}
        quota = _quotas(members, total)
        result: dict[str, list[int]] = {}
        start = 0
        for member in members:
            result[member] = list(range(start, start + quota[member]))
            start += quota[member]
        return result


STRATEGIES: dict[str, type[StickyStrategy] | type[AverageStrategy]] = {
    StickyStrategy.name: StickyStrategy,
    AverageStrategy.name: AverageStrategy,
}


def moved_shards(before: Mapping[int, str], after: Mapping[str, Sequence[int]]) -> int:
    """How many shards change owner between a claim map and an assignment."""
    owner_after = {shard: member for member, shards in after.items() for shard in shards}
    return sum(1 for shard, owner in before.items() if owner_after.get(shard) != owner)
