"""The one SQLite connection of a storage instance and its transactions."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from covey.core import ClusterError, Reason, StorageError

T = TypeVar("T")

Params = Sequence[Any]

#: How long SQLite itself waits for another process's write lock before it
#: reports "database is locked".
BUSY_TIMEOUT_MS = 10_000
#: Whole-transaction retries after SQLite gave up waiting, with backoff.
LOCKED_ATTEMPTS = 4
_BACKOFF = 0.05

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "another connection holds the lock"."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def storage_error(exc: sqlite3.Error, path: str) -> StorageError:
    """A driver error as covey's :class:`StorageError` with the right reason."""
    text = str(exc).lower()
    corrupt = "malformed" in text or "not a database" in text or "corrupt" in text
    return StorageError(
        f"SQLite database {path}: {exc}",
        reason=Reason.STORAGE_CORRUPT if corrupt else Reason.STORAGE_UNAVAILABLE,
        location=path,
    )


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements.

    ``executescript`` would do this, but it commits any open transaction first,
    and migrations must run inside the ``BEGIN IMMEDIATE`` that serializes them.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            lines = [ln for ln in buffer.splitlines() if not ln.strip().startswith("--")]
            statement = "\n".join(lines).strip()
            if statement.strip(";").strip():
                statements.append(statement)
            buffer = ""
    return statements


async def fetchall(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> list[Any]:
    """Every row of a query."""
    async with conn.execute(sql, params) as cursor:
        return list(await cursor.fetchall())


async def fetchone(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> Any:
    """The first row of a query, or ``None``."""
    async with conn.execute(sql, params) as cursor:
        return await cursor.fetchone()


async def execute(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> int:
    """Run one statement; the number of rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return int(cursor.rowcount)


def placeholders(values: Iterable[object]) -> str:
    """``?, ?, ?`` for ``values``."""
    return ", ".join("?" for _ in values)


class SqliteDatabase:
    """One connection to the database file; every statement of the instance uses it.

    SQLite allows one writer at a time per file, so a second connection in the
    same process would only wait on the first. An :class:`asyncio.Lock` keeps
    coroutines from interleaving statements inside each other's transactions.

    Args:
        path: the database file; missing parent directories are created.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not run."""
        return self._conn is not None

    async def open(self) -> None:
        """Connect and set the pragmas.

        ``journal_mode=WAL`` lets readers run while one process writes.
        ``synchronous=NORMAL`` under WAL syncs only at checkpoints: a committed
        transaction survives the crash of any process (the WAL file is intact in
        the OS), only a power loss may drop the last commits. That is the failure
        model of several processes on one host; for more, use PostgreSQL.
        """
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the directory of SQLite database {self.path}: {exc}",
                    location=self.path,
                ) from exc
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, the driver
            # must not open deferred transactions behind our back.
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from exc
        try:
            await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from exc
            raise
        self._conn = conn

    async def close(self) -> None:
        """Disconnect (waits for a running transaction)."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    await conn.close()

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError(f"SQLite storage {self.path} is not started (or closed)")
        return self._conn

    async def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

        IMMEDIATE takes the write lock up front, so concurrent processes queue
        on ``busy_timeout`` instead of failing when a read would upgrade to a
        write. If SQLite still reports the database locked, the whole
        transaction is retried a few times, then ``storage_unavailable`` is
        raised. Any other exception rolls back and propagates.
        """
        for attempt in range(LOCKED_ATTEMPTS):
            async with self._lock:
                conn = self._require()
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    result = await fn(conn)
                    await conn.execute("COMMIT")
                    return result
                except BaseException as exc:
                    await _rollback(conn)
                    if not isinstance(exc, sqlite3.Error):
                        raise
                    if not is_locked(exc) or attempt == LOCKED_ATTEMPTS - 1:
                        raise storage_error(exc, self.path) from exc
            # Real time, not the storage clock: this waits for another process,
            # and a test clock that nobody advances would wait forever.
            await asyncio.sleep(_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run read-only ``fn`` on the connection, between transactions."""
        async with self._lock:
            conn = self._require()
            try:
                return await fn(conn)
            except sqlite3.Error as exc:
                raise storage_error(exc, self.path) from exc

    async def _retry_locked(self, step: Callable[[], Awaitable[object]]) -> None:
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                await step()
                return
            except sqlite3.OperationalError as exc:
                if not is_locked(exc) or attempt == LOCKED_ATTEMPTS - 1:
                    raise
            await asyncio.sleep(_BACKOFF * 2**attempt)


async def _rollback(conn: aiosqlite.Connection) -> None:
    # Unconditionally: after a cancellation the BEGIN may still be queued on the
    # driver's thread, so ``in_transaction`` can read False too early. Statements
    # run in order, so this ROLLBACK lands after it; "no transaction is active"
    # is harmless.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.execute("ROLLBACK")


async def in_savepoint(
    conn: aiosqlite.Connection, fn: Callable[[aiosqlite.Connection], Awaitable[T]], path: str
) -> T | BaseException:
    """Run ``fn`` inside a savepoint; on failure undo just its writes.

    Group commit runs many callers' writes in one transaction: one caller's
    refused write (a fence, a version conflict) must not undo the others.
    Returns the result, or the exception as a value.
    """
    await conn.execute("SAVEPOINT covey_op")
    try:
        result = await fn(conn)
    except (ClusterError, sqlite3.Error) as exc:
        await conn.execute("ROLLBACK TO covey_op")
        await conn.execute("RELEASE covey_op")
        if isinstance(exc, sqlite3.Error):
            if is_locked(exc):
                raise  # the whole transaction retries
            return storage_error(exc, path)
        return exc
    await conn.execute("RELEASE covey_op")
    return result
