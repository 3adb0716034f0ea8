"""Group commit on SQLite: concurrent writes share one ``BEGIN IMMEDIATE``."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TypeVar, cast

from covey.core import Reason, StorageError, StorageOptions
from covey.storage._errors import not_started
from covey.storage._group_commit import GroupCommit
from covey.storage.sqlite._connection import SqliteDatabase, Work, in_savepoint

T = TypeVar("T")

#: One caller's write: statements run inside the shared transaction.
WriteOp = Work[object]


def _is_fatal(exc: BaseException) -> bool:
    # The database is unreachable or locked: flushing each op alone would only
    # fail again, slower.
    return isinstance(exc, StorageError) and exc.reason is Reason.STORAGE_UNAVAILABLE


class SqliteGroupWriter:
    """Batches writes through :class:`GroupCommit`; one batch, one transaction.

    One flusher: the instance has one connection, so a second batch in flight
    would only wait for the first. Each op runs in its own savepoint, so one
    refused op (fenced, conflicting) fails alone while the batch commits. The
    whole batch is one job on the connection's thread.
    """

    def __init__(self, db: SqliteDatabase, options: StorageOptions) -> None:
        self._db = db
        self._options = options
        self._batcher: GroupCommit[WriteOp, object] | None = None

    def start(self) -> None:
        """Start the flusher (call from the running event loop)."""
        self._batcher = GroupCommit(
            self._flush,
            max_size=self._options.batch_max_size,
            max_wait=self._options.batch_max_wait,
            flushers=1,
            is_fatal=_is_fatal,
        )
        self._batcher.start()

    async def close(self) -> None:
        """Flush what is queued and stop."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.close()

    async def submit(self, op: Work[T]) -> T:
        """Run ``op`` in the next batch; its result or its exception."""
        if self._batcher is None:
            raise not_started(f"SQLite database {self._db.path}")
        return cast(T, await self._batcher.submit(op))

    async def _flush(self, ops: Sequence[WriteOp]) -> list[object | BaseException]:
        path = self._db.path

        def run(conn: sqlite3.Connection) -> list[object | BaseException]:
            return [in_savepoint(conn, op, path) for op in ops]

        return await self._db.write(run)
