"""Unit tests of the sharding strategies: even shares, stickiness, fixed points, fuzz."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from goworker_py.cluster.sharding import (
    AverageStrategy,
    ShardingStrategy,
    StickyStrategy,
    moved_shards,
)

pytestmark = pytest.mark.timeout(60)

STRATEGIES: list[ShardingStrategy] = [StickyStrategy(), AverageStrategy()]


def claims_of(assignment: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """The claim map an assignment leads to once every member holds its shards."""
    return {shard: member for member, shards in assignment.items() for shard in shards}


def loads(assignment: Mapping[str, Sequence[int]]) -> dict[str, int]:
    return {member: len(shards) for member, shards in assignment.items()}


def members_of(count: int, start: int = 0) -> list[str]:
    return [f"m{i}" for i in range(start, start + count)]


def check_valid(
    assignment: Mapping[str, Sequence[int]], members: Sequence[str], total: int
) -> None:
    """Every shard owned by exactly one member; loads differ by at most one; N > T: standbys."""
    assert sorted(assignment) == sorted(members)
    owned = [shard for shards in assignment.values() for shard in shards]
    assert sorted(owned) == list(range(total)), f"not every shard exactly once: {assignment}"
    for shards in assignment.values():
        assert list(shards) == sorted(shards)
    counts = list(loads(assignment).values())
    assert max(counts) - min(counts) <= 1, f"uneven loads {assignment}"
    if len(members) > total:
        assert sorted(counts) == [0] * (len(members) - total) + [1] * total


def settle(
    strategy: ShardingStrategy, members: Sequence[str], total: int, claims: Mapping[int, str]
) -> dict[str, list[int]]:
    """Assign, and check the result is valid and a fixed point."""
    result = strategy.assign(members, total, claims)
    check_valid(result, members, total)
    again = strategy.assign(members, total, claims_of(result))
    assert again == result, f"not a fixed point: {result} then {again}"
    return result


def fewest_moves(members: Sequence[str], total: int, claims: Mapping[int, str]) -> int:
    """The least number of claimed shards that must change owner to reach even shares."""
    held = {m: sum(1 for s, o in claims.items() if o == m and 0 <= s < total) for m in members}
    base, extra = divmod(total, len(members))
    # Keeping the most means giving the larger quotas to the members holding the most.
    ranked = sorted(held.values(), reverse=True)
    kept = sum(min(h, base + (1 if i < extra else 0)) for i, h in enumerate(ranked))
    return sum(held.values()) - kept


# -- both strategies ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 9])
@pytest.mark.parametrize("total", [1, 2, 5, 6, 7, 16])
def test_every_shard_assigned_evenly_from_nothing(
    strategy: ShardingStrategy, count: int, total: int
) -> None:
    settle(strategy, members_of(count), total, {})


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_no_members_means_no_assignment(strategy: ShardingStrategy) -> None:
    assert strategy.assign([], 5, {0: "gone"}) == {}


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_more_members_than_shards_leaves_standbys(strategy: ShardingStrategy) -> None:
    members = members_of(5)
    result = settle(strategy, members, 2, {})
    standbys = [m for m, shards in result.items() if not shards]
    assert len(standbys) == 3
    # An owner leaves: a standby takes its shard, the other owner keeps its own.
    owner = next(m for m, shards in result.items() if shards)
    other = next(m for m, shards in result.items() if shards and m != owner)
    remaining = [m for m in members if m != owner]
    after = settle(strategy, remaining, 2, claims_of({m: result[m] for m in remaining}))
    if strategy.name == "sticky":
        assert after[other] == result[other]
        assert after[standbys[0]] == result[owner], "the first-ranked standby takes over"


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.name)
def test_claims_of_unknown_members_and_shards_out_of_range_are_ignored(
    strategy: ShardingStrategy,
) -> None:
    members = members_of(2)
    result = settle(strategy, members, 4, {0: "gone", 1: "m1", 9: "m0", -1: "m0"})
    assert sorted(s for shards in result.values() for s in shards) == [0, 1, 2, 3]


def test_average_deals_blocks_in_rank_order() -> None:
    result = AverageStrategy().assign(["a", "b", "c"], 7, {0: "c", 6: "a"})
    assert result == {"a": [0, 1, 2], "b": [3, 4], "c": [5, 6]}


# -- sticky ---------------------------------------------------------------------------------------


def test_sticky_keeps_an_even_assignment_untouched() -> None:
    claims = {0: "b", 1: "a", 2: "c", 3: "b", 4: "a"}
    result = StickyStrategy().assign(["a", "b", "c"], 5, claims)
    assert claims_of(result) == claims
    assert moved_shards(claims, result) == 0


def check_join(members: Sequence[str], total: int, before: dict[str, list[int]], new: str) -> None:
    """A join takes shards only from the most loaded, and gives them all to the joiner."""
    joined = [*members, new]
    claims = claims_of(before)
    after = settle(StickyStrategy(), joined, total, claims)
    for member in members:
        assert set(after[member]) <= set(before[member]), "an old member gained a shard"
    donors = [m for m in members if after[m] != before[m]]
    keepers = [m for m in members if after[m] == before[m]]
    if donors and keepers:
        least_donor = min(len(before[m]) for m in donors)
        assert least_donor >= max(len(before[m]) for m in keepers), (
            f"took from a less loaded member: {before} -> {after}"
        )
    moved = moved_shards(claims, after)
    assert moved == len(after[new]) == fewest_moves(joined, total, claims)
    assert len(after[new]) in (total // len(joined), -(-total // len(joined)))


def check_leave(
    members: Sequence[str], total: int, before: dict[str, list[int]], gone: str
) -> None:
    """A leave moves only the leaver's shards, to the least loaded."""
    remaining = [m for m in members if m != gone]
    claims = {s: m for s, m in claims_of(before).items() if m != gone}
    after = settle(StickyStrategy(), remaining, total, claims)
    for member in remaining:
        assert set(before[member]) <= set(after[member]), "a staying member lost a shard"
    moved_in = {s for m in remaining for s in set(after[m]) - set(before[m])}
    assert moved_in == set(before[gone])
    receivers = [m for m in remaining if after[m] != before[m]]
    others = [m for m in remaining if after[m] == before[m]]
    if receivers and others:
        assert max(len(before[m]) for m in receivers) <= min(len(before[m]) for m in others), (
            f"gave to a more loaded member: {before} -> {after}"
        )
    assert moved_shards(claims_of(before), after) == len(before[gone])


