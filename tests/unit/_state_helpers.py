"""What the durable-state tests share: backends, an app table, a crash before the commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covey.core import StorageError
from covey.storage import Reply, Storage, UnitOfWork
from covey.storage.memory import MemoryTransaction
from covey.storage.sqlite import SqliteTransaction
from covey.testing import TestCluster

#: rows of the memory backend's stand-in "app table" (no unique constraint anywhere)
MEMORY_AUDIT: list[tuple[str, str]] = []


class Backend:
    """One backend under test: its TestCluster and its application table ``audit``."""

    def __init__(self, name: str, tmp_path: Path) -> None:
        self.name = name
        self.path = tmp_path / "c.db"
        self.url = "memory://" if name == "memory" else f"sqlite:///{self.path}"
        MEMORY_AUDIT.clear()
        if name == "sqlite":
            with sqlite3.connect(self.path) as conn:  # no unique constraint: duplicates show
                conn.execute("CREATE TABLE audit(cart TEXT, item TEXT)")
            conn.close()

    def cluster(self, *types: type[Any], **options: Any) -> TestCluster:
        return TestCluster(*types, database_url=self.url, **options)

    def audit(self) -> list[tuple[str, str]]:
        """The application table's rows, as committed."""
        if self.name == "memory":
            return list(MEMORY_AUDIT)
        conn = sqlite3.connect(self.path)
        try:
            return [tuple(r) for r in conn.execute("SELECT cart, item FROM audit ORDER BY rowid")]
        finally:
            conn.close()


async def write_audit(tx: Any, cart: str, item: str, *, table: str = "audit") -> None:
    """One app-table row through ``ctx.transaction`` (memory stand-in or SQLite)."""
    if isinstance(tx, MemoryTransaction):
        if table != "audit":
            def broken() -> None:
                raise RuntimeError(f"no such table: {table}")
            tx.on_commit(broken)
        else:
            tx.on_commit(lambda: MEMORY_AUDIT.append((cart, item)))
    elif isinstance(tx, SqliteTransaction):
        await tx.execute(f"INSERT INTO {table}(cart, item) VALUES (?, ?)", cart, item)
    else:  # PostgreSQL: an asyncpg connection inside covey's transaction
        await tx.execute(f"INSERT INTO {table}(cart, item) VALUES ($1, $2)", cart, item)


def _wrap_units_until_reached(
    storage: Storage, wrapper: Callable[[UnitOfWork, asyncio.Event], Any]
) -> asyncio.Event:
    """Wrap the units ``storage`` makes until the returned event is set."""
    reached = asyncio.Event()
    messages = storage.messages
    real = messages.unit

    def unit(fence: Any, request_id: int) -> Any:
        made = real(fence, request_id)
        return made if reached.is_set() else wrapper(made, reached)

    messages.unit = unit  # type: ignore[method-assign]
    return reached


class _CommitNeverReturns:
    """A unit whose commit hangs before writing anything: its runner 'dies' there."""

    def __init__(self, unit: UnitOfWork, reached: asyncio.Event) -> None:
        self._unit = unit
        self._reached = reached

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unit, name)

    async def commit(self, reply: Reply) -> None:
        self._reached.set()
        await asyncio.Event().wait()


class CrashBeforeCommit:
    """Makes the next unit's commit on ``storage`` hang, so the test can kill its
    runner then (units made before it commit as usual)."""

    def __init__(self, storage: Storage) -> None:
        self.reached = _wrap_units_until_reached(storage, _CommitNeverReturns)


class _CommitOutcomeLost:
    """A unit whose commit goes through, but whose caller hears it failed (the
    connection dropped during COMMIT): the discard callbacks run, not the commit's."""

    def __init__(self, unit: UnitOfWork, reached: asyncio.Event) -> None:
        self._unit = unit
        self._reached = reached
        self._discarded: list[Callable[[], None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._unit, name)

    def on_commit(self, callback: Callable[[], None]) -> None:
        return None  # never told: the outcome was lost

    def on_discard(self, callback: Callable[[], None]) -> None:
        self._discarded.append(callback)

    async def commit(self, reply: Reply) -> None:
        await self._unit.commit(reply)
        self._reached.set()
        for callback in self._discarded:
            callback()
        raise StorageError("connection lost during COMMIT")


class LoseCommitOutcome:
    """Makes the next unit's commit on ``storage`` succeed but report a failure."""

    def __init__(self, storage: Storage) -> None:
        self.reached = _wrap_units_until_reached(storage, _CommitOutcomeLost)
