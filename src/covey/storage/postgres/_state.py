"""The versioned key-value state store on PostgreSQL."""

from __future__ import annotations

from typing import Any, cast

from covey.core import VersionConflict
from covey.storage._group_commit import GroupCommit
from covey.storage._model import (
    Fence,
    Versioned,
    check_state_delete,
    check_state_key,
    check_state_write,
)
from covey.storage.postgres._errors import translated
from covey.storage.postgres._writer import Op, StateOp


class PostgresStateStore:
    """:class:`covey.storage.StateStore` on PostgreSQL.

    Fenced writes share group-commit transactions with replies (and take the same
    ``FOR SHARE`` epoch check); unfenced ones are one statement each.

    Args:
        pool: the asyncpg pool of the storage.
        schema: the quoted schema name.
        batcher: the group commit shared with the message storage.
    """

    def __init__(self, pool: Any, schema: str, batcher: GroupCommit[Op, object]) -> None:
        self._pool = pool
        self._batcher = batcher
        s = schema
        self._sql_get = f"SELECT value, version FROM {s}.state WHERE key = $1"
        self._sql_insert = (
            f"INSERT INTO {s}.state (key, value, version) VALUES ($1, $2, 1)"
            " ON CONFLICT (key) DO NOTHING RETURNING version"
        )
        self._sql_update = (
            f"UPDATE {s}.state SET value = $2, version = version + 1"
            " WHERE key = $1 AND version = $3 RETURNING version"
        )
        self._sql_delete = f"DELETE FROM {s}.state WHERE key = $1"
        self._sql_delete_at = f"DELETE FROM {s}.state WHERE key = $1 AND version = $2"

    async def get(self, key: str) -> Versioned | None:
        check_state_key(key)
        with translated("reading state"):
            row = await self._pool.fetchrow(self._sql_get, key)
        if row is None:
            return None
        return Versioned(bytes(row["value"]), int(row["version"]))

    async def set(
        self, key: str, value: bytes, *, expected_version: int | None, fence: Fence | None = None
    ) -> int:
        check_state_write(key, value, expected_version, fence)
        if fence is not None:
            return cast(
                int, await self._batcher.submit(StateOp(key, value, expected_version, fence))
            )
        with translated("writing state"):
            if expected_version is None:
                version = await self._pool.fetchval(self._sql_insert, key, value)
            else:
                version = await self._pool.fetchval(
                    self._sql_update, key, value, expected_version
                )
        if version is None:
            raise VersionConflict(
                f"state key {key!r} is not at version {expected_version}",
                key=key,
                expected_version=expected_version,
            )
        return int(version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_state_delete(key, expected_version)
        with translated("deleting state"):
            if expected_version is None:
                status = await self._pool.execute(self._sql_delete, key)
            else:
                status = await self._pool.execute(self._sql_delete_at, key, expected_version)
        return bool(status != "DELETE 0")


