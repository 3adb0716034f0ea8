"""UnitOfWork on the SQL backends: what the application's handle may do.

SQLite stages the application's statements and runs them inside the commit;
PostgreSQL hands out a pooled connection inside covey's transaction.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from covey.core import ClusterError, EntityError, Reason, StorageError
from covey.storage import Reply, Storage
from covey.storage.sqlite import SqliteStorage, SqliteTransaction

from ._helpers import S2, msg
from ._units import AppTable, owned, stored_unit
from .conftest import MakeStorage, Namespace

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
postgres_only = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
async def app(namespace: Namespace, storage: Storage) -> AppTable:
    table = AppTable(namespace, storage)
    await table.create()
    return table


# ---- SQLite -------------------------------------------------------------------------


@sqlite_only
async def test_sqlite_reads_see_committed_rows_only(storage: Storage, app: AppTable) -> None:
    fence = await owned(storage)
    first, second = msg(), msg()
    await storage.messages.save_requests([first, second])
    unit = storage.messages.unit(fence, first.id)
    tx = await unit.transaction()
    assert isinstance(tx, SqliteTransaction)
    await tx.execute("INSERT INTO audit (entity, item) VALUES (:e, :i)", {"e": "e1", "i": "a"})
    await tx.executemany("INSERT INTO audit (entity, item) VALUES (?, ?)",
                         iter([("e1", "b"), ("e1", "c")]))
    assert await tx.fetchval("SELECT count(*) FROM audit") == 0  # staged, not committed
    await unit.commit(Reply(first.id, b"r"))

    reader = await storage.messages.unit(fence, second.id).transaction()
    assert await reader.fetch("SELECT item FROM audit ORDER BY item") == [("a",), ("b",), ("c",)]
    assert await reader.fetchrow("SELECT item FROM audit WHERE item = ?", "b") == ("b",)
    assert await reader.fetchrow("SELECT item FROM audit WHERE item = ?", "z") is None
    assert await reader.fetchval("SELECT count(*) FROM covey_messages") == 2  # reading is fine


@sqlite_only
@pytest.mark.parametrize("sql", [
    "COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT mine", "RELEASE covey_op",
    "PRAGMA foreign_keys = OFF", "ATTACH ':memory:' AS other",
    "DELETE FROM covey_messages", "UPDATE covey_state SET value = x'00'",
    "DROP TABLE covey_runners", "CREATE TRIGGER t AFTER INSERT ON covey_messages BEGIN"
    " DELETE FROM covey_state; END",
])
async def test_sqlite_statements_that_would_break_the_unit_are_refused(
    storage: Storage, app: AppTable, sql: str,
) -> None:
    fence = await owned(storage)
    request = msg()
    await storage.messages.save_request(request)
    await storage.state.set("k", b"v", expected_version=None)
    unit = storage.messages.unit(fence, request.id)
    await app.insert(unit, "e1", "before")
    await (await unit.transaction()).execute(sql)
    with pytest.raises(EntityError) as info:
        await unit.commit(Reply(request.id, b"r"))
    assert info.value.reason is Reason.HANDLER_FAILED and info.value.details["sql"] == sql
    assert await app.rows() == []
    assert (await storage.messages.inspect([request.id]))[request.id].reply is None
    assert (await storage.state.get("k")) is not None
    # the connection is still usable: the next unit commits
    again = storage.messages.unit(fence, request.id)
    await app.insert(again, "e1", "after")
    await again.commit(Reply(request.id, b"r"))
    assert await app.rows() == [("e1", "after")]


@sqlite_only
async def test_sqlite_reads_may_only_read(storage: Storage, app: AppTable) -> None:
    fence = await owned(storage)
    first, second = msg(), msg()
    await storage.messages.save_requests([first, second])
    unit = storage.messages.unit(fence, first.id)
    await app.insert(unit, "e1", "a")
    await unit.commit(Reply(first.id, b"r"))
    tx = await storage.messages.unit(fence, second.id).transaction()
    for sql in ("DELETE FROM audit", "INSERT INTO audit VALUES ('x', 'y')", "BEGIN",
                "PRAGMA query_only = 0"):
        with pytest.raises(EntityError) as info:
            await tx.fetch(sql)
        assert info.value.details["sql"] == sql
    with pytest.raises(ClusterError) as bad:
        await tx.execute(b"SELECT 1")  # type: ignore[arg-type]
    assert bad.value.details["field"] == "sql"
    assert await app.rows() == [("e1", "a")]


@sqlite_only
async def test_sqlite_application_ddl_runs_whole_or_not_at_all(storage: Storage) -> None:
    assert isinstance(storage, SqliteStorage)
    await storage.execute_script("CREATE TABLE IF NOT EXISTS a (x); CREATE INDEX ax ON a (x);")
    with pytest.raises(ClusterError) as info:
        await storage.execute_script("CREATE TABLE b (x); CREATE TABLE a (y);")
    assert info.value.reason is Reason.INVALID_ARGUMENT and info.value.details["field"] == "sql"
    for refused in ("DROP TABLE covey_messages", "COMMIT"):
        with pytest.raises(ClusterError):
            await storage.execute_script(refused)
    fence = await owned(storage)
    request = msg()
    await storage.messages.save_request(request)
    tx = await storage.messages.unit(fence, request.id).transaction()
    tables = await tx.fetch("SELECT name FROM sqlite_master WHERE name IN ('a', 'b')")
    assert tables == [("a",)]


# ---- PostgreSQL ---------------------------------------------------------------------


@postgres_only
async def test_postgres_the_live_handle_is_a_connection_inside_covey_transaction(
    storage: Storage, app: AppTable,
) -> None:
    unit, request = await stored_unit(storage)
    await app.insert(unit, "e1", "a")  # staged
    tx = await unit.transaction()
    assert not tx.live
    conn = await tx.connection()  # takes a connection and runs what was staged
    assert tx.live and conn.is_in_transaction()
    assert await conn.fetchval(f"SELECT count(*) FROM {app.table}") == 1  # its own writes
    assert await app.rows() == []  # nobody else's yet
    async with conn.transaction():  # a savepoint of the application's
        await app.insert(unit, "e1", "b")
    await unit.commit(Reply(request.id, b"r"))
    assert await app.rows() == [("e1", "a"), ("e1", "b")]


@postgres_only
async def test_postgres_a_lost_connection_writes_nothing(
    storage: Storage, app: AppTable, namespace: Namespace,
) -> None:
    unit, request = await stored_unit(storage)
    unit.put_state("k", b"v", expected_version=None)
    await app.insert(unit, "e1", "a")
    pid = (await (await unit.transaction()).connection()).get_server_pid()
    admin = await asyncpg.connect(namespace.url)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    with pytest.raises(StorageError) as info:
        await unit.commit(Reply(request.id, b"r"))
    assert info.value.reason is Reason.STORAGE_UNAVAILABLE and info.value.retryable
    assert await app.rows() == [] and await storage.state.get("k") is None
    assert (await storage.messages.inspect([request.id]))[request.id].reply is None


@postgres_only
async def test_postgres_an_application_that_ends_the_transaction_fails_the_unit(
    storage: Storage, app: AppTable,
) -> None:
    unit, request = await stored_unit(storage)
    await app.insert(unit, "e1", "a")
    await (await (await unit.transaction()).connection()).execute("ROLLBACK")
    with pytest.raises(EntityError) as info:
        await unit.commit(Reply(request.id, b"r"))
    assert info.value.reason is Reason.HANDLER_FAILED
    assert (await storage.messages.inspect([request.id]))[request.id].reply is None


@postgres_only
async def test_postgres_connections_go_back_to_the_pool_in_every_path(
    make_storage: MakeStorage, namespace: Namespace,
) -> None:
    storage = await make_storage(pool_size=1, connect_timeout=2.0)
    app = AppTable(namespace, storage)
    await app.create()
    fence = await owned(storage)
    requests = [msg() for _ in range(6)]
    await storage.messages.save_requests(requests)
    a, b, c, d, e, f = (r.id for r in requests)

    async def used(request_id: int) -> object:
        unit = storage.messages.unit(fence, request_id)
        await app.insert(unit, "e1", str(request_id))
        return unit

    await (await used(a)).commit(Reply(a, b"r"))  # type: ignore[attr-defined]
    await (await used(b)).discard()  # type: ignore[attr-defined]
    with pytest.raises(ClusterError):  # refused: already processed
        await (await used(a)).commit(Reply(a, b"r"))  # type: ignore[attr-defined]
    failing = storage.messages.unit(fence, c)
    await app.insert_failing(failing)
    with pytest.raises(EntityError):
        await failing.commit(Reply(c, b"r"))
    staged_only = storage.messages.unit(fence, d)
    staged_only.put_state("k", b"v", expected_version=None)
    await staged_only.commit(Reply(d, b"r"))  # a connection of its own, given back
    interrupted = await used(e)
    await (await interrupted.transaction()).connection()  # type: ignore[attr-defined]
    commit = asyncio.ensure_future(interrupted.commit(Reply(e, b"r")))  # type: ignore[attr-defined]
    await asyncio.sleep(0)  # the commit's first statement is on its way
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    await interrupted.discard()  # type: ignore[attr-defined]
    last = await used(f)  # the one connection is free again
    await last.commit(Reply(f, b"r"))  # type: ignore[attr-defined]
    assert [item for _, item in await app.rows()] == sorted([str(a), str(f)])


@postgres_only
async def test_postgres_outgoing_messages_wake_their_owners_at_commit(
    storage: Storage, namespace: Namespace,
) -> None:
    fence = await owned(storage)
    request, out = msg(), msg("e2", shard=S2)
    await storage.messages.save_request(request)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(namespace.url)
    try:
        await listener.add_listener(f"covey_{namespace.schema}",
                                    lambda *args: heard.put_nowait(args[3]))
        unit = storage.messages.unit(fence, request.id)
        unit.send([out])
        await unit.transaction()
        assert heard.empty()
        await unit.commit(Reply(request.id, b"r"))
        assert await asyncio.wait_for(heard.get(), 5) == "default:2"
    finally:
        await listener.close()
