"""UnitOfWork on PostgreSQL: staged writes, shared commits, and the unit at fault failing alone.

Units whose handle stayed staged commit through group commit, many in one
transaction; these tests make that happen (a batch wait long enough for every
unit to join) and check that a unit refused inside a shared transaction (a
failing statement, bad arguments, a stale fence, a state conflict) fails alone
while every other unit commits whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from covey.core import ClusterError, EntityError, Reason
from covey.storage import Fence, Reply, Storage

from ._helpers import msg
from ._units import AppTable, owned, stored_unit
from .conftest import MakeStorage, Namespace

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)


@pytest.fixture
async def batched(make_storage: MakeStorage) -> Storage:
    """A store whose group commit waits long enough for concurrent units to share it."""
    return await make_storage(batch_max_wait=0.05)


@pytest.fixture
async def app(namespace: Namespace, batched: Storage) -> AppTable:
    table = AppTable(namespace, batched)
    await table.create()
    return table


async def commit_all(storage: Storage, units: list[Any], ids: list[int]) -> list[object]:
    """Commit every unit at once; the outcome of each (``None`` or its exception)."""
    outcomes = await asyncio.gather(
        *(unit.commit(Reply(i, f"r{i}".encode())) for unit, i in zip(units, ids, strict=True)),
        return_exceptions=True)
    return list(outcomes)


async def one_unit(storage: Storage) -> tuple[Any, Any, Any]:
    """A stored request of the owned shard, its unit and the unit's handle."""
    unit, request = await stored_unit(storage)
    return unit, await unit.transaction(), request


async def replies(storage: Storage, ids: list[int]) -> dict[int, bytes | None]:
    records = await storage.messages.inspect(ids)
    return {i: None if r.reply is None else r.reply.payload for i, r in records.items()}


async def test_units_that_finish_together_share_one_transaction(
    batched: Storage, app: AppTable,
) -> None:
    fence = await owned(batched)
    requests = [msg() for _ in range(20)]
    await batched.messages.save_requests(requests)
    ids = [r.id for r in requests]
    units = []
    for n, i in enumerate(ids):
        unit = batched.messages.unit(fence, i)
        tx = await unit.transaction()
        await tx.execute(f"INSERT INTO {app.table} (entity, item) VALUES ($1, $2)", "e", str(n))
        await tx.executemany(f"INSERT INTO {app.table} (entity, item) VALUES ($1, $2)",
                             [("many", f"{n}a"), ("many", f"{n}b")])
        unit.put_state(f"k{n}", b"v", expected_version=None)
        units.append(unit)
    before = batched.batcher.batches  # type: ignore[attr-defined]
    assert await commit_all(batched, units, ids) == [None] * 20
    flushes = batched.batcher.batches - before  # type: ignore[attr-defined]
    assert flushes < 20  # shared: fewer transactions than units
    rows = await app.rows()
    assert len(rows) == 60 and len(set(rows)) == 60
    assert None not in [await batched.state.get(f"k{n}") for n in range(20)]
    assert await replies(batched, ids) == {i: f"r{i}".encode() for i in ids}


@pytest.mark.parametrize("fault", ["missing table", "bad argument", "stale fence",
                                   "state conflict"])
async def test_the_unit_at_fault_fails_alone(
    batched: Storage, app: AppTable, fault: str,
) -> None:
    fence = await owned(batched)
    requests = [msg() for _ in range(8)]
    await batched.messages.save_requests(requests)
    ids = [r.id for r in requests]
    units = []
    for n, i in enumerate(ids):
        faulty = n == 3
        unit = batched.messages.unit(
            Fence(fence.shard, fence.epoch + 1) if faulty and fault == "stale fence" else fence, i)
        tx = await unit.transaction()
        if faulty and fault == "missing table":
            await tx.execute("INSERT INTO no_such_table (x) VALUES (1)")
        elif faulty and fault == "bad argument":  # asyncpg refuses it before the server
            await tx.execute(f"INSERT INTO {app.table} (entity, item) VALUES ($1, $2)", "e", 5)
        else:
            await tx.execute(f"INSERT INTO {app.table} (entity, item) VALUES ($1, $2)",
                             "e", str(n))
        unit.put_state(f"k{n}", b"v", expected_version=7 if faulty and fault == "state conflict"
                       else None)
        units.append(unit)
    before = batched.batcher.batches  # type: ignore[attr-defined]
    outcomes = await commit_all(batched, units, ids)
    # the unit at fault was split off inside the flush, not by group commit
    # flushing every op of the batch again on its own
    assert batched.batcher.batches - before < 8  # type: ignore[attr-defined]
    failed = outcomes[3]
    assert [o for n, o in enumerate(outcomes) if n != 3] == [None] * 7
    assert isinstance(failed, ClusterError)
    if fault in ("missing table", "bad argument"):
        assert isinstance(failed, EntityError) and failed.reason is Reason.HANDLER_FAILED
        assert "INSERT INTO" in failed.details["sql"]
    elif fault == "stale fence":
        assert failed.reason is Reason.FENCED
    else:
        assert failed.reason is Reason.VERSION_CONFLICT
    assert sorted(item for _, item in await app.rows()) == [str(n) for n in range(8) if n != 3]
    assert await batched.state.get("k3") is None
    stored = await replies(batched, ids)
    assert stored[ids[3]] is None
    assert all(stored[i] == f"r{i}".encode() for n, i in enumerate(ids) if n != 3)


