"""Persisted requests and replies on SQLite."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from typing import Any

from covey.core import Clock, EntityAddress, ShardId, StorageOptions
from covey.storage._checked import CheckedMessageStorage, MessageState
from covey.storage._errors import message_not_found, message_vanished
from covey.storage._message import Message, MessageRecord
from covey.storage._model import Fence, Reply, SaveResult
from covey.storage._rows import message_of, record_of, reply_of
from covey.storage._unit import CheckedUnitOfWork
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import SqliteDatabase, changed
from covey.storage.sqlite._unit import SqliteUnitOfWork
from covey.storage.sqlite._writer import SqliteGroupWriter
from covey.storage.sqlite._writes import check_completable, insert_message

#: Ids per ``IN (…)`` list, well below SQLite's bound-parameter limit.
_CHUNK = 500


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


class SqliteMessageStorage(CheckedMessageStorage):
    """:class:`covey.storage.MessageStorage` on SQLite.

    Saves, replies and reschedules go through group commit; every other call
    is one transaction (or one read) on the connection's thread.

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

    async def _save_request(self, message: Message) -> SaveResult:
        now = self._clock.now()
        return await self._writer.submit(lambda conn: insert_message(conn, message, now))

    async def _save_requests(self, messages: list[Message]) -> list[SaveResult]:
        now = self._clock.now()
        # one op, one savepoint: all of them or none
        return await self._writer.submit(
            lambda conn: [insert_message(conn, m, now) for m in messages])

    def _unit(self, fence: Fence, request_id: int) -> CheckedUnitOfWork:
        return SqliteUnitOfWork(self._db, fence, request_id, self._save_reply, self._clock)

    async def _save_reply(self, reply: Reply, fence: Fence) -> None:
        now = self._clock.now()

        def op(conn: sqlite3.Connection) -> None:
            check_completable(conn, reply.request_id, fence)
            conn.execute(q.COMPLETE, (now, reply.payload, int(reply.is_error), reply.request_id))

        await self._writer.submit(op)

    async def _reschedule(self, request_id: int, deliver_at: float, error: str,
                          fence: Fence) -> int:
        def op(conn: sqlite3.Connection) -> int:
            check_completable(conn, request_id, fence)
            conn.execute(q.RESCHEDULE, (deliver_at, error, request_id))
            row = conn.execute(q.FAILURES, (request_id,)).fetchone()
            if row is None:
                raise message_vanished(request_id, "rescheduled")
            return int(row[0])

        return await self._writer.submit(op)

    async def _mark_started(self, ids: list[int]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(ids):
                conn.execute(q.MARK_STARTED.format(ids=q.placeholders(chunk)), chunk)

        await self._db.write(run)

    async def _inspect(self, ids: list[int]) -> dict[int, MessageRecord]:
        def run(conn: sqlite3.Connection) -> dict[int, MessageRecord]:
            records = (record_of(row) for chunk in _chunks(ids) for row in conn.execute(
                q.INSPECT.format(ids=q.placeholders(chunk)), chunk))
            return {record.message.id: record for record in records}

        return await self._db.read(run)

    async def _count_messages(self, entity_type: str,
                              with_processed: bool) -> list[tuple[str, int, str, int]]:
        arms = [q.COUNT_UNPROCESSED, q.COUNT_ERRORS]
        if with_processed:
            arms.append(q.COUNT_PROCESSED)
        query = " UNION ALL ".join(arms) + " ORDER BY 1, 2, 3"

        def run(conn: sqlite3.Connection) -> list[tuple[str, int, str, int]]:
            rows = conn.execute(query, (entity_type,) * len(arms)).fetchall()
            return [(str(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]

        return await self._db.read(run)

    async def _list_messages(self, entity_type: str, state: MessageState | None,
                             tag: str | None, limit: int,
                             before_id: int | None) -> list[MessageRecord]:
        filters = "" if state is None else q.LIST_FILTERS[state]
        params: list[Any] = [entity_type]
        for name, value in (("tag", tag), ("before_id", before_id)):
            if value is not None:
                filters += q.LIST_FILTERS[name]
                params.append(value)
        query = q.LIST_MESSAGES.format(filters=filters)
        params.append(limit)

        def run(conn: sqlite3.Connection) -> list[MessageRecord]:
            return [record_of(row) for row in conn.execute(query, params)]

        return await self._db.read(run)

    async def _delete(self, ids: list[int]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return sum(changed(conn, q.DELETE_MESSAGES.format(ids=q.placeholders(chunk)), chunk)
                       for chunk in _chunks(ids))

        return await self._db.write(run)

    async def _unprocessed(self, shards: list[ShardId], limit: int) -> list[Message]:
        where, params = q.shard_filter(shards)
        query = q.UNPROCESSED.format(shards=where)
        now = self._clock.now()
        until = now + self._options.message_lease

        def run(conn: sqlite3.Connection) -> list[Message]:
            messages = [message_of(row) for row in conn.execute(query, [now, now, *params, limit])]
            if messages:
                conn.execute(q.LEASE.format(ids=q.placeholders(messages)),
                             [until, *(m.id for m in messages)])
            return [dataclasses.replace(m, attempts=m.attempts + 1) for m in messages]

        return await self._db.write(run)

    async def _unprocessed_of(self, address: EntityAddress, limit: int) -> list[Message]:
        params = (address.entity_type, address.entity_id, limit)
        return await self._db.read(
            lambda conn: [message_of(row) for row in conn.execute(q.UNPROCESSED_OF, params)])

    async def _next_due(self, shards: list[ShardId]) -> float | None:
        where, params = q.shard_filter(shards)
        query, now = q.NEXT_DUE.format(shards=where), self._clock.now()

        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(query, [now, *params]).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._db.read(run)

    async def _get(self, request_id: int) -> Message | None:
        def run(conn: sqlite3.Connection) -> Message | None:
            row = conn.execute(q.GET_MESSAGE, (request_id,)).fetchone()
            return None if row is None else message_of(row)

        return await self._db.read(run)

    async def _find(self, dedupe_key: str) -> int | None:
        def run(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(q.FIND_MESSAGE, (dedupe_key,)).fetchone()
            return None if row is None else int(row[0])

        return await self._db.read(run)

    async def _replies_for(self, ids: list[int]) -> dict[int, Reply]:
        def run(conn: sqlite3.Connection) -> dict[int, Reply]:
            return {id_: reply_of(id_, payload, is_error)
                    for chunk in _chunks(ids)
                    for id_, payload, is_error in conn.execute(
                        q.REPLIES.format(ids=q.placeholders(chunk)), chunk)}

        return await self._db.read(run)

    async def _reset_shards(self, shards: list[ShardId]) -> None:
        where, params = q.shard_filter(shards)
        query = q.RESET_SHARDS.format(shards=where)
        await self._db.write(lambda conn: conn.execute(query, params))

    async def _reset_request(self, request_id: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if not changed(conn, q.RESET_REQUEST, (request_id,)):
                raise message_not_found(request_id)

        await self._db.write(run)

    async def _clear_address(self, address: EntityAddress) -> int:
        params = (address.entity_type, address.entity_id)
        return await self._db.write(lambda conn: changed(conn, q.CLEAR_ADDRESS, params))

    async def _purge(self, before: float, limit: int, keep_errors_of: list[str]) -> int:
        # Successful replies first, then error replies except the kept types:
        # kept dead letters are never walked over by the first, common, statement.
        purge_errors = q.PURGE_ERRORS.format(kept=q.placeholders(keep_errors_of))

        def run(conn: sqlite3.Connection) -> int:
            done = changed(conn, q.PURGE_PROCESSED, (before, limit))
            if done < limit:
                done += changed(conn, purge_errors, (before, *keep_errors_of, limit - done))
            return done

        return await self._db.write(run)
