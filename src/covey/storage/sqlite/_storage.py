"""The SQLite backend: lifecycle, migrations and the schema fingerprint."""

from __future__ import annotations

import re
import sqlite3
from importlib import resources
from typing import Any, Literal

import aiosqlite

from covey.core import Clock, MigrationError, StorageOptions
from covey.storage._base import StorageLifecycle, check_shards, migrations
from covey.storage._model import StorageInfo
from covey.storage.sqlite._connection import (
    SqliteDatabase,
    execute,
    fetchall,
    fetchone,
    is_locked,
    split_statements,
)
from covey.storage.sqlite._messages import SqliteMessageStorage
from covey.storage.sqlite._runners import SqliteRunnerStorage
from covey.storage.sqlite._state import SqliteStateStore
from covey.storage.sqlite._writer import SqliteGroupWriter

_PACKAGE = "covey.storage.sqlite"
_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS covey_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
)


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
    """

    backend = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        shards: int,
        options: StorageOptions,
        clock: Clock,
        install_from: Literal["schema", "migrations"] = "schema",
    ) -> None:
        self.path = path
        self._shards = shards
        self._install_from = install_from
        self._db = SqliteDatabase(path)
        self._writer = SqliteGroupWriter(self._db, options)
        self.runners = SqliteRunnerStorage(self._db, options, clock)
        self.messages = SqliteMessageStorage(self._db, self._writer, options, clock)
        self.state = SqliteStateStore(self._db, self._writer)
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

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        await execute(conn, _BOOKKEEPING)
        applied = {row[0] for row in await fetchall(conn, "SELECT version FROM covey_migrations")}
        available = migrations(_PACKAGE)
        if applied and max(applied) > len(available):
            raise MigrationError(
                f"{self.path} has schema version {max(applied)}, newer than this covey "
                f"knows ({len(available)}); upgrade covey"
            )
        if not applied and self._install_from == "schema":
            schema = resources.files(_PACKAGE).joinpath("schema.sql").read_text("utf-8")
            await self._run_script(conn, "schema.sql", schema)
            pending = [(version, name) for version, name, _ in available]
        else:
            pending = []
            for version, name, sql in available:
                if version not in applied:
                    await self._run_script(conn, name, sql)
                    pending.append((version, name))
        for version, name in pending:
            await execute(
                conn,
                "INSERT INTO covey_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (version, name, self._clock.now()),
            )
        row = await fetchone(conn, "SELECT value FROM covey_meta WHERE key = 'shards'")
        if row is None:
            await execute(
                conn, "INSERT INTO covey_meta (key, value) VALUES ('shards', ?)", (self._shards,)
            )
        else:
            check_shards(int(row[0]), self._shards, f"SQLite database {self.path}")

    async def _run_script(self, conn: aiosqlite.Connection, name: str, sql: str) -> None:
        for statement in split_statements(sql):
            try:
                await execute(conn, statement)
            except sqlite3.Error as exc:
                if is_locked(exc):
                    raise  # the whole start transaction retries
                raise MigrationError(
                    f"{name} failed on {self.path}: {exc}", migration=name
                ) from exc

    async def info(self) -> StorageInfo:
        """A summary for humans: schema version, shard count, runners, messages."""

        async def run(conn: aiosqlite.Connection) -> StorageInfo:
            version = await fetchone(conn, "SELECT COALESCE(MAX(version), 0) FROM covey_migrations")
            shards = await fetchone(conn, "SELECT value FROM covey_meta WHERE key = 'shards'")
            runners = await fetchone(conn, "SELECT COUNT(*) FROM covey_runners")
            counts = await fetchone(
                conn,
                "SELECT COUNT(*), COALESCE(SUM(processed = 0), 0) FROM covey_messages",
            )
            return StorageInfo(
                backend=self.backend,
                location=self.path,
                schema_version=int(version[0]),
                shards=int(shards[0]) if shards else self._shards,
                runners=int(runners[0]),
                messages_total=int(counts[0]),
                messages_unprocessed=int(counts[1]),
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


async def _fingerprint(conn: aiosqlite.Connection) -> str:
    lines: list[str] = []
    tables = await fetchall(
        conn,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    for (table,) in tables:
        lines.append(f"table {table}")
        for _, column, type_, notnull, default, pk in await fetchall(
            conn, f"PRAGMA table_info('{table}')"
        ):
            lines.append(
                f"column {table}.{column} {type_.upper()} notnull={notnull} "
                f"default={_normalize(default)} pk={pk}"
            )
        for fk in await fetchall(conn, f"PRAGMA foreign_key_list('{table}')"):
            lines.append(f"foreign key {table} {tuple(fk[2:])}")
        for index in await fetchall(conn, f"PRAGMA index_list('{table}')"):
            lines.append(await _index(conn, table, index))
    return "\n".join(sorted(lines))


async def _index(conn: aiosqlite.Connection, table: str, index: Any) -> str:
    _, name, unique, origin, partial = index
    keys = [
        f"{column}{' desc' if desc else ''}"
        for _, _, column, desc, _, key in await fetchall(conn, f"PRAGMA index_xinfo('{name}')")
        if key
    ]
    row = await fetchone(conn, "SELECT sql FROM sqlite_master WHERE name = ?", (name,))
    sql = _normalize(row[0] if row else None)
    where = sql.split(" where ", 1)[1] if partial and " where " in sql else ""
    # autoindexes are numbered by SQLite; name them by what they index instead
    label = name if origin == "c" else f"({origin})"
    return f"index {label} on {table}({', '.join(keys)}) unique={unique} where={where}"
