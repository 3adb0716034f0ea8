"""The state store on SQLite: small values with versioned compare-and-set."""

from __future__ import annotations

import aiosqlite

from covey.core import Reason, StorageError, VersionConflict
from covey.storage._model import (
    Fence,
    Versioned,
    check_state_delete,
    check_state_key,
    check_state_write,
)
from covey.storage.sqlite._connection import SqliteDatabase, execute, fetchone
from covey.storage.sqlite._runners import check_fence
from covey.storage.sqlite._writer import SqliteGroupWriter


class SqliteStateStore:
    """:class:`covey.storage.StateStore` on SQLite.

    Writes go through group commit with the message writes; a fenced write
    checks the shard epoch in the same transaction.

    Args:
        db: the instance's connection.
        writer: the group-commit writer shared with the message storage.
    """

    def __init__(self, db: SqliteDatabase, writer: SqliteGroupWriter) -> None:
        self._db = db
        self._writer = writer

    async def get(self, key: str) -> Versioned | None:
        check_state_key(key)

        async def run(conn: aiosqlite.Connection) -> Versioned | None:
            row = await fetchone(
                conn, "SELECT value, version FROM covey_state WHERE key = ?", (key,)
            )
            if row is None:
                return None
            value, version = row
            if not isinstance(value, bytes) or not isinstance(version, int):
                raise StorageError(
                    f"stored state {key!r} is corrupt",
                    reason=Reason.STORAGE_CORRUPT,
                    key=key,
                )
            return Versioned(value, version)

        return await self._db.read(run)

    async def set(
        self, key: str, value: bytes, *, expected_version: int | None, fence: Fence | None = None
    ) -> int:
        check_state_write(key, value, expected_version, fence)

        async def op(conn: aiosqlite.Connection) -> int:
            if fence is not None:
                await check_fence(conn, fence, None)
            if expected_version is None:
                changed = await execute(
                    conn,
                    "INSERT INTO covey_state (key, value, version) VALUES (?, ?, 1) "
                    "ON CONFLICT DO NOTHING",
                    (key, value),
                )
                new_version = 1
            else:
                changed = await execute(
                    conn,
                    "UPDATE covey_state SET value = ?, version = version + 1 "
                    "WHERE key = ? AND version = ?",
                    (value, key, expected_version),
                )
                new_version = expected_version + 1
            if not changed:
                row = await fetchone(conn, "SELECT version FROM covey_state WHERE key = ?", (key,))
                raise VersionConflict(
                    f"state {key!r} is at version {None if row is None else row[0]}, "
                    f"expected {expected_version}",
                    key=key,
                    expected=expected_version,
                    actual=None if row is None else row[0],
                )
            return new_version

        return await self._writer.submit(op)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_state_delete(key, expected_version)

        async def run(conn: aiosqlite.Connection) -> bool:
            if expected_version is None:
                changed = await execute(conn, "DELETE FROM covey_state WHERE key = ?", (key,))
            else:
                changed = await execute(
                    conn,
                    "DELETE FROM covey_state WHERE key = ? AND version = ?",
                    (key, expected_version),
                )
            return changed > 0

        return await self._db.write(run)
