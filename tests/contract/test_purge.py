"""MessageStorage.purge: retention of processed messages, on every backend.

Purge deletes processed messages completed before a cut-off, in batches of at
most ``limit`` rows, and never an unprocessed one (old, leased or delayed). Error
replies of the entity types in ``keep_errors_of`` (dead-lettered jobs) stay until
an operator deletes them.
"""

from __future__ import annotations

import math

import pytest

from covey.core import ClusterError, Reason, ShardId, TestClock
from covey.storage import Duplicate, Fence, Message, Reply, Saved, Storage

from ._helpers import RUNNER_A, S1, S2, msg

DEAD_LETTERS = "covey.Job"


async def _own(storage: Storage, *shards: ShardId) -> dict[ShardId, Fence]:
    held = await storage.runners.acquire(RUNNER_A, shards)
    return {s: Fence(s, e) for s, e in held.items()}


async def _complete(storage: Storage, fences: dict[ShardId, Fence], message: Message,
                    *, error: bool = False) -> None:
    await storage.messages.save_reply(Reply(message.id, b"r", error),
                                      fences[message.address.shard])


async def _left(storage: Storage, messages: list[Message]) -> set[int]:
    return set(await storage.messages.inspect([m.id for m in messages]))


async def test_purge_deletes_exactly_the_processed_rows_older_than_before(
    storage: Storage, clock: TestClock
) -> None:
    fences = await _own(storage, S1, S2)
    old_done = [msg(f"o{n}", shard=S1 if n % 2 else S2) for n in range(4)]
    old_failed = msg("f1")  # an entity call that failed: its caller saw the error
    old_pending = msg("p1")  # stored long ago, never processed
    old_leased = msg("p2", shard=S2)  # being worked on right now
    old_retrying = msg("p3")  # failed once, waiting for its retry
    old_dead = msg("j1", entity_type=DEAD_LETTERS)  # a dead-lettered job
    old_delayed = msg("p4", deliver_at=clock.now() + 10_000)
    everything = [*old_done, old_failed, old_pending, old_leased, old_retrying, old_dead,
                  old_delayed]
    assert all(isinstance(r, Saved) for r in await storage.messages.save_requests(everything))
    for m in old_done:
        await _complete(storage, fences, m)
    await _complete(storage, fences, old_failed, error=True)
    await _complete(storage, fences, old_dead, error=True)
    await storage.messages.reschedule(old_retrying.id, deliver_at=clock.now() + 5,
                                      error="boom", fence=fences[S1])
    await clock.advance(100)
    leased = await storage.messages.unprocessed([S2], limit=10)
    assert [m.id for m in leased] == [old_leased.id]
    fresh_done = msg("n1")
    await storage.messages.save_request(fresh_done)
    await clock.advance(1)
    await _complete(storage, fences, fresh_done)
    everything.append(fresh_done)

    purged = await storage.messages.purge(clock.now() - 1, keep_errors_of=[DEAD_LETTERS])

    assert purged == len(old_done) + 1
    assert await _left(storage, everything) == {
        old_pending.id, old_leased.id, old_retrying.id, old_dead.id, old_delayed.id,
        fresh_done.id,
    }
    # what is left still works: the leased message can be completed, the rest read
    await _complete(storage, fences, old_leased)
    await clock.advance(100)
    due = {m.id for m in await storage.messages.unprocessed([S1, S2], limit=10)}
    assert due == {old_pending.id, old_retrying.id}


async def test_the_cut_off_is_exclusive(storage: Storage, clock: TestClock) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    await _complete(storage, fences, m)
    assert await storage.messages.purge(clock.now()) == 0
    assert await _left(storage, [m]) == {m.id}
    await clock.advance(0.001)
    assert await storage.messages.purge(clock.now()) == 1
    assert await _left(storage, [m]) == set()


async def test_without_kept_types_error_replies_are_purged_too(
    storage: Storage, clock: TestClock
) -> None:
    fences = await _own(storage, S1)
    dead = msg(entity_type=DEAD_LETTERS)
    await storage.messages.save_request(dead)
    await _complete(storage, fences, dead, error=True)
    await clock.advance(10)
    assert await storage.messages.purge(clock.now(), keep_errors_of=["Other"]) == 1
    assert await _left(storage, [dead]) == set()


async def test_a_successful_reply_of_a_kept_type_is_purged(
    storage: Storage, clock: TestClock
) -> None:
    fences = await _own(storage, S1)
    ok, dead = msg("ok", entity_type=DEAD_LETTERS), msg("dead", entity_type=DEAD_LETTERS)
    await storage.messages.save_requests([ok, dead])
    await _complete(storage, fences, ok)
    await _complete(storage, fences, dead, error=True)
    await clock.advance(10)
    assert await storage.messages.purge(clock.now(), keep_errors_of=[DEAD_LETTERS]) == 1
    assert await _left(storage, [ok, dead]) == {dead.id}


async def test_purge_deletes_at_most_limit_rows_per_call(
    storage: Storage, clock: TestClock
) -> None:
    fences = await _own(storage, S1)
    done = [msg(f"e{n}") for n in range(7)]
    errors = [msg(f"x{n}") for n in range(2)]
    pending = msg("pending")
    await storage.messages.save_requests([*done, *errors, pending])
    for m in done:
        await _complete(storage, fences, m)
    for m in errors:
        await _complete(storage, fences, m, error=True)
    await clock.advance(10)
    before = clock.now()
    counts = [await storage.messages.purge(before, limit=3) for _ in range(5)]
    assert counts == [3, 3, 3, 0, 0]
    assert await _left(storage, [*done, *errors, pending]) == {pending.id}


async def test_a_purged_primary_key_can_be_used_again(
    storage: Storage, clock: TestClock
) -> None:
    fences = await _own(storage, S1)
    first = msg(primary_key="txn-1")
    await storage.messages.save_request(first)
    await _complete(storage, fences, first)
    again = msg(primary_key="txn-1")
    assert await storage.messages.save_request(again) == Duplicate(
        first.id, Reply(first.id, b"r"))
    await clock.advance(10)
    assert await storage.messages.purge(clock.now()) == 1
    # after retention the key is free: the same request is stored (and runs) again
    assert await storage.messages.save_request(again) == Saved(again.id)
    assert await _left(storage, [first, again]) == {again.id}


@pytest.mark.parametrize(
    ("field", "arguments"),
    [
        ("before", {"before": math.nan}),
        ("before", {"before": math.inf}),
        ("before", {"before": -1.0}),
        ("before", {"before": "yesterday"}),
        ("before", {"before": None}),
        ("before", {"before": True}),
        ("limit", {"limit": 0}),
        ("limit", {"limit": -5}),
        ("limit", {"limit": 2.5}),
        ("limit", {"limit": "10"}),
        ("limit", {"limit": False}),
        ("keep_errors_of", {"keep_errors_of": "covey.Job"}),
        ("keep_errors_of", {"keep_errors_of": [1]}),
        ("keep_errors_of", {"keep_errors_of": None}),
    ],
)
async def test_bad_arguments_are_refused_and_nothing_is_deleted(
    storage: Storage, clock: TestClock, field: str, arguments: dict[str, object]
) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    await _complete(storage, fences, m)
    await clock.advance(10)
    call: dict[str, object] = {"before": clock.now(), **arguments}
    with pytest.raises(ClusterError) as info:
        await storage.messages.purge(**call)  # type: ignore[arg-type]
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == field
    assert not info.value.retryable
    assert await _left(storage, [m]) == {m.id}
    assert await storage.messages.purge(clock.now()) == 1  # the storage still works
