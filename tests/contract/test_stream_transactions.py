"""Stream appends inside transactions, concurrent appenders, and storage faults.

``append_in`` stores through the application's own connection: the items exist
only if it commits. On PostgreSQL an appender holds its stream's head until it
commits, so positions follow commit order and a reader that keeps
``after = last`` never skips an item that committed late; heads are locked in key
order, so appenders of several streams never deadlock; a retry racing the
first copy of an id ends with one item and no burned position.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from covey.core import ClusterError, Reason, StorageError, StorageOptions, TestClock
from covey.storage import Reply, StreamEntry, StreamStore, TransactionalStreams
from covey.storage.sqlite import SqliteStorage, _connection
from tests.unit._waiting import until

from ._units import stored_unit
from .conftest import Namespace

_ids = itertools.count(8_000_001)

sql_only = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
postgres_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


def entry(stream: str = "orders", **fields: Any) -> StreamEntry:
    return StreamEntry(stream=stream, id=fields.pop("id", None) or next(_ids),
                       payload=fields.pop("payload", b"item"), **fields)


@pytest.fixture
def streams(storage: Any) -> Any:
    store = storage.streams
    assert isinstance(store, StreamStore)
    return store


@pytest.fixture
async def pg(namespace: Namespace) -> AsyncIterator[list[asyncpg.Connection]]:
    """Connections opened by the test (closed after it)."""
    opened: list[asyncpg.Connection] = []
    yield opened
    for conn in opened:
        await conn.close()


async def connect(namespace: Namespace, opened: list[asyncpg.Connection],
                  begin: bool = True) -> asyncpg.Connection:
    conn = await asyncpg.connect(namespace.url, server_settings={"search_path": namespace.schema})
    opened.append(conn)
    if begin:
        await conn.execute("BEGIN")
    return conn


async def waiting_for_a_lock(admin: asyncpg.Connection, conn: asyncpg.Connection) -> None:
    """Until ``conn``'s backend waits for a lock (another transaction holds a head)."""
    pid = conn.get_server_pid()
    query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1"
    await until(lambda: _is_lock(admin.fetchval(query, pid)), timeout=20)


async def _is_lock(wait: Any) -> bool:
    return (await wait) == "Lock"


