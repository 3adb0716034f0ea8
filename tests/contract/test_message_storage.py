"""MessageStorage: save, dedupe, ordering, leases, deliver_at, fencing, purge."""

from __future__ import annotations

import asyncio

import pytest

from covey.core import (
    AlreadyProcessed,
    ClusterError,
    EntityAddress,
    FencedOut,
    MessageNotFound,
    MsgpackCodec,
    Reason,
    SerializationError,
    ShardId,
    StorageOptions,
    TestClock,
)
from covey.storage import Duplicate, Fence, Message, Reply, Saved, Storage

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, msg, next_id
from .conftest import MakeStorage


async def _own(storage: Storage, *shards: ShardId) -> dict[ShardId, Fence]:
    held = await storage.runners.acquire(RUNNER_A, shards)
    return {s: Fence(s, e) for s, e in held.items()}


async def test_saved_message_is_read_back_intact(storage: Storage) -> None:
    m = msg(headers={"tenant": "t1", "trace": "abc"}, payload=bytes(range(256)))
    assert await storage.messages.save_request(m) == Saved(m.id)
    [read] = await storage.messages.unprocessed([S1], limit=10)
    assert read.id == m.id and read.address == m.address and read.tag == m.tag
    assert read.address.shard == S1
    assert read.payload == m.payload and dict(read.headers) == {"tenant": "t1", "trace": "abc"}
    assert read.attempts == 1
    got = await storage.messages.get(m.id)
    assert got is not None and got.payload == m.payload
    assert await storage.messages.get(next_id()) is None


async def test_primary_key_dedupes_and_returns_the_reply(storage: Storage) -> None:
    fences = await _own(storage, S1)
    first = msg(primary_key="txn-1")
    again = msg(primary_key="txn-1")
    assert await storage.messages.save_request(first) == Saved(first.id)
    assert await storage.messages.save_request(again) == Duplicate(first.id, None)
    reply = Reply(first.id, b"balance=5")
    await storage.messages.save_reply(reply, fences[S1])
    assert await storage.messages.save_request(msg(primary_key="txn-1")) == Duplicate(
        first.id, reply
    )
    # only one copy was ever stored
    assert [m.id for m in await storage.messages.unprocessed([S1], limit=10)] == []


async def test_primary_key_is_scoped_to_entity_and_tag(storage: Storage) -> None:
    results = [
        await storage.messages.save_request(m)
        for m in (
            msg("e1", primary_key="k"),
            msg("e2", primary_key="k"),
            msg("e1", tag="withdraw", primary_key="k"),
            msg("e1", entity_type="Other", primary_key="k"),
        )
    ]
    assert all(isinstance(r, Saved) for r in results)


async def test_hundred_concurrent_saves_of_one_key(storage: Storage) -> None:
    messages = [msg(primary_key="same") for _ in range(100)]
    results = await asyncio.gather(*(storage.messages.save_request(m) for m in messages))
    saved = [r for r in results if isinstance(r, Saved)]
    assert len(saved) == 1
    dupes = [r for r in results if isinstance(r, Duplicate)]
    assert len(dupes) == 99
    assert {d.original_id for d in dupes} == {saved[0].id}
    assert len(await storage.messages.unprocessed([S1], limit=200)) == 1


