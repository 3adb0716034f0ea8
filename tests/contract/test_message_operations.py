"""MessageStorage for retries and operators: reschedule, inspect, list, delete."""

from __future__ import annotations

import pytest

from covey.core import AlreadyProcessed, FencedOut, MessageNotFound, TestClock
from covey.storage import Fence, Reply, Storage

from ._helpers import RUNNER_A, RUNNER_B, S1, msg, next_id
from .conftest import MakeStorage


async def _fence(storage: Storage) -> Fence:
    return Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])


async def test_reschedule_puts_a_message_back_for_later(storage: Storage,
                                                        clock: TestClock) -> None:
    fence = await _fence(storage)
    m = msg(entity_type="covey.Job", tag="email.send")
    await storage.messages.save_request(m)
    assert [x.failures for x in await storage.messages.unprocessed([S1], limit=5)] == [0]
    assert await storage.messages.reschedule(
        m.id, deliver_at=clock.now() + 10, error="SMTP down", fence=fence) == 1
    assert await storage.messages.unprocessed([S1], limit=5) == []  # not due, lease cleared
    record = (await storage.messages.inspect([m.id]))[m.id]
    assert record.last_error == "SMTP down" and record.message.failures == 1
    assert not record.processed and record.lease_until is None
    await clock.advance(11)
    [again] = await storage.messages.unprocessed([S1], limit=5)
    assert again.id == m.id and again.failures == 1
    assert await storage.messages.reschedule(
        m.id, deliver_at=clock.now(), error="still down", fence=fence) == 2
    await storage.messages.save_reply(Reply(m.id, b"sent"), fence)
    record = (await storage.messages.inspect([m.id]))[m.id]
    assert record.processed and record.reply == Reply(m.id, b"sent")
    assert record.processed_at == clock.now() and record.created_at <= clock.now()
    with pytest.raises(AlreadyProcessed):
        await storage.messages.reschedule(m.id, deliver_at=0, error="x", fence=fence)


async def test_reschedule_is_fenced(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    old = await _fence(one)
    m = msg()
    await one.messages.save_request(m)
    await one.runners.release(RUNNER_A, [S1])
    await two.runners.acquire(RUNNER_B, [S1])
    with pytest.raises(FencedOut):
        await one.messages.reschedule(m.id, deliver_at=0, error="x", fence=old)
    assert (await one.messages.inspect([m.id]))[m.id].message.failures == 0
    with pytest.raises(MessageNotFound):
        await one.messages.reschedule(next_id(), deliver_at=0, error="x", fence=old)


async def test_reset_request_clears_failures(storage: Storage) -> None:
    fence = await _fence(storage)
    m = msg()
    await storage.messages.save_request(m)
    await storage.messages.reschedule(m.id, deliver_at=0, error="boom", fence=fence)
    await storage.messages.save_reply(Reply(m.id, b"dead", is_error=True), fence)
    await storage.messages.reset_request(m.id)
    record = (await storage.messages.inspect([m.id]))[m.id]
    assert not record.processed and record.message.failures == 0 and record.last_error is None


async def test_list_messages_by_type_state_and_tag(storage: Storage) -> None:
    fence = await _fence(storage)
    queued = msg("j1", entity_type="covey.Job", tag="a")
    done = msg("j2", entity_type="covey.Job", tag="a")
    dead = msg("j3", entity_type="covey.Job", tag="b")
    other = msg("x", entity_type="Account")
    for m in (queued, done, dead, other):
        await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(done.id, b"ok"), fence)
    await storage.messages.save_reply(Reply(dead.id, b"err", is_error=True), fence)

    async def ids(**kw: object) -> list[int]:
        records = await storage.messages.list_messages("covey.Job", **kw)  # type: ignore[arg-type]
        return [r.message.id for r in records]

    assert await ids() == [dead.id, done.id, queued.id]  # newest first
    assert await ids(state="unprocessed") == [queued.id]
    assert await ids(state="processed") == [dead.id, done.id]
    assert await ids(state="error") == [dead.id]
    assert await ids(tag="a") == [done.id, queued.id]
    assert await ids(limit=1) == [dead.id]
    assert await ids(before_id=dead.id) == [done.id, queued.id]


async def test_inspect_and_delete(storage: Storage) -> None:
    a, b = msg(primary_key="k"), msg()
    await storage.messages.save_request(a)
    await storage.messages.save_request(b)
    records = await storage.messages.inspect([a.id, b.id, next_id()])
    assert set(records) == {a.id, b.id}
    assert records[a.id].message.primary_key == "k"
    assert await storage.messages.delete([a.id, next_id()]) == 1
    assert await storage.messages.get(a.id) is None
    assert await storage.messages.get(b.id) is not None
    # the deleted key can be used again
    assert (await storage.messages.save_request(msg(primary_key="k"))).__class__.__name__ == "Saved"


async def test_mark_started_counts_a_run(storage: Storage, clock: TestClock) -> None:
    fence = await _fence(storage)
    pushed, done = msg(), msg()
    await storage.messages.save_request(pushed)
    await storage.messages.save_request(done)
    await storage.messages.save_reply(Reply(done.id, b"x"), fence)
    await storage.messages.reschedule(pushed.id, deliver_at=clock.now(), error="e", fence=fence)
    await storage.messages.mark_started([pushed.id, done.id, next_id()])
    record = (await storage.messages.inspect([pushed.id]))[pushed.id]
    assert record.message.starts == 1 and record.lease_until is None
    assert (await storage.messages.inspect([done.id]))[done.id].message.starts == 0
    [again] = await storage.messages.unprocessed([S1], limit=5)  # still due, not leased
    assert again.id == pushed.id and again.starts == 1 and again.attempts == 1
    await storage.messages.save_reply(Reply(pushed.id, b"x"), fence)
    await storage.messages.reset_request(pushed.id)
    assert (await storage.messages.inspect([pushed.id]))[pushed.id].message.starts == 0


async def test_count_messages_groups_by_tag_priority_and_state(storage: Storage) -> None:
    fence = await _fence(storage)
    a1, a2 = msg("1", entity_type="covey.Job", tag="a"), msg("2", entity_type="covey.Job", tag="a")
    b = msg("3", entity_type="covey.Job", tag="b", priority=10)
    dead = msg("4", entity_type="covey.Job", tag="b", priority=10)
    for m in (a1, a2, b, dead, msg("x", entity_type="Account")):
        await storage.messages.save_request(m)
    await storage.messages.save_reply(Reply(a2.id, b"ok"), fence)
    await storage.messages.save_reply(Reply(dead.id, b"no", is_error=True), fence)
    assert await storage.messages.count_messages("covey.Job") == [
        ("a", 0, "processed", 1), ("a", 0, "unprocessed", 1),
        ("b", 10, "error", 1), ("b", 10, "unprocessed", 1),
    ]


async def test_next_due_is_the_earliest_future_delivery(storage: Storage,
                                                       clock: TestClock) -> None:
    from covey.core import ShardId

    assert await storage.messages.next_due([S1]) is None
    soon, later = msg(deliver_at=clock.now() + 5), msg(deliver_at=clock.now() + 50)
    elsewhere = msg(shard=ShardId("default", 9), deliver_at=clock.now() + 1)
    now = msg(deliver_at=clock.now() - 1)
    for m in (later, soon, elsewhere, now):
        await storage.messages.save_request(m)
    assert await storage.messages.next_due([S1]) == pytest.approx(clock.now() + 5)
    await clock.advance(6)
    assert await storage.messages.next_due([S1]) == pytest.approx(clock.now() + 44)
    assert await storage.messages.next_due([]) is None