@pytest.mark.parametrize("total", [1, 3, 6, 7, 13, 16])
def test_sticky_join_and_leave_one_to_six_and_back(total: int) -> None:
    strategy = StickyStrategy()
    members: list[str] = []
    state: dict[str, list[int]] = {}
    for i in range(6):
        new = f"m{i}"
        if members:
            check_join(members, total, state, new)
        members.append(new)
        state = settle(strategy, members, total, claims_of(state))
    # Leave in a mixed order: the oldest, the newest, then the middle ones.
    for gone in ["m0", "m5", "m2", "m4", "m1"]:
        check_leave(members, total, state, gone)
        members.remove(gone)
        state = settle(strategy, members, total, claims_of(state))
    assert state == {"m3": list(range(total))}


def test_sticky_leave_moves_exactly_the_leavers_shards() -> None:
    before = {"a": [0, 1], "b": [2, 3], "c": [4], "d": [5], "e": [6]}
    after = StickyStrategy().assign(["a", "c", "d", "e"], 7, claims_of({**before, "b": []}))
    assert after == {"a": [0, 1], "c": [2, 4], "d": [3, 5], "e": [6]}


def test_sticky_join_takes_from_the_most_loaded() -> None:
    before = {"a": [0, 1], "b": [2, 3, 4], "c": [5, 6]}
    after = StickyStrategy().assign(["a", "b", "c", "d"], 7, claims_of(before))
    assert after == {"a": [0, 1], "b": [2, 3], "c": [5, 6], "d": [4]}
    assert moved_shards(claims_of(before), after) == 1


def test_sticky_uneven_claims_move_the_fewest_shards() -> None:
    claims = {s: "a" for s in range(6)}  # a holds everything, b and c just joined
    result = StickyStrategy().assign(["a", "b", "c"], 6, claims)
    assert result["a"] == [0, 1]
    assert sorted(result["b"] + result["c"]) == [2, 3, 4, 5]
    assert moved_shards(claims, result) == 4


@pytest.mark.parametrize("seed", range(20))
def test_sticky_random_fuzz(seed: int) -> None:
    """Random members, totals and (possibly uneven, partial, stale) claims; then churn."""
    rng = random.Random(seed)
    strategy = StickyStrategy()
    for _ in range(50):
        count = rng.randint(1, 9)
        total = rng.randint(1, 20)
        members = members_of(count, start=rng.randint(0, 3))
        rng.shuffle(members)  # rank order need not be name order
        owners = [*members, "dead", None]
        claims = {s: o for s in range(total) if (o := rng.choice(owners)) is not None}
        result = settle(strategy, members, total, claims)
        live = {s: o for s, o in claims.items() if o in members}
        assert moved_shards(live, result) == fewest_moves(members, total, claims)
        for member in members:
            quota = len(result[member])
            held = [s for s, o in live.items() if o == member]
            kept = set(held) & set(result[member])
            assert len(kept) == min(len(held), quota), "dropped a shard it could keep"
        # Churn from the settled state: a join or a leave behaves as specified.
        if rng.random() < 0.5 or count == 1:
            check_join(members, total, result, f"new{rng.randint(0, 99)}")
        else:
            check_leave(members, total, result, rng.choice(members))


@pytest.mark.parametrize("seed", range(5))
def test_average_random_fuzz(seed: int) -> None:
    rng = random.Random(seed)
    strategy = AverageStrategy()
    for _ in range(50):
        members = members_of(rng.randint(1, 9))
        total = rng.randint(1, 20)
        claims = {s: rng.choice(members) for s in range(total) if rng.random() < 0.5}
        result = settle(strategy, members, total, claims)
        assert result == strategy.assign(members, total, {}), "average ignores claims"


def test_moved_shards_counts_owner_changes_only() -> None:
    before = {0: "a", 1: "a", 2: "b"}
    assert moved_shards(before, {"a": [0, 1], "b": [2]}) == 0
    assert moved_shards(before, {"a": [0], "b": [1, 2]}) == 1
    assert moved_shards(before, {"c": [0, 1, 2]}) == 3
    assert moved_shards({}, {"a": [0, 1, 2]}) == 0