async def test_a_read_turns_the_handle_live_and_sees_the_staged_writes(
    batched: Storage, app: AppTable,
) -> None:
    unit, tx, request = await one_unit(batched)
    await tx.execute(f"INSERT INTO {app.table} (entity, item) VALUES ('e', 'a')")
    assert not tx.live and await app.rows() == []
    assert await tx.fetchval(f"SELECT count(*) FROM {app.table}") == 1
    assert tx.live
    await tx.execute(f"INSERT INTO {app.table} (entity, item) VALUES ('e', 'b')")  # at once
    rows = await tx.fetch(f"SELECT item FROM {app.table} ORDER BY item")
    assert [r["item"] for r in rows] == ["a", "b"]
    assert (await tx.fetchrow(f"SELECT count(*) AS n FROM {app.table}"))["n"] == 2
    assert await app.rows() == []  # nobody else sees them before the commit
    await unit.commit(Reply(request.id, b"r"))
    assert await app.rows() == [("e", "a"), ("e", "b")]


async def test_a_staged_statement_that_fails_surfaces_at_the_first_read(
    batched: Storage, app: AppTable,
) -> None:
    unit, tx, request = await one_unit(batched)
    await tx.execute("INSERT INTO no_such_table (x) VALUES (1)")
    with pytest.raises(EntityError) as info:
        await tx.fetchval("SELECT 1")
    assert info.value.reason is Reason.HANDLER_FAILED
    assert info.value.details["sql"] == "INSERT INTO no_such_table (x) VALUES (1)"
    with pytest.raises(EntityError):
        await unit.commit(Reply(request.id, b"r"))  # the transaction is aborted
    assert (await replies(batched, [request.id]))[request.id] is None


@pytest.mark.parametrize("sql", [
    "BEGIN", "commit", "  -- a comment\n ROLLBACK", "/* x */ SAVEPOINT a",
    "RELEASE SAVEPOINT a", "START TRANSACTION", "END", "ABORT", "PREPARE TRANSACTION 'x'",
    "SET search_path TO elsewhere", "set session lock_timeout = 1", "RESET ALL",
    "DISCARD ALL", "LISTEN x", "", "   ", 42, None,
])
async def test_statements_that_would_break_the_shared_transaction_are_refused(
    batched: Storage, sql: object,
) -> None:
    unit, tx, request = await one_unit(batched)
    for stage in (lambda: tx.execute(sql), lambda: tx.executemany(sql, [()])):
        with pytest.raises(ClusterError) as info:
            await stage()
        assert info.value.reason is Reason.INVALID_ARGUMENT
        assert info.value.details["field"] == "sql"
    assert tx.staged == []
    await unit.commit(Reply(request.id, b"r"))  # the unit is still good


async def test_set_local_and_ordinary_statements_are_staged(
    batched: Storage, app: AppTable,
) -> None:
    unit, tx, request = await one_unit(batched)
    await tx.execute("SET LOCAL lock_timeout = '2s'")
    await tx.execute(f"WITH x AS (SELECT 1) INSERT INTO {app.table} VALUES ('e', 'with')")
    await tx.execute("(SELECT 1)")  # a read staged as a write is harmless
    await unit.commit(Reply(request.id, b"r"))
    assert await app.rows() == [("e", "with")]


@pytest.mark.parametrize("rows", ["ab", b"ab", 5, [1, 2], ["ab"], None])
async def test_executemany_needs_rows_of_arguments(batched: Storage, rows: object) -> None:
    unit, tx, _ = await one_unit(batched)
    with pytest.raises(ClusterError) as info:
        await tx.executemany("INSERT INTO t VALUES ($1)", rows)  # type: ignore[arg-type]
    assert info.value.details["field"] == "args"
    await unit.discard()
