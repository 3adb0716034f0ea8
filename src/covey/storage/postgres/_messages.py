"""Persisted requests and replies on PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

from covey.core import Clock, EntityAddress, MessageNotFound, ShardId, StorageOptions
from covey.storage._group_commit import GroupCommit
from covey.storage._model import (
    Fence,
    Message,
    Reply,
    SaveResult,
    check_message,
    check_reply,
    decode_headers,
)
from covey.storage.postgres._errors import corrupt, translated
from covey.storage.postgres._writer import Op, ReplyOp, SaveOp, Writer

_COLUMNS = (
    "id, entity_type, entity_id, shard_group, shard, tag, payload, headers,"
    " primary_key, deliver_at, priority, attempts"
)


def decode_message(row: Any) -> Message:
    """A stored row as a :class:`Message`; a malformed row is ``storage_corrupt``."""
    message_id = int(row["id"])
    try:
        payload = row["payload"]
        if not isinstance(payload, bytes):
            raise TypeError("payload is not bytes")
        return Message(
            id=message_id,
            address=EntityAddress(
                row["entity_type"], row["entity_id"], ShardId(row["shard_group"], row["shard"])
            ),
            tag=row["tag"],
            payload=payload,
            headers=decode_headers(row["headers"], message_id),
            primary_key=row["primary_key"],
            deliver_at=row["deliver_at"],
            priority=int(row["priority"]),
            attempts=int(row["attempts"]),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise corrupt(message_id, str(exc)) from exc


def shard_arrays(shards: Collection[ShardId]) -> tuple[list[str], list[int]]:
    """Shards as the two arrays the statements unnest (groups, numbers)."""
    ordered = sorted(set(shards))
    return [s.group for s in ordered], [s.id for s in ordered]


class PostgresMessageStorage:
    """:class:`covey.storage.MessageStorage` on PostgreSQL.

    Writes go through group commit; reads lease with ``FOR UPDATE SKIP LOCKED``
    so several readers never block on each other.

    Args:
        pool: the asyncpg pool of the storage.
        schema: the quoted schema name.
        options: storage options (message lease).
        clock: the source of every timestamp written.
        batcher: the group commit shared with the state store.
    """

    def __init__(
        self,
        pool: Any,
        schema: str,
        options: StorageOptions,
        clock: Clock,
        batcher: GroupCommit[Op, object],
        writer: Writer,
        channel: str,
    ) -> None:
        self._pool = pool
        self._writer = writer
        #: the NOTIFY channel that wakes runners after a transactional save
        self.channel = channel
        self._options = options
        self._clock = clock
        self._batcher = batcher
        s = schema
        self._sql_unprocessed = (
            f"UPDATE {s}.messages SET lease_until = $4, attempts = attempts + 1"
            f" WHERE id IN (SELECT id FROM {s}.messages"
            " WHERE NOT processed"
            " AND (shard_group, shard) IN (SELECT * FROM unnest($1::text[], $2::int4[]))"
            " AND (deliver_at IS NULL OR deliver_at <= $5)"
            " AND (lease_until IS NULL OR lease_until <= $5)"
            " ORDER BY priority DESC, id LIMIT $3 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}"
        )
        self._sql_get = f"SELECT {_COLUMNS} FROM {s}.messages WHERE id = $1"
        self._sql_replies = (
            f"SELECT id, reply, reply_is_error FROM {s}.messages"
            " WHERE id = ANY($1::int8[]) AND processed"
        )
        self._sql_reset_shards = (
            f"UPDATE {s}.messages SET lease_until = NULL WHERE NOT processed"
            " AND lease_until IS NOT NULL"
            " AND (shard_group, shard) IN (SELECT * FROM unnest($1::text[], $2::int4[]))"
        )
        self._sql_reset_request = (
            f"UPDATE {s}.messages SET processed = false, processed_at = NULL, reply = NULL,"
            " reply_is_error = false, lease_until = NULL WHERE id = $1"
        )
        self._sql_clear = (
            f"DELETE FROM {s}.messages WHERE entity_type = $1 AND entity_id = $2"
            " AND NOT processed"
        )
        self._sql_purge = (
            f"DELETE FROM {s}.messages WHERE processed AND processed_at < $1"
        )

    async def save_requests_in(
        self, connection: Any, messages: Sequence[Message]
    ) -> list[SaveResult]:
        """Store ``messages`` in the caller's transaction; owners wake at its commit."""
        for message in messages:
            check_message(message)
        out: list[object] = [None]
        with translated("saving requests in the application's transaction"):
            await self._writer._save(connection, [(0, SaveOp(tuple(messages)))], out)
            shards = sorted({str(m.address.shard) for m in messages})
            await connection.execute(
                "SELECT pg_notify($1, s) FROM unnest($2::text[]) AS s", self.channel, shards)
        if isinstance(out[0], BaseException):
            raise out[0]
        return cast(list[SaveResult], out[0])

    async def save_request(self, message: Message) -> SaveResult:
        check_message(message)
        results = cast(list[SaveResult], await self._batcher.submit(SaveOp((message,))))
        return results[0]

    async def save_requests(self, messages: Sequence[Message]) -> list[SaveResult]:
        messages = list(messages)
        for message in messages:
            check_message(message)
        if not messages:
            return []
        return cast(list[SaveResult], await self._batcher.submit(SaveOp(messages)))

    async def save_reply(self, reply: Reply, fence: Fence) -> None:
        check_reply(reply, fence)
        await self._batcher.submit(ReplyOp(reply, fence))

    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        if not shards or limit <= 0:
            return []
        groups, numbers = shard_arrays(shards)
        now = self._clock.now()
        with translated("reading unprocessed messages"):
            rows = await self._pool.fetch(
                self._sql_unprocessed,
                groups,
                numbers,
                limit,
                now + self._options.message_lease,
                now,
            )
        messages = [decode_message(r) for r in rows]
        messages.sort(key=lambda m: (-m.priority, m.id))
        return messages

    async def get(self, request_id: int) -> Message | None:
        with translated("reading a message"):
            row = await self._pool.fetchrow(self._sql_get, request_id)
        return None if row is None else decode_message(row)

    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        ids = list(set(request_ids))
        if not ids:
            return {}
        with translated("reading replies"):
            rows = await self._pool.fetch(self._sql_replies, ids)
        out: dict[int, Reply] = {}
        for r in rows:
            if not isinstance(r["reply"], bytes):
                raise corrupt(r["id"], "processed without a reply")
            out[r["id"]] = Reply(r["id"], r["reply"], bool(r["reply_is_error"]))
        return out

    async def reset_shards(self, shards: Collection[ShardId]) -> None:
        if not shards:
            return
        groups, numbers = shard_arrays(shards)
        with translated("resetting shard leases"):
            await self._pool.execute(self._sql_reset_shards, groups, numbers)

    async def reset_request(self, request_id: int) -> None:
        with translated("resetting a request"):
            status = await self._pool.execute(self._sql_reset_request, request_id)
        if _count(status) == 0:
            raise MessageNotFound(f"no stored request has id {request_id}", request_id=request_id)

    async def clear_address(self, address: EntityAddress) -> int:
        with translated("clearing an entity's messages"):
            status = await self._pool.execute(
                self._sql_clear, address.entity_type, address.entity_id
            )
        return _count(status)

    async def purge(self, before: float) -> int:
        with translated("purging processed messages"):
            status = await self._pool.execute(self._sql_purge, float(before))
        return _count(status)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])
