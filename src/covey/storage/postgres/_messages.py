"""Persisted requests and replies on PostgreSQL."""

from __future__ import annotations

from typing import Any, cast

import asyncpg

from covey.core import Clock, EntityAddress, ShardId, StorageOptions
from covey.storage._checked import CheckedTransactionalMessages, MessageState
from covey.storage._errors import message_not_found
from covey.storage._group_commit import GroupCommit
from covey.storage._message import Message, MessageRecord
from covey.storage._model import Fence, Reply, SaveResult
from covey.storage._rows import message_of, record_of, reply_of
from covey.storage._unit import CheckedUnitOfWork
from covey.storage.postgres._errors import translated
from covey.storage.postgres._queries import LIST_FILTERS, Statements
from covey.storage.postgres._unit import PostgresUnitOfWork, UnitHost
from covey.storage.postgres._writer import CompleteOp, Op, SaveOp, Writer


def shard_arrays(shards: list[ShardId]) -> tuple[list[str], list[int]]:
    """Shards as the two arrays the statements unnest (groups, numbers)."""
    return [s.group for s in shards], [s.id for s in shards]


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresMessageStorage(CheckedTransactionalMessages):
    """:class:`covey.storage.MessageStorage` on PostgreSQL.

    Writes go through group commit; reads lease with ``FOR UPDATE SKIP LOCKED``
    so several readers never block on each other. Requests can also be stored
    in the application's own transaction (:meth:`save_requests_in`).

    Args:
        pool: the asyncpg pool of the storage.
        sql: the statements of the storage's schema.
        options: storage options (message lease).
        clock: the source of every timestamp written.
        batcher: the group commit shared with the state store.
        writer: the group commit's flush (its save runs in the application's
            transaction too).
        channel: the NOTIFY channel that wakes runners after such a save.
        units: the group commit units of work commit through (default: ``batcher``).
    """

    connection_types = (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)

    def __init__(
        self,
        pool: Any,
        sql: Statements,
        options: StorageOptions,
        clock: Clock,
        batcher: GroupCommit[Op, object],
        writer: Writer,
        channel: str,
        *,
        units: GroupCommit[Op, object] | None = None,
    ) -> None:
        self._pool = pool
        self._sql = sql
        self._writer = writer
        self.channel = channel
        self._options = options
        self._clock = clock
        self._batcher = batcher
        self._units = UnitHost(pool, writer, units or batcher, options.connect_timeout)

    async def _save_requests_in(self, connection: Any,
                                messages: list[Message]) -> list[SaveResult]:
        out: list[object] = [None]
        with translated("saving requests in the application's transaction"):
            await self._writer.save(connection, [(0, SaveOp(messages))], out)
            await self._writer.notify(connection, messages)
        if isinstance(out[0], BaseException):
            raise out[0]
        return cast(list[SaveResult], out[0])

    def _unit(self, fence: Fence, request_id: int) -> CheckedUnitOfWork:
        return PostgresUnitOfWork(self._units, fence, request_id, self._save_reply)

    async def _save_request(self, message: Message) -> SaveResult:
        results = cast(list[SaveResult], await self._batcher.submit(SaveOp((message,))))
        return results[0]

    async def _save_requests(self, messages: list[Message]) -> list[SaveResult]:
        return cast(list[SaveResult], await self._batcher.submit(SaveOp(messages)))

    async def _save_reply(self, reply: Reply, fence: Fence) -> None:
        await self._batcher.submit(CompleteOp(reply.request_id, fence, reply=reply))

    async def _reschedule(self, request_id: int, deliver_at: float, error: str,
                          fence: Fence) -> int:
        op = CompleteOp(request_id, fence, retry_at=deliver_at, error=error)
        return cast(int, await self._batcher.submit(op))

    async def _mark_started(self, ids: list[int]) -> None:
        with translated("marking messages started"):
            await self._pool.execute(self._sql.MARK_STARTED, ids)

    async def _inspect(self, ids: list[int]) -> dict[int, MessageRecord]:
        with translated("inspecting messages"):
            rows = await self._pool.fetch(self._sql.INSPECT, ids)
        records = [record_of(r) for r in rows]
        return {r.message.id: r for r in records}

    async def _count_messages(self, entity_type: str,
                              with_processed: bool) -> list[tuple[str, int, str, int]]:
        with translated("counting messages"):
            rows = await self._pool.fetch(self._sql.COUNT_MESSAGES, entity_type, with_processed)
        return [(str(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]

    async def _list_messages(self, entity_type: str, state: MessageState | None,
                             tag: str | None, limit: int,
                             before_id: int | None) -> list[MessageRecord]:
        query = self._sql.LIST_MESSAGES + ("" if state is None else LIST_FILTERS[state])
        params: list[Any] = [entity_type]
        for name, value in (("tag", tag), ("before_id", before_id)):
            if value is not None:
                params.append(value)
                query += LIST_FILTERS[name].format(n=len(params))
        params.append(limit)
        query += f" ORDER BY id DESC LIMIT ${len(params)}"
        with translated("listing messages"):
            rows = await self._pool.fetch(query, *params)
        return [record_of(r) for r in rows]

    async def _delete(self, ids: list[int]) -> int:
        with translated("deleting messages"):
            return _count(await self._pool.execute(self._sql.DELETE_MESSAGES, ids))

    async def _unprocessed(self, shards: list[ShardId], limit: int) -> list[Message]:
        groups, numbers = shard_arrays(shards)
        now = self._clock.now()
        with translated("reading unprocessed messages"):
            rows = await self._pool.fetch(
                self._sql.UNPROCESSED, groups, numbers, limit,
                now + self._options.message_lease, now,
            )
        messages = [message_of(r) for r in rows]
        messages.sort(key=lambda m: (-m.priority, m.id))  # RETURNING keeps no order
        return messages

    async def _unprocessed_of(self, address: EntityAddress, limit: int) -> list[Message]:
        with translated("reading an entity's unprocessed messages"):
            rows = await self._pool.fetch(self._sql.UNPROCESSED_OF, address.entity_type,
                                          address.entity_id, limit)
        return [message_of(r) for r in rows]

    async def _next_due(self, shards: list[ShardId]) -> float | None:
        groups, numbers = shard_arrays(shards)
        with translated("reading the next due time"):
            due = await self._pool.fetchval(self._sql.NEXT_DUE, groups, numbers,
                                            self._clock.now())
        return None if due is None else float(due)

    async def _get(self, request_id: int) -> Message | None:
        with translated("reading a message"):
            row = await self._pool.fetchrow(self._sql.GET_MESSAGE, request_id)
        return None if row is None else message_of(row)

    async def _find(self, dedupe_key: str) -> int | None:
        with translated("finding a message"):
            found = await self._pool.fetchval(self._sql.FIND_MESSAGE, dedupe_key)
        return None if found is None else int(found)

    async def _replies_for(self, ids: list[int]) -> dict[int, Reply]:
        with translated("reading replies"):
            rows = await self._pool.fetch(self._sql.REPLIES, ids)
        return {r["id"]: reply_of(r["id"], r["reply"], r["reply_is_error"]) for r in rows}

    async def _reset_shards(self, shards: list[ShardId]) -> None:
        groups, numbers = shard_arrays(shards)
        with translated("resetting shard leases"):
            await self._pool.execute(self._sql.RESET_SHARDS, groups, numbers)

    async def _reset_request(self, request_id: int) -> None:
        with translated("resetting a request"):
            status = await self._pool.execute(self._sql.RESET_REQUEST, request_id)
        if _count(status) == 0:
            raise message_not_found(request_id)

    async def _clear_address(self, address: EntityAddress) -> int:
        with translated("clearing an entity's messages"):
            return _count(await self._pool.execute(
                self._sql.CLEAR_ADDRESS, address.entity_type, address.entity_id))

    async def _purge(self, before: float, limit: int, keep_errors_of: list[str]) -> int:
        with translated("purging processed messages"):
            # successful replies first, then the error replies not kept: kept
            # dead letters are never walked over by the first, common, statement
            done = _count(await self._pool.execute(self._sql.PURGE_PROCESSED, before, limit))
            if done < limit:
                done += _count(await self._pool.execute(
                    self._sql.PURGE_ERRORS, before, limit - done, keep_errors_of))
        return done