async def test_concurrent_saves_from_two_instances(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    messages = [msg(primary_key=f"k{i % 10}") for i in range(60)]
    results = await asyncio.gather(
        *((one if i % 2 else two).messages.save_request(m) for i, m in enumerate(messages))
    )
    assert sum(isinstance(r, Saved) for r in results) == 10
    assert len(await one.messages.unprocessed([S1], limit=100)) == 10


async def test_long_primary_keys(storage: Storage) -> None:
    base = "x" * 1000
    a, b = msg(primary_key=base + "a"), msg(primary_key=base + "b")
    assert isinstance(await storage.messages.save_request(a), Saved)
    assert isinstance(await storage.messages.save_request(b), Saved)
    assert await storage.messages.save_request(msg(primary_key=base + "a")) == Duplicate(
        a.id, None
    )
    long_entity = msg("e" * 1024, primary_key="k")  # the longest id allowed
    assert isinstance(await storage.messages.save_request(long_entity), Saved)
    assert a.dedupe_key is not None and len(a.dedupe_key) <= 255


async def test_order_is_priority_then_id_and_limit_applies(storage: Storage) -> None:
    low = msg(priority=-1)
    normal_1 = msg()
    high = msg(priority=5)
    normal_2 = msg()
    for m in (low, normal_1, high, normal_2):
        await storage.messages.save_request(m)
    first = await storage.messages.unprocessed([S1], limit=2)
    assert [m.id for m in first] == [high.id, normal_1.id]
    rest = await storage.messages.unprocessed([S1], limit=10)
    assert [m.id for m in rest] == [normal_2.id, low.id]


async def test_only_requested_shards_are_read(storage: Storage) -> None:
    in_s1, in_s2 = msg(shard=S1), msg(shard=S2)
    other_group = msg(shard=ShardId("jobs", 1))
    for m in (in_s1, in_s2, other_group):
        await storage.messages.save_request(m)
    assert [m.id for m in await storage.messages.unprocessed([S2], limit=10)] == [in_s2.id]
    assert [m.id for m in await storage.messages.unprocessed([ShardId("jobs", 1)], limit=10)] == [
        other_group.id
    ]
    assert await storage.messages.unprocessed([], limit=10) == []


async def test_read_lease_hands_a_message_out_once(storage: Storage, clock: TestClock) -> None:
    m = msg()
    await storage.messages.save_request(m)
    assert [x.id for x in await storage.messages.unprocessed([S1], limit=10)] == [m.id]
    assert await storage.messages.unprocessed([S1], limit=10) == []
    await clock.advance(StorageOptions().message_lease + 1)
    [again] = await storage.messages.unprocessed([S1], limit=10)
    assert again.id == m.id and again.attempts == 2


async def test_concurrent_readers_never_share_a_message(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    for _ in range(50):
        await one.messages.save_request(msg())
    batches = await asyncio.gather(
        *((one if i % 2 else two).messages.unprocessed([S1], limit=7) for i in range(10))
    )
    ids = [m.id for batch in batches for m in batch]
    assert len(ids) == 50 and len(set(ids)) == 50


async def test_reset_shards_clears_leases(storage: Storage) -> None:
    a, b = msg(shard=S1), msg(shard=S2)
    await storage.messages.save_request(a)
    await storage.messages.save_request(b)
    assert len(await storage.messages.unprocessed([S1, S2], limit=10)) == 2
    await storage.messages.reset_shards([S1])
    assert [m.id for m in await storage.messages.unprocessed([S1, S2], limit=10)] == [a.id]


async def test_deliver_at_holds_a_message_back(storage: Storage, clock: TestClock) -> None:
    later = msg(deliver_at=clock.now() + 60)
    now = msg(deliver_at=clock.now() - 1)
    await storage.messages.save_request(later)
    await storage.messages.save_request(now)
    assert [m.id for m in await storage.messages.unprocessed([S1], limit=10)] == [now.id]
    await clock.advance(59)  # the first message's read lease (30 s) has ended too
    assert [m.id for m in await storage.messages.unprocessed([S1], limit=10)] == [now.id]
    await clock.advance(2)
    [due] = await storage.messages.unprocessed([S1], limit=10)
    assert due.id == later.id and due.deliver_at == pytest.approx(later.deliver_at)


async def test_reply_marks_processed(storage: Storage) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    await storage.messages.unprocessed([S1], limit=10)
    await storage.messages.save_reply(Reply(m.id, b"ok"), fences[S1])
    await storage.messages.reset_shards([S1])
    assert await storage.messages.unprocessed([S1], limit=10) == []
    assert await storage.messages.replies_for([m.id, next_id()]) == {m.id: Reply(m.id, b"ok")}
    err = msg()
    await storage.messages.save_request(err)
    await storage.messages.save_reply(Reply(err.id, b"boom", is_error=True), fences[S1])
    assert (await storage.messages.replies_for([err.id]))[err.id].is_error is True


async def test_second_reply_is_refused(storage: Storage) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(m.id, b"first"), fences[S1])
    with pytest.raises(AlreadyProcessed) as info:
        await storage.messages.save_reply(Reply(m.id, b"second"), fences[S1])
    assert info.value.reason is Reason.ALREADY_PROCESSED
    assert (await storage.messages.replies_for([m.id]))[m.id].payload == b"first"


async def test_reply_to_unknown_message(storage: Storage) -> None:
    fences = await _own(storage, S1)
    with pytest.raises(MessageNotFound):
        await storage.messages.save_reply(Reply(next_id(), b"x"), fences[S1])


async def test_stale_epoch_is_fenced_out_and_changes_nothing(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    old = Fence(S1, (await one.runners.acquire(RUNNER_A, [S1]))[S1])
    m = msg()
    await one.messages.save_request(m)
    await one.runners.release(RUNNER_A, [S1])
    new = Fence(S1, (await two.runners.acquire(RUNNER_B, [S1]))[S1])
    with pytest.raises(FencedOut) as info:
        await one.messages.save_reply(Reply(m.id, b"late"), old)
    assert info.value.reason is Reason.FENCED and not info.value.retryable
    assert await one.messages.replies_for([m.id]) == {}
    assert [x.id for x in await two.messages.unprocessed([S1], limit=10)] == [m.id]
    await two.messages.save_reply(Reply(m.id, b"current"), new)
    assert (await one.messages.replies_for([m.id]))[m.id].payload == b"current"


async def test_fence_of_another_shard_is_refused(storage: Storage) -> None:
    fences = await _own(storage, S1, S2)
    m = msg(shard=S1)
    await storage.messages.save_request(m)
    with pytest.raises(FencedOut):
        await storage.messages.save_reply(Reply(m.id, b"x"), fences[S2])
    assert await storage.messages.replies_for([m.id]) == {}


async def test_made_up_epoch_is_refused(storage: Storage) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    with pytest.raises(FencedOut):
        await storage.messages.save_reply(Reply(m.id, b"x"), Fence(S1, fences[S1].epoch + 1))


async def test_concurrent_replies_fail_only_the_stale_one(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    s2_fence = Fence(S2, (await one.runners.acquire(RUNNER_A, [S2]))[S2])
    stale = Fence(S1, (await one.runners.acquire(RUNNER_A, [S1]))[S1])
    await one.runners.release(RUNNER_A, [S1])
    await two.runners.acquire(RUNNER_B, [S1])
    good = [msg(shard=S2) for _ in range(20)]
    bad = msg(shard=S1)
    for m in [*good, bad]:
        await one.messages.save_request(m)
    results = await asyncio.gather(
        *(one.messages.save_reply(Reply(m.id, b"ok"), s2_fence) for m in good),
        one.messages.save_reply(Reply(bad.id, b"late"), stale),
        return_exceptions=True,
    )
    assert results[:-1] == [None] * 20
    assert isinstance(results[-1], FencedOut)
    replies = await one.messages.replies_for([m.id for m in [*good, bad]])
    assert set(replies) == {m.id for m in good}


async def test_save_requests_is_one_atomic_batch(storage: Storage) -> None:
    a, b = msg(primary_key="p1"), msg(primary_key="p2")
    dup = msg(primary_key="p1")
    results = await storage.messages.save_requests([a, b, dup])
    assert results == [Saved(a.id), Saved(b.id), Duplicate(a.id, None)]
    with pytest.raises(ClusterError):
        await storage.messages.save_requests([msg(), msg(payload="not bytes")])  # type: ignore[arg-type]
    assert len(await storage.messages.unprocessed([S1], limit=10)) == 2


async def test_saving_the_same_id_again_is_a_duplicate(storage: Storage) -> None:
    m = msg()
    assert await storage.messages.save_request(m) == Saved(m.id)
    assert await storage.messages.save_request(m) == Duplicate(m.id, None)
    assert len(await storage.messages.unprocessed([S1], limit=10)) == 1


async def test_reset_request_of_unknown_id(storage: Storage) -> None:
    with pytest.raises(MessageNotFound):
        await storage.messages.reset_request(next_id())


async def test_reset_request_makes_it_unprocessed_again(storage: Storage) -> None:
    fences = await _own(storage, S1)
    m = msg(primary_key="run")
    await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(m.id, b"suspended"), fences[S1])
    await storage.messages.reset_request(m.id)
    assert await storage.messages.replies_for([m.id]) == {}
    assert [x.id for x in await storage.messages.unprocessed([S1], limit=10)] == [m.id]
    assert await storage.messages.save_request(msg(primary_key="run")) == Duplicate(m.id, None)


async def test_clear_address_deletes_its_unprocessed_messages(storage: Storage) -> None:
    fences = await _own(storage, S1)
    done, pending, other = msg("w1"), msg("w1"), msg("w2")
    for m in (done, pending, other):
        await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(done.id, b"x"), fences[S1])
    assert await storage.messages.clear_address(EntityAddress("Account", "w1", S1)) == 1
    assert [m.id for m in await storage.messages.unprocessed([S1], limit=10)] == [other.id]
    assert await storage.messages.replies_for([done.id]) == {done.id: Reply(done.id, b"x")}


async def test_purge_removes_old_processed_messages(storage: Storage, clock: TestClock) -> None:
    fences = await _own(storage, S1)
    old, new, pending = msg(primary_key="old"), msg(), msg()
    for m in (old, new, pending):
        await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(old.id, b"1"), fences[S1])
    await clock.advance(100)
    await storage.messages.save_reply(Reply(new.id, b"2"), fences[S1])
    assert await storage.messages.purge(before=clock.now() - 50) == 1
    assert await storage.messages.get(old.id) is None
    assert await storage.messages.get(new.id) is not None
    assert await storage.messages.get(pending.id) is not None
    # the purged key can be used again
    assert isinstance(await storage.messages.save_request(msg(primary_key="old")), Saved)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("payload", {"payload": "text, not bytes"}),
        ("headers", {"headers": {"n": 1}}),
        ("priority", {"priority": 70000}),
        ("id", {"id": -5}),
        ("tag", {"tag": ""}),
        ("deliver_at", {"deliver_at": "tomorrow"}),
    ],
)
async def test_wrong_types_are_refused_and_nothing_is_stored(
    storage: Storage, field: str, change: dict[str, object]
) -> None:
    good = msg()
    await storage.messages.save_request(good)
    fields = {
        "id": next_id(), "address": good.address, "tag": "t", "payload": b"",
        **change,
    }
    bad = Message(**fields)  # type: ignore[arg-type]
    with pytest.raises(ClusterError) as info:
        await storage.messages.save_request(bad)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == field
    assert [m.id for m in await storage.messages.unprocessed([S1], limit=10)] == [good.id]


async def test_wrong_reply_types_are_refused(storage: Storage) -> None:
    fences = await _own(storage, S1)
    m = msg()
    await storage.messages.save_request(m)
    with pytest.raises(ClusterError) as info:
        await storage.messages.save_reply(Reply(m.id, "text"), fences[S1])  # type: ignore[arg-type]
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert await storage.messages.replies_for([m.id]) == {}


async def test_malformed_stored_payload_is_a_typed_error_for_that_message_only(
    storage: Storage,
) -> None:
    codec = MsgpackCodec()
    garbage = msg(payload=b"\xc1\xff\x00garbage")
    fine = msg(payload=codec.encode({"amount": 5}))
    await storage.messages.save_request(garbage)
    await storage.messages.save_request(fine)
    read = {m.id: m for m in await storage.messages.unprocessed([S1], limit=10)}
    assert read[garbage.id].payload == garbage.payload  # stored byte for byte
    with pytest.raises(SerializationError) as info:
        codec.decode(read[garbage.id].payload, dict[str, int])
    assert info.value.reason is Reason.PAYLOAD_INVALID
    assert codec.decode(read[fine.id].payload, dict[str, int]) == {"amount": 5}
