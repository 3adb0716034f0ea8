"""The SQLite backend: lifecycle, migrations and the schema fingerprint."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from covey.core import Clock, MigrationError, StorageOptions
from covey.storage._base import InstallFrom, StorageLifecycle, check_shards, plan_migrations
from covey.storage._model import StorageInfo
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import SqliteDatabase, is_locked, split_statements
from covey.storage.sqlite._events import SqliteEventStore
from covey.storage.sqlite._inspection import SqliteInspectionStore
from covey.storage.sqlite._messages import SqliteMessageStorage
from covey.storage.sqlite._runners import SqliteRunnerStorage
from covey.storage.sqlite._state import SqliteStateStore
from covey.storage.sqlite._streams import SqliteStreamStore
from covey.storage.sqlite._transaction import execute_script
from covey.storage.sqlite._writer import SqliteGroupWriter

_PACKAGE = "covey.storage.sqlite"


class SqliteStorage(StorageLifecycle):
    """The embedded backend: one SQLite file shared by the processes of one host.

    The file runs with ``journal_mode=WAL`` and ``synchronous=NORMAL``: a commit
    survives the crash of any process (only a power loss may drop the last
    ones), which is the failure model of several processes on one host, at a
    fraction of the cost of ``FULL``. Writes are ``BEGIN IMMEDIATE`` so
    processes queue for the write lock instead of failing.

    Args:
        path: the database file (created with its directories if missing).
        shards: shards per shard group; recorded on first start, checked after.
        options: leases and group-commit batching.
        clock: the source of every stored time.
        install_from: how an empty database gets its schema: ``"schema"`` runs
            ``schema.sql`` at once, ``"migrations"`` runs every migration in
            order (the two must produce the same schema).

    Attributes:
        runners: runner membership and shard leases.
        messages: persisted requests and replies.
        state: the versioned key-value store.
        events: the event log and its subscriber groups.
        streams: stream items, routes and mailboxes.
        inspection: bounded reads for operators (the dashboard).
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        shards: int,
        options: StorageOptions,
        clock: Clock,
        install_from: InstallFrom = "schema",
    ) -> None:
        self.path = path
        self._shards = shards
        self._install_from = install_from
        self._db = SqliteDatabase(path)
        self._writer = SqliteGroupWriter(self._db, options)
        self.runners = SqliteRunnerStorage(self._db, options, clock)
        self.messages = SqliteMessageStorage(self._db, self._writer, options, clock)
        self.state = SqliteStateStore(self._db, self._writer)
        self.events = SqliteEventStore(self._db, self._writer, clock)
        self.streams = SqliteStreamStore(self._db, self._writer)
        self.inspection = SqliteInspectionStore(self._db)
        self._clock = clock

    async def start(self) -> None:
        """Connect, apply pending migrations and record or check the shard count.

        The migration runs in one ``BEGIN IMMEDIATE`` transaction, so processes
        starting at once take turns: the first installs, the others find the
        versions recorded and apply nothing.

        Raises:
            ShardCountMismatch: the file was created with another shard count.
            MigrationError: a migration failed, or the file is newer than this code.
        """
        if self._db.is_open:
            return
        await self._db.open()
        try:
            await self._db.write(self._migrate)
        except BaseException:
            await self._db.close()
            raise
        self._writer.start()

    async def close(self) -> None:
        """Flush queued writes and disconnect. Safe to call twice."""
        await self._writer.close()
        await self._db.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(q.BOOKKEEPING)
        (current,) = conn.execute(q.SCHEMA_VERSION).fetchone()
        plan = plan_migrations(_PACKAGE, int(current), self._install_from,
                               f"SQLite database {self.path}")
        for name, script in plan.scripts:
            self._run_script(conn, name, script)
        now = self._clock.now()
        conn.executemany(q.RECORD_MIGRATION, [(version, name, now)
                                              for version, name in plan.applied])
        row = conn.execute(q.SHARD_COUNT).fetchone()
        if row is None:
            conn.execute(q.RECORD_SHARD_COUNT, (self._shards,))
        else:
            check_shards(int(row[0]), self._shards, f"SQLite database {self.path}")

    def _run_script(self, conn: sqlite3.Connection, name: str, sql: str) -> None:
        for statement in split_statements(sql):
            try:
                conn.execute(statement)
            except sqlite3.Error as exc:
                if is_locked(exc):
                    raise  # the whole start transaction retries
                raise MigrationError(
                    f"{name} failed on {self.path}: {exc}", migration=name
                ) from exc

    async def execute_script(self, sql: str) -> None:
        """Run the application's own DDL (or other writes) in the store's file.

        The tables an application writes through ``ctx.transaction`` must live in
        this file to commit with covey's rows. The script (statements separated
        by ``;``) runs in one transaction of its own: all of it or none. It may
        not control transactions, run pragmas or write covey's tables
        (``covey_*``); use ``IF NOT EXISTS`` to make it safe to run at every start.

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"] == "sql"``) for a
                statement SQLite refuses; nothing of the script is kept.
        """
        await execute_script(self._db, sql)

    async def ping(self) -> None:
        """One cheap round trip (``SELECT 1``), for health checks."""
        await self._db.read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def info(self) -> StorageInfo:
        """A summary for humans: schema version, shard count, runners, messages."""

        def run(conn: sqlite3.Connection) -> StorageInfo:
            (version,) = conn.execute(q.SCHEMA_VERSION).fetchone()
            shards = conn.execute(q.SHARD_COUNT).fetchone()
            (runners,) = conn.execute(q.COUNT_RUNNERS).fetchone()
            total, unprocessed = conn.execute(q.COUNT_MESSAGES).fetchone()
            return StorageInfo(
                backend=self.backend,
                location=self.path,
                schema_version=int(version),
                shards=int(shards[0]) if shards else self._shards,
                runners=int(runners),
                messages_total=int(total),
                messages_unprocessed=int(unprocessed),
            )

        return await self._db.read(run)

    async def schema_fingerprint(self) -> str:
        """The schema as sorted, normalized text: tables, columns, indexes.

        Two databases with the same fingerprint have the same schema however it
        was installed; rows (migration bookkeeping included) are not part of it.
        """
        return await self._db.read(_fingerprint)


