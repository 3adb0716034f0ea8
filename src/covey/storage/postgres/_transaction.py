"""The application's handle on PostgreSQL: writes staged for a shared commit, or a live connection.

``await ctx.transaction()`` returns a :class:`PostgresTransaction`. Its writes
(``execute``, ``executemany``) are **staged**: they run inside the transaction
the unit commits in, after covey's fence check, in the order given. A unit whose
writes are all staged holds no connection while its handler runs, and commits
through group commit: the units that finish together share one transaction, and
their statements of the same SQL run as one pipelined ``executemany``.

The first read (``fetch``, ``fetchrow``, ``fetchval``) or
:meth:`~PostgresTransaction.connection` turns the handle **live**: it takes a
pooled connection, begins the unit's transaction on it and runs what was staged
so far; from then on every statement runs at once on that connection, reads
see the unit's own writes, and the unit commits on it alone.

A staged statement is one SQL statement (asyncpg's extended protocol refuses
more) and may not control the transaction: ``BEGIN``, ``COMMIT``, ``ROLLBACK``,
savepoints, ``SET`` other than ``SET LOCAL`` and the like are refused when
staged, since they would end or change the transaction other units commit in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from covey.storage._errors import handle_closed, invalid
from covey.storage.postgres._errors import statement_fault

if TYPE_CHECKING:
    from covey.storage.postgres._unit import PostgresUnitOfWork

#: One staged statement: (sql, rows of arguments). ``execute`` stages one row.
Staged = tuple[str, list[tuple[Any, ...]]]

#: Statements that would end, split or outlive the shared transaction.
_REFUSED = frozenset({
    "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE",
    "PREPARE", "DISCARD", "RESET", "LISTEN", "UNLISTEN", "VACUUM", "CHECKPOINT",
})
_LEADING = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_]+")


def _first_words(sql: str) -> tuple[str, str]:
    """The first two keywords of ``sql``, upper-cased, past comments and ``(``."""
    position = _LEADING.match(sql)
    rest = sql[position.end() if position else 0:]
    first = _WORD.match(rest)
    if first is None:
        return "", ""
    after = _LEADING.match(rest, first.end())
    second = _WORD.match(rest, after.end() if after else first.end())
    return first.group().upper(), (second.group().upper() if second else "")


def check_staged_sql(sql: object) -> str:
    """``sql`` if it is a statement that may run inside a shared transaction."""
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("sql", sql, "one SQL statement (a non-empty str)")
    first, second = _first_words(sql)
    if first in _REFUSED or (first == "SET" and second != "LOCAL"):
        raise invalid("sql", sql, "a statement that leaves covey's transaction alone "
                      f"({first}{' ' + second if first == 'SET' else ''} would end or change "
                      "it; use SET LOCAL, or await tx.connection() for a session of your own)")
    return sql


def _rows(rows: object) -> list[tuple[Any, ...]]:
    if isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
        raise invalid("args", rows, "an iterable of argument sequences")
    out: list[tuple[Any, ...]] = []
    for row in rows:
        if isinstance(row, str | bytes) or not isinstance(row, Sequence):
            raise invalid("args", row, "a sequence of arguments for one run of the statement")
        out.append(tuple(row))
    return out


class PostgresTransaction:
    """``ctx.transaction`` on PostgreSQL (see the module docstring).

    ``execute`` and ``executemany`` take asyncpg's arguments (``$1`` placeholders)
    and return ``None``: a staged statement has no status yet. A staged statement
    that fails (bad SQL, a constraint) makes the unit's commit raise
    :class:`~covey.core.EntityError` (``handler_failed``, ``details``: ``sql``,
    ``error``) and write nothing: the handler's error. On a live handle the
    statement fails at once, as asyncpg's does.

    The arguments are read when the statement runs: do not change a list or dict
    passed to a staged statement afterwards.
    """

    __slots__ = ("_closed", "_unit", "staged")

    def __init__(self, unit: PostgresUnitOfWork) -> None:
        self._unit = unit
        self._closed = False
        #: the statements to run at commit, in order (empty once live)
        self.staged: list[Staged] = []

    @property
    def live(self) -> bool:
        """Whether a connection is held (after a read or :meth:`connection`)."""
        return self._unit.connection is not None

    async def execute(self, query: str, *args: Any) -> None:
        """Stage one statement with its arguments (run at once when live)."""
        await self._write(check_staged_sql(query), [tuple(args)])

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None:
        """Stage one statement, run once per sequence of arguments (one pipelined
        round trip, atomically with the unit)."""
        await self._write(check_staged_sql(command), _rows(args))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """The rows of ``query`` (asyncpg ``Record``), seeing the unit's own writes."""
        return list(await (await self.connection()).fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> Any:
        """The first row of ``query`` (``None``: no row), seeing the unit's own writes."""
        return await (await self.connection()).fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        """One value of the first row of ``query`` (``None``: no row)."""
        return await (await self.connection()).fetchval(query, *args, column=column)

    async def connection(self) -> Any:
        """The unit's asyncpg connection, inside covey's transaction (taken once).

        What was staged runs on it first. Use it for anything asyncpg does (reads
        see your own writes, ``copy_records_to_table``, savepoints through
        ``conn.transaction()``); do not commit, roll back or close it. The unit
        then commits on this connection alone, not in a shared transaction.
        """
        if self._closed:
            raise handle_closed()
        return await self._unit.go_live()

    def close(self) -> None:
        """Refuse further use (the unit is finished)."""
        self._closed = True

    async def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._closed:
            raise handle_closed()
        conn = self._unit.connection
        if conn is None:
            self.staged.append((sql, rows))
        elif rows:
            await conn.executemany(sql, rows)


class StatementFailed(Exception):
    """A staged statement of the application failed (``__cause__``: why)."""

    def __init__(self, sql: str, error: BaseException) -> None:
        super().__init__(sql)
        self.sql = sql
        self.error = error


async def run_staged(conn: Any, staged: Sequence[Staged]) -> None:
    """Run one unit's staged statements on ``conn``, in order."""
    for sql, rows in staged:
        try:
            await conn.executemany(sql, rows)
        except Exception as exc:
            if statement_fault(exc):
                raise StatementFailed(sql, exc) from exc
            raise


async def run_staged_together(conn: Any, units: Sequence[Sequence[Staged]]) -> None:
    """Run the staged statements of many units: the k-th statements of every unit
    go together, one ``executemany`` per distinct SQL, so each unit's own order is
    kept while statements of the same SQL share one pipelined round trip."""
    depth = max((len(staged) for staged in units), default=0)
    for k in range(depth):
        by_sql: dict[str, list[tuple[Any, ...]]] = {}
        for staged in units:
            if k < len(staged):
                sql, rows = staged[k]
                by_sql.setdefault(sql, []).extend(rows)
        for sql, rows in by_sql.items():
            await conn.executemany(sql, rows)
