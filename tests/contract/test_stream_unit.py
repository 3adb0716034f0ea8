"""Stream items staged on a unit of work (``UnitOfWork.append_stream``), on every backend.

They are appended inside the unit's fenced commit exactly as
``storage.streams.append(entries, now=<commit time>)`` would (positions in commit
order, an id the stream holds already stores nothing), together with the state,
the application's writes, the outgoing messages, the events and the reply, or
not at all: a discarded unit, a fenced-out or refused commit and a failing write
of the application leave no item. A malformed entry fails when it is staged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from covey.core import (
    AlreadyProcessed,
    ClusterError,
    EntityError,
    FencedOut,
    Reason,
    TestClock,
    VersionConflict,
)
from covey.storage import Fence, Reply, Storage, StreamEntry, StreamItem, Versioned
from tests.unit._waiting import until

from ._helpers import RUNNER_A, RUNNER_B, S1, S2, msg
from ._units import AppTable, owned, stored_unit
from .conftest import MakeStorage, Namespace
from .test_argument_checks import event

_ids = itertools.count(9_000_001)

postgres_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

GOOD = StreamEntry("orders", 1, b"p")
#: (field, batch): what ``append_stream`` refuses, as ``StreamStore.append`` does
BAD: list[tuple[str, Any]] = [
    ("entries", "not a batch"), ("entries", None), ("entries", {"orders": GOOD}),
    ("entry", [GOOD, object()]),
    ("entry.stream", [GOOD, replace(GOOD, stream="")]),
    ("entry.stream", [GOOD, replace(GOOD, stream="a\x00b")]),
    ("entry.stream", [GOOD, replace(GOOD, stream="x" * 301)]),
    ("entry.id", [GOOD, replace(GOOD, id=0)]), ("entry.id", [GOOD, replace(GOOD, id=2**63)]),
    ("entry.id", [GOOD, replace(GOOD, id=True)]),
    ("entry.payload", [GOOD, replace(GOOD, payload="text")]),  # type: ignore[arg-type]
    ("entry.headers", [GOOD, replace(GOOD, headers={"h": 1})]),  # type: ignore[dict-item]
    ("entry.headers", [GOOD, replace(GOOD, headers={f"h{i}": "v" for i in range(65)})]),
    ("entry.published_at", [GOOD, replace(GOOD, published_at=float("nan"))]),
]


def entry(stream: str = "orders", **fields: Any) -> StreamEntry:
    return StreamEntry(stream=stream, id=fields.pop("id", None) or next(_ids),
                       payload=fields.pop("payload", b"item"), **fields)


async def items_of(storage: Storage, stream: str = "orders") -> list[StreamItem]:
    return (await storage.streams.read(stream, 0))[1]


@pytest.fixture
async def app(namespace: Namespace, storage: Storage) -> AppTable:
    table = AppTable(namespace, storage)
    await table.create()
    return table


async def test_committed_items_are_numbered_from_one_at_the_commit_time(
        storage: Storage, clock: TestClock) -> None:
    unit, request = await stored_unit(storage)
    unit.append_stream([])
    assert not unit.used
    batch = [entry(headers={"x-tenant": "t1"}, published_at=5.0, payload=b"\x00\xff"),
             entry("b"), entry()]
    unit.append_stream(batch)
    unit.append_stream([extra := entry()])  # a second call joins the same batch
    assert unit.used  # a unit that only staged items commits in a transaction
    assert await storage.streams.read("orders", 0) == (None, [])  # not before the commit
    await clock.advance(2.0)
    await unit.commit(Reply(request.id, b"done"))

    head, items = await storage.streams.read("orders", 0)
    assert head is not None and (head.last, head.first, head.updated_at) == (3, 1, clock.now())
    assert [(i.position, i.epoch) for i in items] == [(1, head.epoch), (2, head.epoch),
                                                      (3, head.epoch)]
    assert [i.id for i in items] == [batch[0].id, batch[2].id, extra.id]
    assert (items[0].payload, items[0].headers, items[0].published_at) == (
        b"\x00\xff", {"x-tenant": "t1"}, 5.0)
    assert [(i.position, i.id) for i in await items_of(storage, "b")] == [(1, batch[1].id)]
    assert (await storage.messages.replies_for([request.id]))[request.id].payload == b"done"


async def test_a_discarded_or_refused_unit_appends_nothing(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    unit.append_stream([entry()])
    await unit.discard()
    with pytest.raises(ClusterError) as info:
        unit.append_stream([entry()])
    assert info.value.reason is Reason.INVALID_ARGUMENT and info.value.details["field"] == "unit"
    fence = await owned(storage)
    late = storage.messages.unit(fence, request.id)
    late.append_stream([entry(), entry("b")])
    await storage.messages.save_reply(Reply(request.id, b"first"), fence)  # another run won
    with pytest.raises(AlreadyProcessed):
        await late.commit(Reply(request.id, b"second"))
    assert await storage.streams.stream_stats() == (0, 0)
    assert await storage.streams.heads(["orders", "b"]) == {}


async def test_a_rerun_after_a_crash_stores_each_item_once(make_storage: MakeStorage) -> None:
    one, two = await make_storage(), await make_storage()
    old = await owned(one)
    request = msg()
    await one.messages.save_request(request)
    staged = [entry(), entry("b")]
    crashed = one.messages.unit(old, request.id)  # its runner dies before the commit
    crashed.append_stream(staged)
    await one.runners.release(RUNNER_A, [S1])
    fence = Fence(S1, (await two.runners.acquire(RUNNER_B, [S1]))[S1])  # a new owner
    rerun = two.messages.unit(fence, request.id)
    rerun.append_stream([replace(e, payload=b"rerun") for e in staged])  # the same ids
    await rerun.commit(Reply(request.id, b"ok"))
    with pytest.raises(FencedOut):  # the old owner's late commit
        await crashed.commit(Reply(request.id, b"late"))
    orders = await items_of(two)
    assert [(i.position, i.id, i.payload) for i in orders] == [(1, staged[0].id, b"rerun")]
    assert [i.id for i in await items_of(two, "b")] == [staged[1].id]

    # another message publishing those ids again (a retried publish) stores nothing
    again = msg()
    await two.messages.save_request(again)
    retry = two.messages.unit(fence, again.id)
    retry.append_stream([*staged, staged[0]])
    await retry.commit(Reply(again.id, b"ok"))
    head, items = await two.streams.read("orders", 0)
    assert items == orders and head is not None and head.last == 1  # no position burned


async def test_positions_follow_commit_order_not_staging_order(storage: Storage) -> None:
    fence = await owned(storage)
    requests = [msg(), msg()]
    await storage.messages.save_requests(requests)
    early, late = (storage.messages.unit(fence, r.id) for r in requests)
    staged_first, staged_last = [entry(), entry()], [entry()]
    early.append_stream(staged_first)
    late.append_stream(staged_last)
    await storage.streams.append([first := entry()], now=1.0)  # a plain publish meanwhile
    await late.commit(Reply(requests[1].id, b"ok"))
    await early.commit(Reply(requests[0].id, b"ok"))
    items = await items_of(storage)
    assert [i.id for i in items] == [first.id, staged_last[0].id,
                                     *(e.id for e in staged_first)]
    assert [i.position for i in items] == [1, 2, 3, 4]


async def test_units_committed_together_number_their_items_without_gaps(
        storage: Storage) -> None:
    fence = await owned(storage)
    requests = [msg() for _ in range(8)]
    await storage.messages.save_requests(requests)
    units = [storage.messages.unit(fence, r.id) for r in requests]
    staged = [[entry(), entry(), entry()] for _ in units]
    for unit, batch in zip(units, staged, strict=True):
        unit.append_stream(batch)
    # committed at once: on PostgreSQL most of them share one group-commit transaction
    await asyncio.gather(*(u.commit(Reply(r.id, b"ok"))
                           for u, r in zip(units, requests, strict=True)))
    items = await items_of(storage)
    assert [i.position for i in items] == list(range(1, 25))
    position = {i.id: i.position for i in items}
    for batch in staged:  # each unit's items are consecutive, in its own order
        mine = [position[e.id] for e in batch]
        assert mine == list(range(mine[0], mine[0] + 3))


@pytest.mark.parametrize("outcome", ["committed", "app_write_failed", "version_conflict",
                                     "fenced_out"])
async def test_items_commit_with_the_units_other_effects_or_not_at_all(
        storage: Storage, app: AppTable, outcome: str) -> None:
    fence = await owned(storage)
    request, out = msg("cart"), msg("sku", shard=S2, entity_type="Inventory")
    await storage.messages.save_request(request)
    await storage.state.set("k", b"v", expected_version=None)
    if outcome == "version_conflict":
        await storage.state.set("k", b"moved on", expected_version=1)
    unit = storage.messages.unit(fence, request.id)
    published, staged = event(), entry()
    unit.put_state("k", b"mine", expected_version=1)
    if outcome == "app_write_failed":
        await app.insert_failing(unit)
    else:
        await app.insert(unit, "cart", "apple")
    unit.send([out])
    unit.publish([published])
    unit.append_stream([staged])
    if outcome == "fenced_out":
        await storage.runners.release(RUNNER_A, [S1])
        await storage.runners.acquire(RUNNER_B, [S1])
    refusal = {"app_write_failed": EntityError, "version_conflict": VersionConflict,
               "fenced_out": FencedOut}.get(outcome)
    if refusal is None:
        await unit.commit(Reply(request.id, b"ok"))
    else:
        with pytest.raises(refusal):
            await unit.commit(Reply(request.id, b"ok"))

    kept = outcome == "committed"
    assert [i.id for i in await items_of(storage)] == ([staged.id] if kept else [])
    assert (await storage.messages.get(out.id) is not None) is kept
    assert (await storage.events.get(published.id) is not None) is kept
    assert await app.rows() == ([("cart", "apple")] if kept else [])
    assert (await storage.state.get("k") == Versioned(b"mine", 2)) is kept
    assert (request.id in await storage.messages.replies_for([request.id])) is kept


async def test_a_malformed_entry_fails_when_staged_and_stages_nothing(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    problems = []
    for field, batch in BAD:
        try:
            unit.append_stream(batch)
        except ClusterError as exc:
            if exc.reason is not Reason.INVALID_ARGUMENT or exc.details.get("field") != field:
                problems.append(f"{field}: {exc!r} {exc.details}")
        else:
            problems.append(f"{field}: accepted")
        if unit.used:
            problems.append(f"{field}: staged something")
    assert problems == []
    unit.append_stream([GOOD])  # the unit still works, and stored only the good entry
    await unit.commit(Reply(request.id, b"ok"))
    assert [(i.id, i.payload) for i in await items_of(storage)] == [(GOOD.id, GOOD.payload)]


# ---- PostgreSQL: the head locks of a commit ------------------------------


@pytest.fixture
async def pg(namespace: Namespace) -> AsyncIterator[list[asyncpg.Connection]]:
    """Connections opened by the test (closed after it)."""
    opened: list[asyncpg.Connection] = []
    yield opened
    for conn in opened:
        await conn.close()


async def _in_transaction(namespace: Namespace,
                          opened: list[asyncpg.Connection]) -> asyncpg.Connection:
    conn = await asyncpg.connect(namespace.url)
    opened.append(conn)
    await conn.execute("BEGIN")
    return conn


async def _a_commit_waits_for_the_head(namespace: Namespace, holder: asyncpg.Connection) -> None:
    """Until another backend waits for a lock on this schema's stream heads."""
    admin = await asyncpg.connect(namespace.url)
    query = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
             " AND pid <> $1 AND query LIKE '%' || $2 || '%stream_heads%'")

    async def waiting() -> bool:
        return bool(await admin.fetchval(query, holder.get_server_pid(), namespace.schema))

    try:
        await until(waiting, timeout=20)
    finally:
        await admin.close()


