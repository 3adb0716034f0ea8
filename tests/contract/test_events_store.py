"""The event log (``storage.events``) behaves the same on memory, SQLite and PostgreSQL.

Events are stored with the messages that deliver them, atomically; a retried
publish keeps the first copy; positions follow commit order and a reader that
keeps ``position > last`` never skips a row (on PostgreSQL: the sequencer waits
for older open transactions); groups keep a cursor that only moves forward;
purge keeps what a group still needs; a unit of work publishes with its reply.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from covey.core import ClusterError, EntityAddress, Reason, TestClock
from covey.storage import (
    EVENT_ENTITY_TYPE,
    Duplicate,
    EventRecord,
    Fence,
    Reply,
    Saved,
    Storage,
    TransactionalEvents,
)

from ._helpers import RUNNER_A, S1, msg, next_id
from ._units import owned, stored_unit
from .conftest import Namespace


def event(topic: str = "orders", key: str = "k1", **fields: Any) -> EventRecord:
    return EventRecord(id=fields.pop("id", None) or next_id(), topic=topic, type="Placed",
                       version=1, key=key, payload=fields.pop("payload", b"p"),
                       published_at=fields.pop("published_at", 100.0), **fields)


def delivery(group: str = "billing", key: str = "k1", **fields: Any) -> Any:
    """The message that delivers an event to ``group``."""
    return msg(f"{group}/{key}", entity_type=EVENT_ENTITY_TYPE, tag="Placed", **fields)


async def settled(storage: Storage) -> None:
    """Sequence until every committed event has a position (PostgreSQL gives them
    once older transactions, maybe of other tests, have ended)."""
    deadline = time.monotonic() + 20
    while True:
        await storage.events.sequence()
        if all(info.unsequenced == 0 for info in await storage.events.topics()):
            return
        assert time.monotonic() < deadline, "events stayed unsequenced"
        await asyncio.sleep(0.01)


async def test_append_stores_events_with_their_deliveries(storage: Storage) -> None:
    events = [event(headers={"x-tenant": "t1"}, groups=("billing",)), event(key="k2")]
    messages = [delivery(), delivery(key="k2")]
    results = await storage.events.append(events, messages)
    assert [r.id for r in results] == [m.id for m in messages]
    await settled(storage)
    stored = await storage.events.read(0)
    assert [(e.id, e.payload, e.headers, e.groups) for e in stored] == [
        (e.id, e.payload, e.headers, e.groups) for e in events]
    assert stored[0].position is not None and stored[1].position == stored[0].position + 1
    assert await storage.events.get(events[0].id) == stored[0]
    assert set(await storage.messages.replies_for([m.id for m in messages])) == set()
    assert [await storage.messages.get(m.id) is not None for m in messages] == [True, True]


async def test_a_bad_message_stores_nothing(storage: Storage) -> None:
    good = event()
    with pytest.raises(ClusterError) as info:
        await storage.events.append([good], [delivery(), replace(delivery(), tag="")])
    assert info.value.reason is Reason.INVALID_ARGUMENT
    with pytest.raises(ClusterError):
        await storage.events.append([good, replace(event(), key="")], [delivery()])
    await settled(storage)
    assert await storage.events.get(good.id) is None
    assert await storage.events.topics() == []
    assert await storage.messages.count_messages(EVENT_ENTITY_TYPE) == []


async def test_a_reappended_event_keeps_its_first_copy(storage: Storage) -> None:
    first = event(payload=b"first")
    message = delivery()
    await storage.events.append([first], [message])
    again = await storage.events.append([replace(first, payload=b"second"), first], [message])
    assert again == [Duplicate(message.id, None)]
    await settled(storage)
    stored = await storage.events.read(0)
    assert [(e.id, e.payload) for e in stored] == [(first.id, b"first")]


async def test_positions_increase_in_commit_order(storage: Storage) -> None:
    published = []
    for i in range(5):
        published.append(event(topic="orders" if i % 2 else "invoices"))
        await storage.events.append([published[-1]], [])
    await settled(storage)
    positions = [(await storage.events.get(e.id)).position for e in published]  # type: ignore[union-attr]
    assert positions == sorted(positions) and len(set(positions)) == 5
    assert await storage.events.last_position() == positions[-1]
    assert await storage.events.last_position("invoices") == positions[4]
    assert await storage.events.last_position("orders") == positions[3]
    assert await storage.events.last_position("nothing") == 0


async def test_read_after_topics_and_limit(storage: Storage) -> None:
    published = [event(topic=("a", "b", "c")[i % 3]) for i in range(9)]
    await storage.events.append(published, [])
    await settled(storage)
    every = await storage.events.read(0)
    assert [e.id for e in every] == [e.id for e in published]
    middle = every[3].position
    assert middle is not None
    assert [e.id for e in await storage.events.read(middle)] == [e.id for e in published[4:]]
    assert [e.id for e in await storage.events.read(0, limit=2)] == [e.id for e in published[:2]]
    only = await storage.events.read(0, topics=["a", "c"])
    assert [e.id for e in only] == [e.id for e in published if e.topic in ("a", "c")]
    assert await storage.events.read(0, topics=[]) == []
    assert await storage.events.read(0, limit=0) == []


async def test_unfanned_returns_only_the_events_stored_without_the_group(
        storage: Storage) -> None:
    # made in this order, so their ids (PostgreSQL's order within one append) and the
    # list (SQLite's and memory's) agree
    published = [event(groups=("billing", "email")), event(groups=("email",)),
                 event(groups=("billing", "email")), event(topic="invoices"),
                 event(groups=()), event(groups=("billing", "email"))]
    without = [published[1], published[4]]
    await storage.events.append(published, [])
    await settled(storage)
    found, upto = await storage.events.unfanned("billing", "orders", 0)
    assert [e.id for e in found] == [e.id for e in without]
    assert found[0].payload == without[0].payload and found[0].position is not None
    assert upto == await storage.events.last_position("orders")
    # a window of 2 events of the topic: the first two, the second lacks billing
    found, upto = await storage.events.unfanned("billing", "orders", 0, limit=2)
    assert [e.id for e in found] == [without[0].id]
    second = await storage.events.get(published[1].id)
    assert second is not None and upto == second.position
    # past the end: nothing, and the position it was given
    last = await storage.events.last_position()
    assert await storage.events.unfanned("billing", "orders", last) == ([], last)
    # a name that contains another group's name is not mistaken for it
    found, _ = await storage.events.unfanned("bill", "orders", 0)
    assert len(found) == 5


async def test_delivery_stats_count_pending_and_dead_deliveries_per_group(
        storage: Storage) -> None:
    assert await storage.events.delivery_stats() == []
    sent = [delivery("billing", "k1"), delivery("billing", "k2"), delivery("email", "k1")]
    await storage.events.append([event(), event(key="k2")], sent)
    await storage.messages.save_request(msg("other"))  # not an event delivery
    stats = {s.group: s for s in await storage.events.delivery_stats()}
    assert sorted(stats) == ["billing", "email"]
    assert (stats["billing"].pending, stats["billing"].dead) == (2, 0)
    assert (stats["email"].pending, stats["email"].dead) == (1, 0)
    assert stats["billing"].oldest_pending_at is not None
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    await storage.messages.save_reply(Reply(sent[0].id, b"dead", is_error=True), fence)
    await storage.messages.save_reply(Reply(sent[2].id, b"done"), fence)
    stats = {s.group: s for s in await storage.events.delivery_stats()}
    assert (stats["billing"].pending, stats["billing"].dead) == (1, 1)
    assert "email" not in stats  # nothing pending, nothing dead


async def test_position_at_a_time(storage: Storage) -> None:
    early, late = event(published_at=10.0), event(published_at=20.0)
    other = event(topic="invoices", published_at=15.0)
    await storage.events.append([early, other, late], [])
    await settled(storage)
    at = {e.id: (await storage.events.get(e.id)).position for e in (early, other, late)}  # type: ignore[union-attr]
    assert await storage.events.position_at(5.0) == 0
    assert await storage.events.position_at(15.0) == at[early.id]
    # (events of one append share a transaction: their order among themselves is
    # the backend's; PostgreSQL orders them by id)
    assert await storage.events.position_at(16.0) == max(at[early.id], at[other.id])
    assert await storage.events.position_at(16.0, "orders") == at[early.id]
    assert await storage.events.position_at(99.0) == max(at.values())
    assert await storage.events.position_at(99.0, "orders") == max(at[early.id], at[late.id])


async def test_groups_start_at_earliest_or_latest(storage: Storage) -> None:
    await storage.events.append([event(), event(), event(topic="invoices")], [])
    await settled(storage)
    last = await storage.events.last_position("orders")
    latest = await storage.events.register_group("audit", "orders", start="latest", now=5.0)
    earliest = await storage.events.register_group("billing", "orders", start="earliest",
                                                   now=6.0)
    assert (latest.cursor, latest.start, latest.created_at) == (last, "latest", 5.0)
    assert (earliest.cursor, earliest.start, earliest.replay_until) == (0, "earliest", 0)
    # registering again changes nothing, whatever start says now
    assert await storage.events.register_group("audit", "orders", start="earliest",
                                               now=9.0) == latest
    await storage.events.register_group("audit", "invoices", start="earliest", now=7.0)
    assert [(g.group, g.topic) for g in await storage.events.groups()] == [
        ("audit", "invoices"), ("audit", "orders"), ("billing", "orders")]
    assert [g.group for g in await storage.events.groups(topic="orders")] == ["audit", "billing"]
    assert [g.topic for g in await storage.events.groups(group="audit")] == [
        "invoices", "orders"]


async def test_advance_never_moves_back(storage: Storage) -> None:
    await storage.events.register_group("billing", "orders", start="earliest", now=1.0)
    await storage.events.advance_group("billing", "orders", 5)
    await storage.events.advance_group("billing", "orders", 3)
    [group] = await storage.events.groups(group="billing")
    assert group.cursor == 5
    for call in (storage.events.advance_group("nobody", "orders", 1),
                 storage.events.replay_group("billing", "invoices", 0)):
        with pytest.raises(ClusterError) as info:
            await call
        assert info.value.details["field"] == "group"
        assert info.value.details["topic"] in ("orders", "invoices")


async def test_replay_delivers_again_from_a_position(storage: Storage) -> None:
    await storage.events.append([event() for _ in range(4)], [])
    await settled(storage)
    last = await storage.events.last_position("orders")
    await storage.events.register_group("billing", "orders", start="latest", now=1.0)
    replay = await storage.events.replay_group("billing", "orders", last - 3)
    assert (replay.cursor, replay.replay_until, replay.replay) == (last - 3, last, 1)
    await storage.events.advance_group("billing", "orders", last - 1)
    [group] = await storage.events.groups()
    assert (group.cursor, group.replay_until) == (last - 1, last)  # still replaying
    await storage.events.advance_group("billing", "orders", last)
    [group] = await storage.events.groups()
    assert (group.cursor, group.replay_until, group.replay) == (last, 0, 1)  # replay over


async def test_delete_group(storage: Storage) -> None:
    for topic in ("orders", "invoices"):
        await storage.events.register_group("billing", topic, start="earliest", now=1.0)
    await storage.events.register_group("audit", "orders", start="earliest", now=1.0)
    assert await storage.events.delete_group("billing", "orders") == 1
    assert await storage.events.delete_group("billing") == 1
    assert await storage.events.delete_group("billing") == 0
    assert [g.group for g in await storage.events.groups()] == ["audit"]


async def test_purge_keeps_events_a_group_still_needs(storage: Storage) -> None:
    orders = [event(published_at=10.0) for _ in range(4)]
    invoices = [event(topic="invoices", published_at=10.0) for _ in range(2)]
    fresh = event(published_at=500.0)
    await storage.events.append([*orders, *invoices, fresh], [])
    await settled(storage)
    at = {e.id: (await storage.events.get(e.id)).position for e in [*orders, *invoices]}  # type: ignore[union-attr]
    await storage.events.register_group("fast", "orders", start="latest", now=1.0)
    await storage.events.register_group("slow", "orders", start="earliest", now=1.0)
    await storage.events.advance_group("slow", "orders", at[orders[1].id] or 0)
    # orders: only what every group passed; invoices (no group): any; never `fresh`
    assert await storage.events.purge(100.0, limit=1) == 1
    assert await storage.events.purge(100.0) == 3
    assert await storage.events.purge(100.0) == 0
    left = [e.id for e in await storage.events.read(0)]
    assert left == [orders[2].id, orders[3].id, fresh.id]


async def test_purge_keeps_the_newest_event(storage: Storage) -> None:
    only = event(published_at=10.0)
    await storage.events.append([only], [])
    await settled(storage)
    assert await storage.events.purge(100.0) == 0
    await storage.events.append([event(published_at=10.0)], [])
    await settled(storage)
    assert await storage.events.purge(100.0) == 1
    newer = event(published_at=10.0)
    await storage.events.append([newer], [])
    await settled(storage)  # numbered on from the kept one: positions never restart
    assert (await storage.events.get(newer.id)).position == 3  # type: ignore[union-attr]


async def test_topics_summarize_the_log(storage: Storage) -> None:
    assert await storage.events.topics() == []
    await storage.events.append([event(published_at=5.0), event(published_at=7.0),
                                 event(topic="invoices", published_at=6.0)], [])
    await settled(storage)
    orders, = [t for t in await storage.events.topics() if t.topic == "orders"]
    assert [t.topic for t in await storage.events.topics()] == ["invoices", "orders"]
    assert (orders.events, orders.last_published_at, orders.unsequenced) == (2, 7.0, 0)
    assert orders.first_position is not None and orders.last_position is not None
    assert orders.first_position < orders.last_position


async def test_unprocessed_of_lists_one_entitys_backlog_oldest_first(
    storage: Storage, clock: TestClock
) -> None:
    ids = sorted(next_id() for _ in range(4))
    mine = [delivery(id=ids[2]), delivery(id=ids[0], deliver_at=clock.now() + 3600),
            delivery(id=ids[3]), delivery(id=ids[1])]
    await storage.messages.save_requests([*mine, delivery(key="other")])
    leased = await storage.messages.unprocessed([S1], limit=1)  # a lease changes nothing
    done = delivery()
    await storage.messages.save_request(done)
    fence = (await storage.runners.acquire(RUNNER_A, [S1]))[S1]
    await storage.messages.save_reply(Reply(done.id, b"ok"), Fence(S1, fence))
    address = EntityAddress(EVENT_ENTITY_TYPE, "billing/k1", S1)
    backlog = await storage.messages.unprocessed_of(address, limit=10)
    assert [m.id for m in backlog] == ids
    assert leased and all(m.attempts <= 1 for m in backlog)
    assert [m.id for m in await storage.messages.unprocessed_of(address, limit=2)] == ids[:2]
    assert await storage.messages.unprocessed_of(address, limit=0) == []


async def test_a_unit_publishes_with_its_reply(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    published, sent = event(), delivery()
    unit.publish([])
    assert not unit.used
    unit.publish([published])
    unit.send([sent])
    assert unit.used
    await unit.commit(Reply(request.id, b"done"))
    await settled(storage)
    assert [e.id for e in await storage.events.read(0)] == [published.id]
    assert await storage.messages.get(sent.id) is not None
    assert (await storage.messages.replies_for([request.id]))[request.id].payload == b"done"


async def test_a_discarded_unit_publishes_nothing(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    dropped = event()
    unit.publish([dropped])
    await unit.discard()
    with pytest.raises(ClusterError):
        unit.publish([event()])
    # a refused commit publishes nothing either
    fence = await owned(storage)
    other = storage.messages.unit(fence, request.id)
    await storage.messages.save_reply(Reply(request.id, b"first"), fence)
    other.publish([event()])
    with pytest.raises(ClusterError):
        await other.commit(Reply(request.id, b"second"))
    await settled(storage)
    assert await storage.events.read(0) == [] and await storage.events.topics() == []


async def _app_connection(namespace: Namespace) -> Any:
    if namespace.backend == "postgres":
        conn = await asyncpg.connect(namespace.url)
        await conn.execute("BEGIN")
        return conn
    lite = sqlite3.connect(namespace.path, timeout=10, isolation_level=None)
    lite.execute("BEGIN IMMEDIATE")
    return lite


async def _end(conn: Any, commit: bool) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute("COMMIT" if commit else "ROLLBACK")
        conn.close()
    else:
        await conn.execute("COMMIT" if commit else "ROLLBACK")
        await conn.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_append_in_the_applications_transaction(
    storage: Storage, namespace: Namespace, commit: bool
) -> None:
    store = storage.events
    assert isinstance(store, TransactionalEvents)
    published, sent = event(), delivery()
    conn = await _app_connection(namespace)
    try:
        results = await store.append_in(conn, [published], [sent])
        assert results == [Saved(sent.id)]
    finally:
        await _end(conn, commit)
    await settled(storage)
    stored = await storage.events.read(0)
    assert [e.id for e in stored] == ([published.id] if commit else [])
    assert (await storage.messages.get(sent.id) is not None) is commit


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_sequences_behind_the_oldest_open_transaction(
    storage: Storage, namespace: Namespace
) -> None:
    store = storage.events
    assert isinstance(store, TransactionalEvents)
    first, second = event(key="a"), event(key="b")
    a = await asyncpg.connect(namespace.url)
    b = await asyncpg.connect(namespace.url)
    try:
        await a.execute("BEGIN")
        await a.fetchval("SELECT pg_current_xact_id()")  # A's xid is the smaller
        async with b.transaction():
            await store.append_in(b, [second], [])
        # B committed, but A (older) is open: a reader that saw B at a position
        # would skip whatever A commits below it, so B waits
        for _ in range(3):
            await store.sequence()
        assert (await store.get(second.id)).position is None  # type: ignore[union-attr]
        assert await store.read(0) == []
        await store.append_in(a, [first], [])
        await a.execute("COMMIT")
    finally:
        await a.close()
        await b.close()
    await settled(storage)
    stamped = {e.id: e.position for e in await store.read(0)}
    assert set(stamped) == {first.id, second.id}
    # stamped together once A ended, in (xid, id) order: A's transaction began first
    assert stamped[first.id] < stamped[second.id]  # type: ignore[operator]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_postgres_sequencers_never_interleave(
    storage: Storage, namespace: Namespace
) -> None:
    await storage.events.append([event() for _ in range(50)], [])
    counts = await asyncio.gather(*(storage.events.sequence(limit=10) for _ in range(8)))
    await settled(storage)
    positions = [e.position for e in await storage.events.read(0)]
    assert positions == list(range(1, 51))
    assert sum(counts) <= 50


@pytest.mark.parametrize("backend", ["memory", "sqlite"], indirect=True)
async def test_embedded_backends_number_events_as_they_store_them(storage: Storage) -> None:
    published = event()
    await storage.events.append([published], [])
    assert (await storage.events.get(published.id)).position == 1  # type: ignore[union-attr]
    assert await storage.events.sequence() == 0


async def test_units_committed_together_publish_their_own_events(storage: Storage) -> None:
    fence = Fence(S1, (await storage.runners.acquire(RUNNER_A, [S1]))[S1])
    requests = [msg() for _ in range(4)]
    await storage.messages.save_requests(requests)
    units = [storage.messages.unit(fence, r.id) for r in requests]
    published = [event(key=f"k{i}") for i in range(4)]
    for unit, one in zip(units, published, strict=True):
        unit.publish([one])
    await asyncio.gather(*(u.commit(Reply(r.id, b"ok"))
                           for u, r in zip(units, requests, strict=True)))
    await settled(storage)
    assert sorted(e.id for e in await storage.events.read(0)) == [e.id for e in published]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_a_live_postgres_unit_publishes_on_its_connection(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    tx = await unit.transaction()
    assert await tx.fetchval("SELECT 1") == 1  # the unit's connection is live now
    published = event()
    unit.publish([published])
    await unit.commit(Reply(request.id, b"ok"))
    await settled(storage)
    assert [e.id for e in await storage.events.read(0)] == [published.id]