def _normalize(sql: str | None) -> str:
    return re.sub(r"\s+", " ", (sql or "").strip().lower())


def _fingerprint(conn: sqlite3.Connection) -> str:
    lines: list[str] = []
    for (table,) in conn.execute(q.TABLES).fetchall():
        lines.append(f"table {table}")
        for _, column, type_, notnull, default, pk in conn.execute(
            q.TABLE_INFO.format(table=table)
        ):
            lines.append(
                f"column {table}.{column} {type_.upper()} notnull={notnull} "
                f"default={_normalize(default)} pk={pk}"
            )
        for fk in conn.execute(q.FOREIGN_KEYS.format(table=table)):
            lines.append(f"foreign key {table} {tuple(fk[2:])}")
        for index in conn.execute(q.INDEXES.format(table=table)).fetchall():
            lines.append(_index(conn, table, index))
    return "\n".join(sorted(lines))


def _index(conn: sqlite3.Connection, table: str, index: Any) -> str:
    _, name, unique, origin, partial = index
    keys = [
        f"{column}{' desc' if desc else ''}"
        for _, _, column, desc, _, key in conn.execute(q.INDEX_COLUMNS.format(index=name))
        if key
    ]
    row = conn.execute(q.OBJECT_SQL, (name,)).fetchone()
    sql = _normalize(row[0] if row else None)
    where = sql.split(" where ", 1)[1] if partial and " where " in sql else ""
    # autoindexes are numbered by SQLite; name them by what they index instead
    label = name if origin == "c" else f"({origin})"
    return f"index {label} on {table}({', '.join(keys)}) unique={unique} where={where}"
