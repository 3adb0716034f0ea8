"""The state store on SQLite: small values with versioned compare-and-set."""

from __future__ import annotations

import sqlite3

from covey.storage._checked import CheckedStateStore
from covey.storage._errors import corrupt_state, fenced_out
from covey.storage._model import Fence, Versioned
from covey.storage._unit import StateWrite
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import SqliteDatabase, changed
from covey.storage.sqlite._runners import current_epoch
from covey.storage.sqlite._writer import SqliteGroupWriter
from covey.storage.sqlite._writes import write_state


class SqliteStateStore(CheckedStateStore):
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

    async def _get(self, key: str) -> Versioned | None:
        def run(conn: sqlite3.Connection) -> Versioned | None:
            row = conn.execute(q.GET_STATE, (key,)).fetchone()
            if row is None:
                return None
            value, version = row
            if not isinstance(value, bytes) or not isinstance(version, int):
                raise corrupt_state(key, "its value is not bytes or its version not an int")
            return Versioned(value, version)

        return await self._db.read(run)

    async def _set(self, key: str, value: bytes, expected_version: int | None,
                   fence: Fence | None, sync: bool = True) -> int:
        def op(conn: sqlite3.Connection) -> int:
            if fence is not None:
                epoch = current_epoch(conn, fence.shard)
                if epoch != fence.epoch:
                    raise fenced_out(fence, epoch)
            write_state(conn, StateWrite(key, value, expected_version))
            return (expected_version or 0) + 1

        return await self._writer.submit(op)

    async def _delete(self, key: str, expected_version: int | None) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            if expected_version is None:
                return changed(conn, q.DELETE_STATE, (key,)) > 0
            return changed(conn, q.DELETE_STATE_AT, (key, expected_version)) > 0

        return await self._db.write(run)
