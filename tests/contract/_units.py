"""What the unit-of-work tests share: the application's own table, on every backend.

The table has **no** unique constraint, so a write applied twice would show as
two rows. Memory: a list the unit's ``MemoryTransaction.on_commit`` appends to.
SQLite: a table in the store's file (``SqliteStorage.execute_script``), written
by staged statements. PostgreSQL: a table in the test's schema, written on the
unit's connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg

from covey.core import RunnerAddress
from covey.storage import Fence, Message, Storage, UnitOfWork, Versioned
from covey.storage.memory import MemoryTransaction
from covey.storage.sqlite import SqliteStorage, SqliteTransaction

from ._helpers import RUNNER_A, S1, msg
from .conftest import Namespace


class AppTable:
    """``audit(entity, item)``: the application's rows, written through a unit."""

    def __init__(self, namespace: Namespace, storage: Storage) -> None:
        self.backend = namespace.backend
        self._ns = namespace
        self._storage = storage
        self._memory: list[tuple[str, str]] = []
        self.table = f'"{namespace.schema}".audit' if self.backend == "postgres" else "audit"

    async def create(self) -> None:
        ddl = f"CREATE TABLE {self.table} (entity text NOT NULL, item text NOT NULL)"
        if self.backend == "sqlite":
            assert isinstance(self._storage, SqliteStorage)
            await self._storage.execute_script(ddl)
        elif self.backend == "postgres":
            conn = await asyncpg.connect(self._ns.url)
            try:
                await conn.execute(ddl)
            finally:
                await conn.close()

    async def insert(self, unit: UnitOfWork, entity: str, item: str) -> None:
        """The handler's write: one row, committed with the unit or not at all."""
        tx = await unit.transaction()
        if self.backend == "memory":
            assert isinstance(tx, MemoryTransaction)
            tx.on_commit(lambda: self._memory.append((entity, item)))
        elif self.backend == "sqlite":
            assert isinstance(tx, SqliteTransaction)
            await tx.execute(f"INSERT INTO {self.table} (entity, item) VALUES (?, ?)",
                             entity, item)
        else:
            await tx.execute(f"INSERT INTO {self.table} (entity, item) VALUES ($1, $2)",
                             entity, item)

    async def insert_failing(self, unit: UnitOfWork) -> None:
        """A write of the application that fails (the handler goes on regardless)."""
        tx = await unit.transaction()
        if self.backend == "memory":
            def fail() -> None:
                raise ValueError("the application's write failed")

            tx.on_commit(fail)
        else:  # staged: it fails at the commit
            await tx.execute("INSERT INTO missing (x) VALUES (1)")

    async def rows(self) -> list[tuple[str, str]]:
        """Every committed row, sorted (duplicates kept)."""
        query = f"SELECT entity, item FROM {self.table}"
        if self.backend == "memory":
            return sorted(self._memory)
        if self.backend == "sqlite":
            conn = sqlite3.connect(self._ns.path)
            try:
                return sorted(conn.execute(query).fetchall())
            finally:
                conn.close()
        pg = await asyncpg.connect(self._ns.url)
        try:
            return sorted((r[0], r[1]) for r in await pg.fetch(query))
        finally:
            await pg.close()


async def owned(storage: Storage, runner: RunnerAddress = RUNNER_A) -> Fence:
    """``runner``'s fence for S1."""
    return Fence(S1, (await storage.runners.acquire(runner, [S1]))[S1])


async def stored_unit(storage: Storage) -> tuple[UnitOfWork, Message]:
    """A request saved in the owned shard S1 and a unit of work for it."""
    fence = await owned(storage)
    request = msg()
    await storage.messages.save_request(request)
    return storage.messages.unit(fence, request.id), request


async def stored(storage: Storage, app: AppTable, key: str,
                 ids: list[int]) -> tuple[Versioned | None, list[Any], dict[int, Any]]:
    """What a unit may have written: the state, the app rows, the messages."""
    records = await storage.messages.inspect(ids)
    return (await storage.state.get(key), await app.rows(),
            {i: (r.reply, r.message.payload) for i, r in records.items()})
