"""RunnerStorage: membership, machine ids, shard ownership and epochs."""

from __future__ import annotations

import asyncio

from covey.core import RunnerAddress, ShardId, TestClock
from covey.storage import Storage

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, S3
from .conftest import MakeStorage


async def test_register_gives_distinct_stable_machine_ids(storage: Storage) -> None:
    a = await storage.runners.register(RUNNER_A)
    b = await storage.runners.register(RUNNER_B, groups=["default", "jobs"], weight=2)
    assert 0 <= a <= 1023 and 0 <= b <= 1023
    assert a != b
    assert await storage.runners.register(RUNNER_A) == a  # re-register keeps the id
    runners = await storage.runners.live_runners(max_age=60)
    assert [r.address for r in runners] == [RUNNER_A, RUNNER_B]
    assert runners[1].groups == ("default", "jobs") and runners[1].weight == 2


async def test_machine_ids_unique_for_many_runners(storage: Storage) -> None:
    ids = [await storage.runners.register(RunnerAddress("h", 8000 + i)) for i in range(40)]
    assert len(set(ids)) == 40


async def test_heartbeat_and_staleness(storage: Storage, clock: TestClock) -> None:
    await storage.runners.register(RUNNER_A)
    await storage.runners.register(RUNNER_B)
    await clock.advance(20)
    assert await storage.runners.heartbeat(RUNNER_A) is True
    live = await storage.runners.live_runners(max_age=10)
    assert [r.address for r in live] == [RUNNER_A]
    assert live[0].last_heartbeat == clock.now()
    assert await storage.runners.heartbeat(RunnerAddress("nobody", 1)) is False


async def test_unregister(storage: Storage) -> None:
    await storage.runners.register(RUNNER_A)
    await storage.runners.unregister(RUNNER_A)
    assert await storage.runners.live_runners(max_age=60) == []
    assert await storage.runners.heartbeat(RUNNER_A) is False
    await storage.runners.unregister(RUNNER_A)  # idempotent


async def test_acquire_is_exclusive_and_epochs_grow(make_storage: MakeStorage) -> None:
    first = await make_storage()
    second = await make_storage()
    held_a = await first.runners.acquire(RUNNER_A, [S1, S2])
    assert set(held_a) == {S1, S2}
    assert all(e >= 1 for e in held_a.values())
    assert set(await second.runners.acquire(RUNNER_B, [S1, S2, S3])) == {S3}
    # the holder asking again keeps its epochs
    assert await first.runners.acquire(RUNNER_A, [S1, S2]) == held_a
    await first.runners.release(RUNNER_A, [S1])
    held_b = await second.runners.acquire(RUNNER_B, [S1])
    assert held_b[S1] > held_a[S1]
    assert await first.runners.refresh(RUNNER_A, [S1, S2]) == {S2}
    assert await second.runners.refresh(RUNNER_B, [S1, S2, S3]) == {S1, S3}


async def test_refresh_of_shards_never_held_is_empty(storage: Storage) -> None:
    assert await storage.runners.refresh(RUNNER_A, [S1, S2]) == set()


async def test_release_all_frees_everything(make_storage: MakeStorage) -> None:
    first = await make_storage()
    second = await make_storage()
    await first.runners.acquire(RUNNER_A, [S1, S2, S3])
    await first.runners.release_all(RUNNER_A)
    assert set(await second.runners.acquire(RUNNER_B, [S1, S2, S3])) == {S1, S2, S3}


async def test_a_dead_holders_shards_become_acquirable(
    make_storage: MakeStorage, backend: str, clock: TestClock
) -> None:
    first = await make_storage()
    second = await make_storage()
    held = await first.runners.acquire(RUNNER_A, [S1])
    if backend == "postgres":
        # advisory locks end with the holder's session, not with time
        await first.runners.release_all(RUNNER_A)
    else:
        await clock.advance(first_lease_seconds() + 1)
    taken = await second.runners.acquire(RUNNER_B, [S1])
    assert taken[S1] > held[S1]
    assert await first.runners.refresh(RUNNER_A, [S1]) == set()


def first_lease_seconds() -> float:
    from covey.core import StorageOptions

    return StorageOptions().shard_lease


async def test_refresh_extends_the_lease(
    storage: Storage, backend: str, clock: TestClock
) -> None:
    await storage.runners.acquire(RUNNER_A, [S1])
    lease = first_lease_seconds()
    for _ in range(4):
        await clock.advance(lease * 0.6)
        assert await storage.runners.refresh(RUNNER_A, [S1]) == {S1}


async def test_two_runners_racing_for_one_shard(make_storage: MakeStorage) -> None:
    stores = [await make_storage() for _ in range(2)]
    for _ in range(10):
        shard = ShardId("race", 7)
        results = await asyncio.gather(
            stores[0].runners.acquire(RUNNER_A, [shard]),
            stores[1].runners.acquire(RUNNER_B, [shard]),
        )
        assert sum(1 for r in results if shard in r) == 1
        await stores[0].runners.release_all(RUNNER_A)
        await stores[1].runners.release_all(RUNNER_B)


async def test_many_shards_race_split_without_overlap(make_storage: MakeStorage) -> None:
    stores = [await make_storage() for _ in range(3)]
    runners = [RunnerAddress("r", 9000 + i) for i in range(3)]
    shards = [ShardId("default", i) for i in range(1, 17)]
    results = await asyncio.gather(
        *(s.runners.acquire(r, shards) for s, r in zip(stores, runners, strict=True))
    )
    owned = [set(r) for r in results]
    assert set().union(*owned) == set(shards)
    assert sum(len(o) for o in owned) == len(shards)


async def test_expire_removes_a_dead_runner_and_frees_its_leases(
    make_storage: MakeStorage, backend: str
) -> None:
    first, second = await make_storage(), await make_storage()
    await first.runners.register(RUNNER_A)
    held = await first.runners.acquire(RUNNER_A, [S1])
    await second.runners.expire(RUNNER_A)
    assert await second.runners.live_runners(max_age=60) == []
    if backend == "postgres":
        # an advisory lock ends only with its session: still held by the "dead" runner
        assert await second.runners.acquire(RUNNER_B, [S1]) == {}
        await first.runners.release_all(RUNNER_A)
    taken = await second.runners.acquire(RUNNER_B, [S1])
    assert taken[S1] > held[S1]
