from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from covey.core import ClusterError, RunnerAddress, ShardId, TestClock
from covey.core.runtime import shard_for


async def test_test_clock_wakes_sleepers_in_order() -> None:
    clock = TestClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(f"{name}@{clock.monotonic():.0f}")

    tasks = [asyncio.create_task(sleeper("b", 20)), asyncio.create_task(sleeper("a", 10))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    await clock.advance(15)
    assert woke == ["a@10"]
    await clock.advance(10)
    assert woke == ["a@10", "b@20"]
    assert clock.monotonic() == 25
    await asyncio.gather(*tasks)


def test_shard_for_is_stable_and_spread() -> None:
    assert shard_for("acct-1", 300) == shard_for("acct-1", 300)
    assert shard_for("acct-1", 300) == ShardId("default", shard_for("acct-1", 300).id)
    counts = Counter(shard_for(f"e{i}", 10).id for i in range(10_000))
    assert set(counts) == set(range(1, 11))
    assert min(counts.values()) > 800  # roughly uniform


def test_parsing() -> None:
    assert ShardId.parse("jobs:12") == ShardId("jobs", 12)
    assert str(ShardId("jobs", 12)) == "jobs:12"
    assert RunnerAddress.parse("10.0.0.1:7000") == RunnerAddress("10.0.0.1", 7000)
    for bad in ("nope", "x:0", ":3"):
        with pytest.raises(ClusterError):
            ShardId.parse(bad)
    with pytest.raises(ClusterError):
        RunnerAddress.parse("host:99999")


async def test_call_later_runs_on_the_test_clock_only_when_time_passes() -> None:
    from covey.core import TestClock

    clock = TestClock()
    fired: list[str] = []
    clock.call_later(5, lambda: fired.append("five"))
    cancelled = clock.call_later(3, lambda: fired.append("three"))
    cancelled.cancel()
    await clock.advance(4)
    assert fired == []
    await clock.advance(1)
    assert fired == ["five"]


async def test_call_later_runs_on_the_system_clock() -> None:
    import asyncio

    from covey.core import SystemClock

    done = asyncio.Event()
    SystemClock().call_later(0.01, done.set)
    await asyncio.wait_for(done.wait(), timeout=5)
