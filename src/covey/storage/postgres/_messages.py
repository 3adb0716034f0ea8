"""Persisted requests and replies on PostgreSQL."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Literal, cast

from covey.core import (
    AlreadyProcessed,
    Clock,
    EntityAddress,
    MessageNotFound,
    ShardId,
    StorageError,
    StorageOptions,
)
from covey.storage._group_commit import GroupCommit
from covey.storage._model import (
    Fence,
    Message,
    MessageRecord,
    Reply,
    SaveResult,
    check_address,
    check_counting,
    check_ids,
    check_limit,
    check_listing,
    check_message,
    check_purge,
    check_reply,
    check_reschedule,
    check_shard_ids,
    decode_headers,
)
from covey.storage.postgres._errors import corrupt, translated
from covey.storage.postgres._writer import Op, ReplyOp, SaveOp, Writer, _elsewhere, _stale

_COLUMNS = (
    "id, entity_type, entity_id, shard_group, shard, tag, payload, headers,"
    " primary_key, deliver_at, priority, attempts, failures, last_error, starts"
)
#: A message with its bookkeeping, for :class:`MessageRecord`.
_RECORD_COLUMNS = (
    f"{_COLUMNS}, created_at, processed, processed_at, reply, reply_is_error,"
    " last_error, lease_until"
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
            failures=int(row["failures"]),
            last_error=row["last_error"],
            starts=int(row["starts"]),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise corrupt(message_id, str(exc)) from exc


def decode_record(row: Any) -> MessageRecord:
    """A stored row (:data:`_RECORD_COLUMNS`) as a :class:`MessageRecord`."""
    message = decode_message(row)
    reply: Reply | None = None
    if row["processed"]:
        if not isinstance(row["reply"], bytes):
            raise corrupt(message.id, "processed without a reply")
        reply = Reply(message.id, row["reply"], bool(row["reply_is_error"]))
    last_error = row["last_error"]
    if last_error is not None and not isinstance(last_error, str):
        raise corrupt(message.id, "last_error is not text")
    return MessageRecord(
        message=message,
        created_at=float(row["created_at"]),
        processed_at=row["processed_at"],
        reply=reply,
        last_error=last_error,
        lease_until=row["lease_until"],
    )





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
        self._sql_next_due = (
            f"SELECT min(deliver_at) FROM {s}.messages WHERE NOT processed"
            " AND deliver_at > $3"
            " AND (shard_group, shard) IN (SELECT * FROM unnest($1::text[], $2::int4[]))"
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
            " reply_is_error = false, lease_until = NULL, failures = 0, attempts = 0, starts = 0,"
            " last_error = NULL"
            " WHERE id = $1"
        )
        # Fenced like a reply (see Writer): FOR SHARE makes an acquisition that
        # bumps the epoch wait until this transaction ends; the row lock orders
        # it against a concurrent completion of the same request.
        self._sql_fence_epoch = (
            f"SELECT epoch FROM {s}.shards WHERE shard_group = $1 AND shard = $2 FOR SHARE"
        )
        self._sql_lock_target = (
            f"SELECT shard_group, shard, processed FROM {s}.messages WHERE id = $1 FOR UPDATE"
        )
        self._sql_reschedule = (
            f"UPDATE {s}.messages SET deliver_at = $2, lease_until = NULL,"
            " failures = failures + 1, last_error = $3 WHERE id = $1 RETURNING failures"
        )
        self._sql_started = (
            f"UPDATE {s}.messages SET starts = starts + 1"
            " WHERE id = ANY($1::int8[]) AND NOT processed"
        )
        self._sql_inspect = (
            f"SELECT {_RECORD_COLUMNS} FROM {s}.messages WHERE id = ANY($1::int8[])"
        )
        # One arm per state, each on its partial index (messages_address,
        # messages_errors), so counting the backlog and the dead letters never
        # reads the (many) successful replies; $2 = false skips those.
        self._sql_count = (
            f"SELECT tag, priority, 'unprocessed', count(*) FROM {s}.messages"
            " WHERE NOT processed AND entity_type = $1 GROUP BY tag, priority"
            f" UNION ALL SELECT tag, priority, 'error', count(*) FROM {s}.messages"
            " WHERE processed AND reply_is_error AND entity_type = $1 GROUP BY tag, priority"
            f" UNION ALL SELECT tag, priority, 'processed', count(*) FROM {s}.messages"
            " WHERE $2 AND processed AND NOT reply_is_error AND entity_type = $1"
            " GROUP BY tag, priority ORDER BY 1, 2, 3"
        )
        self._sql_list = f"SELECT {_RECORD_COLUMNS} FROM {s}.messages WHERE entity_type = $1"
        self._sql_delete = f"DELETE FROM {s}.messages WHERE id = ANY($1::int8[])"
        self._sql_clear = (
            f"DELETE FROM {s}.messages WHERE entity_type = $1 AND entity_id = $2"
            " AND NOT processed"
        )
        # One purge batch: successful replies (a range scan of messages_purge,
        # oldest first), or error replies of the types not kept (messages_errors).
        # FOR UPDATE SKIP LOCKED re-checks each row as it is locked (a dead
        # letter being retried is no longer processed) and never waits on a row
        # another transaction holds.
        purge = (
            f"DELETE FROM {s}.messages WHERE id IN (SELECT id FROM {s}.messages"
            " WHERE processed AND {outcome} AND processed_at < $1{keep}"
            " ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
        self._sql_purge = purge.format(outcome="NOT reply_is_error", keep="")
        self._sql_purge_errors = purge.format(
            outcome="reply_is_error", keep=" AND entity_type <> ALL($3::text[])")

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

    async def reschedule(
        self, request_id: int, *, deliver_at: float, error: str, fence: Fence
    ) -> int:
        check_reschedule(request_id, deliver_at, error, fence)
        with translated("rescheduling a request"):
            async with self._pool.acquire() as conn, conn.transaction():
                epoch = await conn.fetchval(
                    self._sql_fence_epoch, fence.shard.group, fence.shard.id
                )
                row = await conn.fetchrow(self._sql_lock_target, request_id)
                if row is None:
                    raise MessageNotFound(
                        f"no stored request has id {request_id}", request_id=request_id
                    )
                if (row["shard_group"], row["shard"]) != (fence.shard.group, fence.shard.id):
                    raise _elsewhere(request_id, fence, row["shard_group"], row["shard"])
                if epoch != fence.epoch:
                    raise _stale(fence, epoch)
                if row["processed"]:
                    raise AlreadyProcessed(
                        f"request {request_id} has a reply already", request_id=request_id
                    )
                failures = await conn.fetchval(
                    self._sql_reschedule, request_id, float(deliver_at), error
                )
        if failures is None:
            raise StorageError(f"request {request_id} vanished while rescheduled")
        return int(failures)

    async def mark_started(self, request_ids: Collection[int]) -> None:
        ids = check_ids(request_ids)
        if not ids:
            return
        with translated("marking messages started"):
            await self._pool.execute(self._sql_started, ids)

    async def inspect(self, request_ids: Collection[int]) -> dict[int, MessageRecord]:
        ids = check_ids(request_ids)
        if not ids:
            return {}
        with translated("inspecting messages"):
            rows = await self._pool.fetch(self._sql_inspect, ids)
        records = [decode_record(r) for r in rows]
        return {r.message.id: r for r in records}

    async def count_messages(
        self, entity_type: str, *, with_processed: bool = True
    ) -> list[tuple[str, int, str, int]]:
        check_counting(entity_type, with_processed)
        with translated("counting messages"):
            rows = await self._pool.fetch(self._sql_count, entity_type, with_processed)
        return [(str(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]

    async def list_messages(
        self,
        entity_type: str,
        *,
        state: Literal["unprocessed", "processed", "error"] | None = None,
        tag: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[MessageRecord]:
        check_listing(entity_type, state, tag, limit, before_id)
        if limit <= 0:
            return []
        query = self._sql_list
        params: list[Any] = [entity_type]
        if state == "unprocessed":
            query += " AND NOT processed"
        elif state == "processed":
            query += " AND processed"
        elif state == "error":
            query += " AND processed AND reply_is_error"
        if tag is not None:
            params.append(tag)
            query += f" AND tag = ${len(params)}"
        if before_id is not None:
            params.append(before_id)
            query += f" AND id < ${len(params)}"
        params.append(limit)
        query += f" ORDER BY id DESC LIMIT ${len(params)}"
        with translated("listing messages"):
            rows = await self._pool.fetch(query, *params)
        return [decode_record(r) for r in rows]

    async def delete(self, request_ids: Collection[int]) -> int:
        ids = check_ids(request_ids)
        if not ids:
            return 0
        with translated("deleting messages"):
            status = await self._pool.execute(self._sql_delete, ids)
        return _count(status)

    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        check_shard_ids(shards)
        check_limit(limit)
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

    async def next_due(self, shards: Collection[ShardId]) -> float | None:
        check_shard_ids(shards)
        if not shards:
            return None
        groups, numbers = shard_arrays(shards)
        with translated("reading the next due time"):
            due = await self._pool.fetchval(self._sql_next_due, groups, numbers,
                                            self._clock.now())
        return None if due is None else float(due)

    async def get(self, request_id: int) -> Message | None:
        check_ids([request_id])
        with translated("reading a message"):
            row = await self._pool.fetchrow(self._sql_get, request_id)
        return None if row is None else decode_message(row)

    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        check_ids(request_ids)
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
        check_shard_ids(shards)
        if not shards:
            return
        groups, numbers = shard_arrays(shards)
        with translated("resetting shard leases"):
            await self._pool.execute(self._sql_reset_shards, groups, numbers)

    async def reset_request(self, request_id: int) -> None:
        check_ids([request_id])
        with translated("resetting a request"):
            status = await self._pool.execute(self._sql_reset_request, request_id)
        if _count(status) == 0:
            raise MessageNotFound(f"no stored request has id {request_id}", request_id=request_id)

    async def clear_address(self, address: EntityAddress) -> int:
        check_address(address)
        with translated("clearing an entity's messages"):
            status = await self._pool.execute(
                self._sql_clear, address.entity_type, address.entity_id
            )
        return _count(status)

    async def purge(
        self, before: float, *, limit: int = 1000, keep_errors_of: Collection[str] = ()
    ) -> int:
        kept = check_purge(before, limit, keep_errors_of)
        with translated("purging processed messages"):
            # successful replies first, then the error replies not kept: kept
            # dead letters are never walked over by the first, common, statement
            done = _count(await self._pool.execute(self._sql_purge, float(before), limit))
            if done < limit:
                done += _count(await self._pool.execute(self._sql_purge_errors,
                                                        float(before), limit - done, kept))
        return done


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])
