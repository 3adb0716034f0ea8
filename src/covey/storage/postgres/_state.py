"""The versioned key-value state store on PostgreSQL."""

from __future__ import annotations

from typing import Any, cast

from covey.storage._checked import CheckedStateStore
from covey.storage._errors import corrupt_state
from covey.storage._group_commit import GroupCommit
from covey.storage._model import Fence, Versioned
from covey.storage.postgres._errors import translated
from covey.storage.postgres._queries import Statements
from covey.storage.postgres._writer import Op, StateOp, write_state


class PostgresStateStore(CheckedStateStore):
    """:class:`covey.storage.StateStore` on PostgreSQL.

    Fenced writes share group-commit flushes with replies (and take the same
    ``FOR SHARE`` epoch check); unfenced ones are one statement each.

    Args:
        pool: the asyncpg pool of the storage.
        sql: the statements of the storage's schema.
        batcher: the group commit shared with the message storage.
    """

    def __init__(self, pool: Any, sql: Statements, batcher: GroupCommit[Op, object],
                 relaxed: GroupCommit[Op, object] | None = None) -> None:
        self._pool = pool
        self._sql = sql
        self._batcher = batcher
        #: fenced writes with ``sync=False``: sessions that commit without waiting
        #: for the WAL flush (``synchronous_commit = off``)
        self._relaxed = relaxed or batcher

    async def _get(self, key: str) -> Versioned | None:
        with translated("reading state"):
            row = await self._pool.fetchrow(self._sql.GET_STATE, key)
        if row is None:
            return None
        if not isinstance(row["value"], bytes):
            raise corrupt_state(key, "its value is not bytes")
        return Versioned(row["value"], int(row["version"]))

    async def _set(self, key: str, value: bytes, expected_version: int | None,
                   fence: Fence | None, sync: bool = True) -> int:
        op = StateOp(key, value, expected_version, fence)
        if fence is not None:
            batcher = self._batcher if sync else self._relaxed
            return cast(int, await batcher.submit(op))
        with translated("writing state"):
            outcome = await write_state(self._pool, self._sql, op)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _delete(self, key: str, expected_version: int | None) -> bool:
        with translated("deleting state"):
            if expected_version is None:
                status = await self._pool.execute(self._sql.DELETE_STATE, key)
            else:
                status = await self._pool.execute(self._sql.DELETE_STATE_AT, key, expected_version)
        return bool(status != "DELETE 0")