@sql_only
@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
async def test_append_in_the_applications_transaction(
        streams: Any, namespace: Namespace, commit: bool,
        pg: list[asyncpg.Connection]) -> None:
    assert isinstance(streams, TransactionalStreams)
    conn: Any
    if namespace.backend == "postgres":
        conn = await connect(namespace, pg)
    else:
        conn = sqlite3.connect(namespace.path, timeout=10, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    try:
        items = await streams.append_in(conn, [entry(), entry()], now=5.0)
        assert [i.position for i in items] == [1, 2]
        # a retry inside the same transaction finds its own rows
        assert await streams.append_in(conn, [entry(id=items[0].id)], now=6.0) == [items[0]]
    finally:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("COMMIT" if commit else "ROLLBACK")
            conn.close()
        else:
            await conn.execute("COMMIT" if commit else "ROLLBACK")
    head, stored = await streams.read("orders", 0)
    assert stored == (items if commit else [])
    assert (head is not None) is commit
    with pytest.raises(ClusterError) as info:
        await streams.append_in(object(), [entry()], now=1.0)
    assert info.value.details["field"] == "connection"


@postgres_only
@pytest.mark.parametrize("commit", [True, False], ids=["commit", "discard"])
async def test_postgres_append_in_a_unit_of_work(storage: Any, streams: Any,
                                                 commit: bool) -> None:
    unit, request = await stored_unit(storage)
    items = await streams.append_in(await unit.transaction(), [entry(), entry()], now=1.0)
    assert [i.position for i in items] == [1, 2]
    assert await streams.read("orders", 0) == (None, [])  # not before the unit commits
    if commit:
        await unit.commit(Reply(request.id, b"done"))
    else:
        await unit.discard()
    _, stored = await streams.read("orders", 0)
    assert stored == (items if commit else [])


@postgres_only
async def test_postgres_append_in_needs_an_open_transaction(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    idle = await connect(namespace, pg, begin=False)
    with pytest.raises(ClusterError) as info:
        await streams.append_in(idle, [entry()], now=1.0)
    assert info.value.reason is Reason.INVALID_ARGUMENT
    assert info.value.details["field"] == "connection"
    assert await streams.stream_stats() == (0, 0)


@postgres_only
async def test_postgres_positions_follow_commit_order(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    admin = await connect(namespace, pg, begin=False)
    a, b = await connect(namespace, pg), await connect(namespace, pg)
    [first] = await streams.append_in(a, [entry()], now=1.0)  # A holds the head
    second_task = asyncio.ensure_future(streams.append_in(b, [entry()], now=2.0))
    await waiting_for_a_lock(admin, b)  # B started after A, and waits for A's commit
    assert await streams.read("orders", 0) == (None, [])  # nothing committed yet
    await a.execute("COMMIT")
    [second] = await second_task
    assert (first.position, second.position) == (1, 2) and first.epoch == second.epoch
    # a reader now sees A's item; B commits later with the next position: nothing skipped
    _, seen = await streams.read("orders", 0)
    assert seen == [first]
    await b.execute("COMMIT")
    _, seen = await streams.read("orders", first.position)
    assert seen == [second]


@postgres_only
async def test_postgres_a_reader_never_skips_under_concurrent_appenders(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    writers = [await connect(namespace, pg, begin=False) for _ in range(6)]
    rounds = 15
    total = len(writers) * rounds * 2

    async def write(conn: asyncpg.Connection) -> None:
        for _ in range(rounds):
            async with conn.transaction():
                await streams.append_in(conn, [entry(), entry()], now=1.0)
                await asyncio.sleep(random.random() / 500)  # commit a little later

    seen: list[int] = []
    last = 0

    async def read() -> None:
        nonlocal last
        while len(seen) < total:
            _, items = await streams.read("orders", last, limit=7)
            for item in items:
                assert item.position == last + 1, f"skipped from {last} to {item.position}"
                seen.append(item.position)
                last = item.position
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(read(), *(write(w) for w in writers)), timeout=60)
    assert seen == list(range(1, total + 1))


@postgres_only
async def test_postgres_heads_are_locked_in_key_order(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    admin = await connect(namespace, pg, begin=False)
    a, b = await connect(namespace, pg), await connect(namespace, pg)
    await streams.append_in(a, [entry("x")], now=1.0)
    # B appends to y then x: it locks x first (key order) and waits there, holding no y
    both = asyncio.ensure_future(streams.append_in(b, [entry("y"), entry("x")], now=2.0))
    await waiting_for_a_lock(admin, b)
    # so A can still take y: no deadlock
    [y] = await asyncio.wait_for(streams.append_in(a, [entry("y")], now=1.0), timeout=20)
    await a.execute("COMMIT")
    later = await both
    await b.execute("COMMIT")
    assert y.position == 1 and [(i.stream, i.position) for i in later] == [("y", 2), ("x", 2)]


@postgres_only
async def test_postgres_a_retry_racing_the_first_copy_burns_no_position(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    admin = await connect(namespace, pg, begin=False)
    a, b = await connect(namespace, pg), await connect(namespace, pg)
    published = entry(payload=b"first")
    [stored] = await streams.append_in(a, [published], now=1.0)
    # B does not see A's uncommitted row, moves the head and waits for A's lock
    retry = asyncio.ensure_future(streams.append_in(
        b, [StreamEntry(published.stream, published.id, b"retry"), entry()], now=2.0))
    await waiting_for_a_lock(admin, b)
    await a.execute("COMMIT")
    again, other = await retry  # B found A's row on insert, undid its savepoint, ran again
    await b.execute("COMMIT")
    assert again == stored and other.position == 2
    head, items = await streams.read("orders", 0)
    assert head is not None and head.last == 2 and items == [stored, other]


@postgres_only
async def test_postgres_trim_skips_a_stream_being_appended_to(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    await streams.append([entry("busy", published_at=30.0) for _ in range(2)], now=10.0)
    await streams.append([entry("idle")], now=10.0)
    appender = await connect(namespace, pg)
    [late] = await streams.append_in(appender, [entry("busy", published_at=30.0)], now=50.0)
    # both heads look idle (updated at 10) to the trim, but "busy" is held: skipped,
    # not waited for
    assert await asyncio.wait_for(streams.trim(keep=100, before=20.0), timeout=20) == 2
    await appender.execute("COMMIT")
    head, items = await streams.read("busy", 0)
    assert head is not None and (head.epoch, head.last) == (late.epoch, 3)
    assert [i.position for i in items] == [1, 2, 3]
    assert set(await streams.heads(["busy", "idle"])) == {"busy"}


@postgres_only
async def test_postgres_a_lost_connection_is_storage_unavailable(
        storage: Any, streams: Any, namespace: Namespace,
        pg: list[asyncpg.Connection]) -> None:
    admin = await connect(namespace, pg, begin=False)
    holder = await connect(namespace, pg)
    await streams.append_in(holder, [entry()], now=1.0)  # holds the head
    blocked = asyncio.ensure_future(streams.append([entry()], now=2.0))
    query = ("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
             " AND query LIKE '%stream_heads%' AND pid <> $1")
    await until(lambda: _is_pid(admin.fetchval(query, holder.get_server_pid())), timeout=20)
    await admin.execute("SELECT pg_terminate_backend($1)",
                        await admin.fetchval(query, holder.get_server_pid()))
    with pytest.raises(StorageError) as info:
        await blocked
    assert info.value.reason is Reason.STORAGE_UNAVAILABLE and info.value.retryable
    await holder.execute("ROLLBACK")
    # the pool connects again: the next append works
    assert [i.position for i in await streams.append([entry()], now=3.0)] == [1]


async def _is_pid(value: Any) -> bool:
    return (await value) is not None


@sql_only
async def test_a_corrupt_stored_row_is_storage_corrupt(
        streams: Any, namespace: Namespace, pg: list[asyncpg.Connection]) -> None:
    await streams.append([entry()], now=1.0)
    sql = "UPDATE {t} SET headers = 'not json'"
    if namespace.backend == "postgres":
        conn = await connect(namespace, pg, begin=False)
        await conn.execute(sql.format(t="stream_items"))
    else:
        with sqlite3.connect(namespace.path) as lite:
            lite.execute(sql.format(t="covey_stream_items"))
        lite.close()
    with pytest.raises(StorageError) as info:
        await streams.read("orders", 0)
    assert info.value.reason is Reason.STORAGE_CORRUPT
    assert info.value.details["stream"] == "orders" and info.value.details["position"] == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_a_held_lock_ends_in_storage_unavailable(
        namespace: Namespace, monkeypatch: pytest.MonkeyPatch, clock: TestClock) -> None:
    monkeypatch.setattr(_connection, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(_connection, "_BACKOFF", 0.01)
    async with SqliteStorage(str(namespace.path), shards=8, options=StorageOptions(),
                             clock=clock) as store:
        blocker = sqlite3.connect(namespace.path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            for call in (store.streams.append([entry()], now=1.0),
                         store.streams.trim(keep=1, before=1.0)):
                with pytest.raises(StorageError) as info:
                    await call
                assert info.value.reason is Reason.STORAGE_UNAVAILABLE
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert [i.position for i in await store.streams.append([entry()], now=2.0)] == [1]
