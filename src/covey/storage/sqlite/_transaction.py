"""The application's handle on SQLite: statements staged for the unit's commit.

SQLite has one writer per file and covey's connection runs one transaction at a
time on its thread, so the application's writes cannot hold a transaction open
while the handler awaits. They are staged instead and run inside the unit's
commit transaction, after covey's checks, in the order given. Reads run at once,
between transactions: they see committed data only, not the staged writes.

The application's SQL runs under an authorizer: it may not begin, end or
roll back transactions, use savepoints, attach databases or run pragmas (any of
those would break the one transaction the unit commits in), nor write to covey's
own tables (``covey_*``). Reads may only read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from covey.core.runtime import invalid_argument
from covey.storage._errors import app_write_failed, handle_closed, invalid
from covey.storage.sqlite._connection import SqliteDatabase, is_locked, split_statements

#: One staged statement: (sql, parameters, executemany?).
Staged = tuple[str, Any, bool]

_NEVER = frozenset({
    sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT, sqlite3.SQLITE_ATTACH,
    sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA,
})
_READS = frozenset({
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
})
#: actions whose first argument is the table written (or created, dropped)
_TABLE_FIRST = frozenset({
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_DROP_VIEW,
})
#: actions whose second argument is the table (an index, a trigger, ALTER TABLE)
_TABLE_SECOND = frozenset({
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_ALTER_TABLE,
})
_COVEY_TABLES = "covey_"


def _covey(table: str | None) -> bool:
    return (table or "").lower().startswith(_COVEY_TABLES)


def _writing(action: int, arg1: str | None, arg2: str | None, *_: str | None) -> int:
    if action in _NEVER:
        return sqlite3.SQLITE_DENY
    if (action in _TABLE_FIRST and _covey(arg1)) or (action in _TABLE_SECOND and _covey(arg2)):
        return sqlite3.SQLITE_DENY  # reading covey's tables is fine, writing them is not
    return sqlite3.SQLITE_OK


def _reading(action: int, *_: str | None) -> int:
    return sqlite3.SQLITE_OK if action in _READS else sqlite3.SQLITE_DENY


def run_staged(conn: sqlite3.Connection, staged: Sequence[Staged]) -> None:
    """Run the application's statements inside the current transaction.

    Raises:
        EntityError: ``handler_failed`` (``details``: ``sql``, ``error``) for a
            statement that fails; the caller rolls the transaction back.
        sqlite3.OperationalError: the database is locked (the whole commit retries).
    """
    conn.set_authorizer(_writing)
    try:
        for sql, params, many in staged:
            try:
                if many:
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)
            except Exception as exc:
                if is_locked(exc):
                    raise
                raise app_write_failed(sql, exc) from exc
    finally:
        conn.set_authorizer(None)


def _bound(params: tuple[Any, ...]) -> Any:
    """Positional parameters, or the one mapping given for named placeholders."""
    return params[0] if len(params) == 1 and isinstance(params[0], Mapping) else params


def _check_sql(sql: object) -> str:
    if not isinstance(sql, str):
        raise invalid("sql", sql, "an SQL statement (str)")
    return sql


class SqliteTransaction:
    """``ctx.transaction`` on SQLite: the application's writes, committed with the unit.

    ``execute`` and ``executemany`` stage statements (``?`` placeholders); they
    run inside the unit's commit transaction, with the state, the outgoing
    messages and the reply, or not at all. A staged statement that fails makes
    the commit raise :class:`~covey.core.EntityError` (``handler_failed``,
    ``details``: ``sql``, ``error``) and write nothing: the handler's error.
    ``fetch``, ``fetchrow`` and ``fetchval`` run at once on **committed** data;
    they do not see the statements staged here.
    """

    __slots__ = ("_closed", "_db", "staged")

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self._closed = False
        #: the statements to run at commit, in order
        self.staged: list[Staged] = []

    async def execute(self, sql: str, *params: Any) -> None:
        """Stage one statement with its parameters (positional, or one mapping for
        ``:name`` placeholders)."""
        self._stage(_check_sql(sql), _bound(params), False)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Stage one statement, run once per row of parameters."""
        if isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
            raise invalid("rows", rows, "an iterable of parameter sequences")
        self._stage(_check_sql(sql), list(rows), True)

    def close(self) -> None:
        """Refuse further writes (the unit is finished); reads still work."""
        self._closed = True

    def _stage(self, sql: str, params: Any, many: bool) -> None:
        if self._closed:
            raise handle_closed()
        self.staged.append((sql, params, many))

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of a query, read now from committed data."""
        query, bound = _check_sql(sql), _bound(params)

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            conn.set_authorizer(_reading)
            try:
                return [tuple(row) for row in conn.execute(query, bound).fetchall()]
            except Exception as exc:
                if is_locked(exc):
                    raise
                raise app_write_failed(query, exc) from exc
            finally:
                conn.set_authorizer(None)

        return await self._db.read(run)

    async def fetchrow(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        """The first row of a query (``None``: no row), read now."""
        rows = await self.fetch(sql, *params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *params: Any) -> Any:
        """The first column of the first row (``None``: no row), read now."""
        row = await self.fetchrow(sql, *params)
        return None if row is None else row[0]


async def execute_script(db: SqliteDatabase, script: str) -> None:
    """Run the application's DDL (or any writes) in one transaction of its own.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "sql"``, and
            ``error``) for a statement SQLite refuses; nothing of the script stays.
    """
    statements = split_statements(_check_sql(script))

    def run(conn: sqlite3.Connection) -> None:
        conn.set_authorizer(_writing)
        try:
            for statement in statements:
                try:
                    conn.execute(statement)
                except Exception as exc:
                    if is_locked(exc):
                        raise
                    raise invalid_argument("sql", f"{statement!r} failed: {exc}",
                                           error=f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.set_authorizer(None)

    await db.write(run)
