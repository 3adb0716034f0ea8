from __future__ import annotations

from collections import Counter

from covey.core import RunnerAddress, ShardId
from covey.sharding.runtime import assign, shards_of
from covey.storage import RunnerInfo


def runner(port: int, weight: int = 1, groups: tuple[str, ...] = ("default",)) -> RunnerInfo:
    return RunnerInfo(RunnerAddress("10.0.0.1", port), port, groups, weight, 0.0)


SHARDS = [ShardId("default", i) for i in range(1, 301)]


def test_every_shard_assigned_with_bounded_load() -> None:
    runners = [runner(p) for p in (1, 2, 3)]
    result = assign(SHARDS, runners)
    assert set(result) == set(SHARDS)
    assert set(Counter(result.values()).values()) == {100}


def test_deterministic_whatever_the_input_order() -> None:
    runners = [runner(p) for p in (1, 2, 3, 4)]
    assert assign(SHARDS, runners) == assign(list(reversed(SHARDS)), list(reversed(runners)))


def test_adding_a_runner_moves_about_its_share() -> None:
    before = assign(SHARDS, [runner(p) for p in (1, 2, 3)])
    after = assign(SHARDS, [runner(p) for p in (1, 2, 3, 4)])
    moved = sum(1 for s in SHARDS if before[s] != after[s])
    assert 75 <= moved <= 120  # ideal is 75 (the newcomer's share); bounded load adds a bit
    assert len(shards_of(after, RunnerAddress("10.0.0.1", 4))) == 75


def test_removing_a_runner_moves_only_its_shards_mostly() -> None:
    before = assign(SHARDS, [runner(p) for p in (1, 2, 3)])
    after = assign(SHARDS, [runner(p) for p in (1, 2)])
    kept = sum(1 for s in SHARDS if before[s] != RunnerAddress("10.0.0.1", 3)
               and before[s] == after[s])
    assert kept >= 150  # of the 200 shards not on the removed runner


def test_weights_and_groups() -> None:
    shards = [*SHARDS, *(ShardId("jobs", i) for i in range(1, 31))]
    runners = [runner(1, weight=2), runner(2), runner(3, groups=("jobs",))]
    result = assign(shards, runners)
    counts = Counter(result[s] for s in SHARDS)
    assert counts[RunnerAddress("10.0.0.1", 1)] == 200
    assert counts[RunnerAddress("10.0.0.1", 2)] == 100
    assert {result[ShardId("jobs", i)] for i in range(1, 31)} == {RunnerAddress("10.0.0.1", 3)}


def test_no_runner_no_assignment() -> None:
    assert assign(SHARDS, []) == {}
    assert assign(SHARDS, [runner(1, weight=0)]) == {}
