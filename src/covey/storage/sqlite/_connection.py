"""The one SQLite connection of a storage instance, and its transactions.

The connection lives on one worker thread of its own, and every transaction
runs there as **one** function: ``BEGIN IMMEDIATE``, the statements and
``COMMIT`` make one hop from the event loop to the thread and back. With a
hop per statement, a transaction would wait for the event loop between its
statements, holding the file's write lock all that time; with several runners
in one event loop, transactions would stretch and heartbeats starve.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from covey.core import ClusterError, Reason, StorageError
from covey.storage._errors import not_started

T = TypeVar("T")

Params = Sequence[Any]
#: A transaction's (or a read's) body: runs on the connection's thread.
Work = Callable[[sqlite3.Connection], T]

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


def changed(conn: sqlite3.Connection, sql: str, params: Params = ()) -> int:
    """Run one statement; the number of rows it changed."""
    return conn.execute(sql, params).rowcount


def in_savepoint(conn: sqlite3.Connection, work: Work[T], path: str) -> T | BaseException:
    """Run ``work`` inside a savepoint; on failure undo just its writes.

    Group commit runs many callers' writes in one transaction: one caller's
    refused write (a fence, a version conflict) must not undo the others.
    Returns the result, or the exception as a value.
    """
    conn.execute("SAVEPOINT covey_op")
    try:
        result = work(conn)
    except (ClusterError, sqlite3.Error) as exc:
        conn.execute("ROLLBACK TO covey_op")
        conn.execute("RELEASE covey_op")
        if isinstance(exc, sqlite3.Error):
            if is_locked(exc):
                raise  # the whole transaction retries
            return storage_error(exc, path)
        return exc
    conn.execute("RELEASE covey_op")
    return result


def _connect(path: str) -> sqlite3.Connection:
    """Open the file and set the pragmas (runs on the connection's thread).

    ``journal_mode=WAL`` lets readers run while one process writes.
    ``synchronous=NORMAL`` under WAL syncs only at checkpoints: a committed
    transaction survives the crash of any process (the WAL file is intact in
    the OS), only a power loss may drop the last commits. That is the failure
    model of several processes on one host; for more, use PostgreSQL.
    """
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, the driver must
    # not open deferred transactions behind our back. check_same_thread=False:
    # the connection is opened and closed by the pool's thread, not its creator.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _transaction(conn: sqlite3.Connection, work: Work[T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


class SqliteDatabase:
    """One connection to the database file, on a thread of its own.

    SQLite allows one writer at a time per file, so a second connection in the
    same process would only wait on the first. The one thread also keeps
    transactions from interleaving: each is one job on it, run to its end.

    Args:
        path: the database file; missing parent directories are created.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` has not run."""
        return self._conn is not None

    async def open(self) -> None:
        """Start the thread, connect and set the pragmas (see :func:`_connect`)."""
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"cannot create the directory of SQLite database {self.path}: {exc}",
                    location=self.path,
                ) from exc
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="covey-sqlite")
        try:
            for attempt in range(LOCKED_ATTEMPTS):  # journal_mode=WAL needs the lock
                try:
                    self._conn = await self._on(thread, _connect, self.path)
                    break
                except sqlite3.OperationalError as exc:
                    if not is_locked(exc) or attempt == LOCKED_ATTEMPTS - 1:
                        raise
                await asyncio.sleep(_BACKOFF * 2**attempt)
        except BaseException as exc:
            thread.shutdown(wait=False)
            if isinstance(exc, sqlite3.Error):
                raise storage_error(exc, self.path) from exc
            raise
        self._thread = thread

    async def close(self) -> None:
        """Disconnect once the transactions queued before have run; safe twice."""
        conn, thread = self._conn, self._thread
        self._conn = self._thread = None
        if conn is None or thread is None:
            return
        with contextlib.suppress(sqlite3.Error):
            await self._on(thread, conn.close)
        thread.shutdown(wait=False)

    async def write(self, work: Work[T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction and commit it.

        IMMEDIATE takes the write lock up front, so concurrent processes queue
        on ``busy_timeout`` instead of failing when a read would upgrade to a
        write. If SQLite still reports the database locked, the whole
        transaction is retried a few times, then ``storage_unavailable`` is
        raised. Any other exception rolls back and propagates.
        """
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                return await self._run(_transaction, work)
            except sqlite3.Error as exc:
                if not is_locked(exc) or attempt == LOCKED_ATTEMPTS - 1:
                    raise storage_error(exc, self.path) from exc
            # Real time, not the storage clock: this waits for another process,
            # and a test clock that nobody advances would wait forever.
            await asyncio.sleep(_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def read(self, work: Work[T]) -> T:
        """Run read-only ``work`` on the connection, between transactions."""
        try:
            return await self._run(work)
        except sqlite3.Error as exc:
            raise storage_error(exc, self.path) from exc

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise not_started(f"SQLite database {self.path}")
        return await self._on(thread, fn, conn, *args)

    @staticmethod
    async def _on(thread: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        # A job cancelled before it started never runs; one already running
        # runs to its end (commit or rollback) on the thread.
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)
