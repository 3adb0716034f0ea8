"""Group commit on SQLite: concurrent writes share one ``BEGIN IMMEDIATE``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar, cast

import aiosqlite

from covey.core import Reason, StorageError, StorageOptions
from covey.storage._group_commit import GroupCommit
from covey.storage.sqlite._connection import SqliteDatabase, in_savepoint

T = TypeVar("T")

#: One caller's write: statements run inside the shared transaction.
WriteOp = Callable[[aiosqlite.Connection], Awaitable[object]]


def _is_fatal(exc: BaseException) -> bool:
    # The database is unreachable or locked: flushing each op alone would only
    # fail again, slower.
    return isinstance(exc, StorageError) and exc.reason is Reason.STORAGE_UNAVAILABLE


class SqliteGroupWriter:
    """Batches writes through :class:`GroupCommit`; one batch, one transaction.

    One flusher: the instance has one connection, so a second batch in flight
    would only wait for the first. Each op runs in its own savepoint, so one
    refused op (fenced, conflicting) fails alone while the batch commits.
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

    async def submit(self, op: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``op`` in the next batch; its result or its exception."""
        if self._batcher is None:
            raise StorageError(f"SQLite storage {self._db.path} is not started (or closed)")
        return cast(T, await self._batcher.submit(op))

    async def _flush(self, ops: Sequence[WriteOp]) -> list[object | BaseException]:
        async def run(conn: aiosqlite.Connection) -> list[object | BaseException]:
            return [await in_savepoint(conn, op, self._db.path) for op in ops]

        return await self._db.write(run)
