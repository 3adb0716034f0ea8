"""Persisted requests and replies on SQLite."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any, Literal

import aiosqlite

from covey.core import (
    AlreadyProcessed,
    Clock,
    EntityAddress,
    MessageNotFound,
    Reason,
    ShardId,
    StorageError,
    StorageOptions,
)
from covey.storage._model import (
    Duplicate,
    Fence,
    Message,
    MessageRecord,
    Reply,
    Saved,
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
    encode_headers,
)
from covey.storage.sqlite._connection import (
    SqliteDatabase,
    execute,
    fetchall,
    fetchone,
    placeholders,
)
from covey.storage.sqlite._runners import check_fence
from covey.storage.sqlite._writer import SqliteGroupWriter

_COLUMNS = (
    "id, entity_type, entity_id, shard_group, shard, tag, payload, headers, "
    "primary_key, deliver_at, priority, attempts, failures, last_error, starts"
)
#: A message with its bookkeeping, for :class:`MessageRecord`.
_RECORD_COLUMNS = (
    f"{_COLUMNS}, created_at, processed, processed_at, reply, reply_is_error, "
    "last_error, lease_until"
)
_INSERT = (
    "INSERT INTO covey_messages (id, entity_type, entity_id, shard_group, shard, tag, "
    "payload, headers, primary_key, dedupe_key, deliver_at, priority, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
#: Ids per ``IN (…)`` list, well below SQLite's bound-parameter limit.
_CHUNK = 500


def _corrupt(message_id: object, what: str) -> StorageError:
    return StorageError(
        f"stored message {message_id} is corrupt: {what}",
        reason=Reason.STORAGE_CORRUPT,
        message_id=message_id,
    )


def _message(row: Any) -> Message:
    (id_, entity_type, entity_id, group, shard, tag, payload, headers, primary_key,
     deliver_at, priority, attempts, failures, last_error, starts) = row
    checks = {
        "entity_type": isinstance(entity_type, str),
        "entity_id": isinstance(entity_id, str),
        "shard_group": isinstance(group, str),
        "shard": isinstance(shard, int),
        "tag": isinstance(tag, str),
        "payload": isinstance(payload, bytes),
        "headers": headers is None or isinstance(headers, str),
        "primary_key": primary_key is None or isinstance(primary_key, str),
        "deliver_at": deliver_at is None or isinstance(deliver_at, int | float),
        "priority": isinstance(priority, int),
        "attempts": isinstance(attempts, int),
        "failures": isinstance(failures, int),
        "last_error": last_error is None or isinstance(last_error, str),
        "starts": isinstance(starts, int),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise _corrupt(id_, "unexpected type in " + ", ".join(bad))
    return Message(
        id=id_,
        address=EntityAddress(entity_type, entity_id, ShardId(group, shard)),
        tag=tag,
        payload=payload,
        headers=decode_headers(headers, id_),
        primary_key=primary_key,
        deliver_at=None if deliver_at is None else float(deliver_at),
        priority=priority,
        attempts=attempts,
        failures=failures,
        last_error=last_error,
        starts=starts,
    )


def _record(row: Any) -> MessageRecord:
    width = len(_COLUMNS.split(","))
    message = _message(row[:width])
    created_at, processed, processed_at, reply, is_error, last_error, lease_until = row[width:]
    checks = {
        "created_at": isinstance(created_at, int | float),
        "processed_at": processed_at is None or isinstance(processed_at, int | float),
        "last_error": last_error is None or isinstance(last_error, str),
        "lease_until": lease_until is None or isinstance(lease_until, int | float),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise _corrupt(message.id, "unexpected type in " + ", ".join(bad))
    return MessageRecord(
        message=message,
        created_at=float(created_at),
        processed_at=None if processed_at is None else float(processed_at),
        reply=_reply(message.id, reply, is_error) if processed else None,
        last_error=last_error,
        lease_until=None if lease_until is None else float(lease_until),
    )





def _reply(message_id: int, payload: object, is_error: object) -> Reply:
    if not isinstance(payload, bytes):
        raise _corrupt(message_id, "reply is not bytes")
    return Reply(message_id, payload, bool(is_error))


def _shard_filter(shards: Collection[ShardId]) -> tuple[str, list[Any]]:
    """``(shard_group = ? AND shard IN (…)) OR …`` for ``shards``, with its parameters."""
    by_group: dict[str, list[int]] = {}
    for shard in shards:
        by_group.setdefault(shard.group, []).append(shard.id)
    clauses: list[str] = []
    params: list[Any] = []
    for group, ids in sorted(by_group.items()):
        clauses.append(f"(shard_group = ? AND shard IN ({placeholders(ids)}))")
        params += [group, *ids]
    return "(" + " OR ".join(clauses) + ")", params


def _chunks(ids: Collection[int]) -> list[list[int]]:
    unique = sorted(set(ids))
    return [unique[i : i + _CHUNK] for i in range(0, len(unique), _CHUNK)]


class SqliteMessageStorage:
    """:class:`covey.storage.MessageStorage` on SQLite.

    Saves and replies go through group commit; reads hold the connection
    between transactions.

    Args:
        db: the instance's connection.
        writer: the group-commit writer shared with the state store.
        options: leases and batching.
        clock: every stored time comes from it.
    """

    def __init__(
        self,
        db: SqliteDatabase,
        writer: SqliteGroupWriter,
        options: StorageOptions,
        clock: Clock,
    ) -> None:
        self._db = db
        self._writer = writer
        self._options = options
        self._clock = clock

    async def save_request(self, message: Message) -> SaveResult:
        check_message(message)

        async def op(conn: aiosqlite.Connection) -> SaveResult:
            return await self._insert(conn, message)

        return await self._writer.submit(op)

    async def save_requests(self, messages: Sequence[Message]) -> list[SaveResult]:
        batch = list(messages)
        for message in batch:
            check_message(message)
        if not batch:
            return []

        async def op(conn: aiosqlite.Connection) -> list[SaveResult]:
            # one op, one savepoint: all of them or none
            return [await self._insert(conn, message) for message in batch]

        return await self._writer.submit(op)

    async def _insert(self, conn: aiosqlite.Connection, message: Message) -> SaveResult:
        key = message.dedupe_key
        address = message.address
        inserted = await execute(conn, _INSERT, (
            message.id, address.entity_type, address.entity_id, address.shard.group,
            address.shard.id, message.tag, message.payload, encode_headers(message.headers),
            message.primary_key, key, message.deliver_at, message.priority, self._clock.now(),
        ))
        if inserted:
            return Saved(message.id)
        # The dedupe key (or the same id, a retried save) exists already.
        query = "SELECT id, processed, reply, reply_is_error FROM covey_messages WHERE "
        row = None
        if key is not None:
            row = await fetchone(conn, query + "dedupe_key = ?", (key,))
        if row is None:
            row = await fetchone(conn, query + "id = ?", (message.id,))
        if row is None:
            raise StorageError(f"message {message.id} was neither stored nor found")
        original, processed, reply, is_error = row
        return Duplicate(original, _reply(original, reply, is_error) if processed else None)

    async def save_reply(self, reply: Reply, fence: Fence) -> None:
        check_reply(reply, fence)

        async def op(conn: aiosqlite.Connection) -> None:
            row = await fetchone(
                conn,
                "SELECT shard_group, shard, processed FROM covey_messages WHERE id = ?",
                (reply.request_id,),
            )
            if row is None:
                raise MessageNotFound(
                    f"no stored message has id {reply.request_id}", message_id=reply.request_id
                )
            await check_fence(conn, fence, ShardId(row[0], row[1]))
            if row[2]:
                raise AlreadyProcessed(
                    f"message {reply.request_id} has a reply already", message_id=reply.request_id
                )
            await execute(
                conn,
                "UPDATE covey_messages SET processed = 1, processed_at = ?, reply = ?, "
                "reply_is_error = ?, lease_until = NULL WHERE id = ?",
                (self._clock.now(), reply.payload, int(reply.is_error), reply.request_id),
            )

        await self._writer.submit(op)

    async def reschedule(
        self, request_id: int, *, deliver_at: float, error: str, fence: Fence
    ) -> int:
        check_reschedule(request_id, deliver_at, error, fence)

        async def op(conn: aiosqlite.Connection) -> int:
            row = await fetchone(
                conn,
                "SELECT shard_group, shard, processed FROM covey_messages WHERE id = ?",
                (request_id,),
            )
            if row is None:
                raise MessageNotFound(
                    f"no stored message has id {request_id}", message_id=request_id
                )
            await check_fence(conn, fence, ShardId(row[0], row[1]))
            if row[2]:
                raise AlreadyProcessed(
                    f"message {request_id} has a reply already", message_id=request_id
                )
            await execute(
                conn,
                "UPDATE covey_messages SET deliver_at = ?, lease_until = NULL, "
                "failures = failures + 1, last_error = ? WHERE id = ?",
                (float(deliver_at), error, request_id),
            )
            failures = await fetchone(
                conn, "SELECT failures FROM covey_messages WHERE id = ?", (request_id,)
            )
            if failures is None:
                raise StorageError(f"message {request_id} vanished while rescheduled")
            return int(failures[0])

        return await self._writer.submit(op)

    async def mark_started(self, request_ids: Collection[int]) -> None:
        ids = check_ids(request_ids)
        if not ids:
            return

        async def run(conn: aiosqlite.Connection) -> None:
            for chunk in _chunks(ids):
                await execute(
                    conn,
                    "UPDATE covey_messages SET starts = starts + 1 "
                    f"WHERE processed = 0 AND id IN ({placeholders(chunk)})",
                    chunk,
                )

        await self._db.write(run)

    async def inspect(self, request_ids: Collection[int]) -> dict[int, MessageRecord]:
        ids = check_ids(request_ids)
        if not ids:
            return {}

        async def run(conn: aiosqlite.Connection) -> dict[int, MessageRecord]:
            records: dict[int, MessageRecord] = {}
            for chunk in _chunks(ids):
                rows = await fetchall(
                    conn,
                    f"SELECT {_RECORD_COLUMNS} FROM covey_messages "
                    f"WHERE id IN ({placeholders(chunk)})",
                    chunk,
                )
                for row in rows:
                    record = _record(row)
                    records[record.message.id] = record
            return records

        return await self._db.read(run)

    async def count_messages(
        self, entity_type: str, *, with_processed: bool = True
    ) -> list[tuple[str, int, str, int]]:
        check_counting(entity_type, with_processed)
        # One arm per state, each on its partial index, so counting the backlog
        # and the dead letters never reads the (many) successful replies.
        arms = [_COUNT_ARM.format(state="unprocessed", where="processed = 0"),
                _COUNT_ARM.format(state="error", where="processed = 1 AND reply_is_error = 1")]
        if with_processed:
            arms.append(_COUNT_ARM.format(state="processed",
                                          where="processed = 1 AND reply_is_error = 0"))
        query = " UNION ALL ".join(arms) + " ORDER BY 1, 2, 3"

        async def run(conn: aiosqlite.Connection) -> list[tuple[str, int, str, int]]:
            rows = await fetchall(conn, query, (entity_type,) * len(arms))
            return [(str(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]

        return await self._db.read(run)

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
        where = ["entity_type = ?"]
        params: list[Any] = [entity_type]
        if state == "unprocessed":
            where.append("processed = 0")
        elif state == "processed":
            where.append("processed = 1")
        elif state == "error":
            where.append("processed = 1 AND reply_is_error = 1")
        if tag is not None:
            where.append("tag = ?")
            params.append(tag)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        query = (
            f"SELECT {_RECORD_COLUMNS} FROM covey_messages WHERE {' AND '.join(where)} "
            "ORDER BY id DESC LIMIT ?"
        )

        async def run(conn: aiosqlite.Connection) -> list[MessageRecord]:
            return [_record(row) for row in await fetchall(conn, query, [*params, limit])]

        return await self._db.read(run)

    async def delete(self, request_ids: Collection[int]) -> int:
        ids = check_ids(request_ids)
        if not ids:
            return 0

        async def run(conn: aiosqlite.Connection) -> int:
            deleted = 0
            for chunk in _chunks(ids):
                deleted += await execute(
                    conn,
                    f"DELETE FROM covey_messages WHERE id IN ({placeholders(chunk)})",
                    chunk,
                )
            return deleted

        return await self._db.write(run)

    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        check_shard_ids(shards)
        check_limit(limit)
        if not shards or limit <= 0:
            return []
        where, params = _shard_filter(shards)

        async def run(conn: aiosqlite.Connection) -> list[Message]:
            now = self._clock.now()
            rows = await fetchall(
                conn,
                f"SELECT {_COLUMNS} FROM covey_messages WHERE processed = 0 "
                "AND (deliver_at IS NULL OR deliver_at <= ?) "
                "AND (lease_until IS NULL OR lease_until <= ?) "
                f"AND {where} ORDER BY priority DESC, id LIMIT ?",
                [now, now, *params, limit],
            )
            messages = [_message(row) for row in rows]
            if messages:
                await execute(
                    conn,
                    "UPDATE covey_messages SET lease_until = ?, attempts = attempts + 1 "
                    f"WHERE id IN ({placeholders(messages)})",
                    [now + self._options.message_lease, *(m.id for m in messages)],
                )
            return [dataclasses.replace(m, attempts=m.attempts + 1) for m in messages]

        return await self._db.write(run)

    async def next_due(self, shards: Collection[ShardId]) -> float | None:
        check_shard_ids(shards)
        if not shards:
            return None
        where, params = _shard_filter(shards)

        async def run(conn: aiosqlite.Connection) -> float | None:
            row = await fetchone(
                conn,
                "SELECT min(deliver_at) FROM covey_messages WHERE processed = 0 "
                f"AND deliver_at > ? AND {where}",
                [self._clock.now(), *params],
            )
            return None if row is None or row[0] is None else float(row[0])

        return await self._db.read(run)

    async def get(self, request_id: int) -> Message | None:
        check_ids([request_id])
        async def run(conn: aiosqlite.Connection) -> Message | None:
            row = await fetchone(
                conn, f"SELECT {_COLUMNS} FROM covey_messages WHERE id = ?", (request_id,)
            )
            return None if row is None else _message(row)

        return await self._db.read(run)

    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        check_ids(request_ids)
        async def run(conn: aiosqlite.Connection) -> dict[int, Reply]:
            replies: dict[int, Reply] = {}
            for chunk in _chunks(request_ids):
                rows = await fetchall(
                    conn,
                    "SELECT id, reply, reply_is_error FROM covey_messages "
                    f"WHERE processed = 1 AND id IN ({placeholders(chunk)})",
                    chunk,
                )
                for id_, payload, is_error in rows:
                    replies[id_] = _reply(id_, payload, is_error)
            return replies

        if not request_ids:
            return {}
        return await self._db.read(run)

    async def reset_shards(self, shards: Collection[ShardId]) -> None:
        check_shard_ids(shards)
        if not shards:
            return
        where, params = _shard_filter(shards)

        async def run(conn: aiosqlite.Connection) -> None:
            await execute(
                conn,
                "UPDATE covey_messages SET lease_until = NULL "
                f"WHERE processed = 0 AND lease_until IS NOT NULL AND {where}",
                params,
            )

        await self._db.write(run)

    async def reset_request(self, request_id: int) -> None:
        check_ids([request_id])
        async def run(conn: aiosqlite.Connection) -> None:
            changed = await execute(
                conn,
                "UPDATE covey_messages SET processed = 0, processed_at = NULL, reply = NULL, "
                "reply_is_error = 0, lease_until = NULL, failures = 0, attempts = 0, starts = 0, "
                "last_error = NULL "
                "WHERE id = ?",
                (request_id,),
            )
            if not changed:
                raise MessageNotFound(
                    f"no stored message has id {request_id}", message_id=request_id
                )

        await self._db.write(run)

    async def clear_address(self, address: EntityAddress) -> int:
        check_address(address)
        async def run(conn: aiosqlite.Connection) -> int:
            return await execute(
                conn,
                "DELETE FROM covey_messages "
                "WHERE processed = 0 AND entity_type = ? AND entity_id = ?",
                (address.entity_type, address.entity_id),
            )

        return await self._db.write(run)

    async def purge(
        self, before: float, *, limit: int = 1000, keep_errors_of: Collection[str] = ()
    ) -> int:
        kept = check_purge(before, limit, keep_errors_of)
        # Successful replies (covey_messages_purge), then error replies except
        # the kept types (covey_messages_errors): kept dead letters are never
        # walked over by the first, common, statement.
        keep = f" AND entity_type NOT IN ({placeholders(kept)})" if kept else ""

        async def run(conn: aiosqlite.Connection) -> int:
            done = await execute(conn, _PURGE.format(error=0, keep=""),
                                 (float(before), limit))
            if done < limit:
                done += await execute(conn, _PURGE.format(error=1, keep=keep),
                                      (float(before), *kept, limit - done))
            return done

        return await self._db.write(run)


#: One state's counts for ``count_messages``; ``state`` and ``where`` are filled in.
_COUNT_ARM = (
    "SELECT tag, priority, '{state}', count(*) FROM covey_messages"
    " WHERE {where} AND entity_type = ? GROUP BY tag, priority"
)
#: One purge batch (see ``purge``); ``error`` and ``keep`` are filled in.
_PURGE = (
    "DELETE FROM covey_messages WHERE id IN (SELECT id FROM covey_messages"
    " WHERE processed = 1 AND reply_is_error = {error} AND processed_at < ?{keep}"
    " ORDER BY processed_at LIMIT ?)"
)