@postgres_only
async def test_postgres_a_commit_waits_for_an_open_appender_and_numbers_after_it(
        storage: Storage, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    streams: Any = storage.streams
    holder = await _in_transaction(namespace, pg)
    [held] = await streams.append_in(holder, [entry()], now=1.0)  # holds the head
    unit, request = await stored_unit(storage)
    mine = entry()
    unit.append_stream([mine])
    commit = asyncio.ensure_future(unit.commit(Reply(request.id, b"ok")))
    await _a_commit_waits_for_the_head(namespace, holder)
    assert not commit.done() and await items_of(storage) == []
    await holder.execute("COMMIT")
    await asyncio.wait_for(commit, timeout=20)
    assert [(i.id, i.position) for i in await items_of(storage)] == [(held.id, 1), (mine.id, 2)]


@postgres_only
async def test_postgres_a_commit_racing_a_retry_of_its_id_stores_it_once(
        storage: Storage, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    streams: Any = storage.streams
    holder = await _in_transaction(namespace, pg)
    published = entry(payload=b"first")
    [stored] = await streams.append_in(holder, [published], now=1.0)
    unit, request = await stored_unit(storage)
    other = entry()
    # the commit does not see the uncommitted copy, moves the head and waits for it
    unit.append_stream([replace(published, payload=b"retry"), other])
    commit = asyncio.ensure_future(unit.commit(Reply(request.id, b"ok")))
    await _a_commit_waits_for_the_head(namespace, holder)
    await holder.execute("COMMIT")
    await asyncio.wait_for(commit, timeout=20)  # found the copy on insert, ran again
    head, items = await streams.read("orders", 0)
    assert head is not None and head.last == 2
    assert [(i.id, i.position, i.payload) for i in items] == [
        (stored.id, 1, b"first"), (other.id, 2, b"item")]


@postgres_only
async def test_postgres_a_live_unit_appends_on_its_own_connection(storage: Storage) -> None:
    unit, request = await stored_unit(storage)
    tx = await unit.transaction()
    assert await tx.fetchval("SELECT 1") == 1  # the unit holds its connection now
    unit.append_stream([staged := entry()])
    await unit.commit(Reply(request.id, b"ok"))
    assert [(i.id, i.position) for i in await items_of(storage)] == [(staged.id, 1)]
