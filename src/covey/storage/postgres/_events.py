"""The event log on PostgreSQL.

Appends are group-committed with the messages that deliver them
(:class:`~covey.storage.postgres._writer.SaveOp` with events: one transaction
per flush). Events are stored without a position; :meth:`sequence` (the events
singleton's job) stamps positions on committed rows older than every open
transaction, so positions follow the order in which rows can no longer appear
behind a reader.
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg

from covey.core.runtime import stable_hash
from covey.storage._errors import group_not_found
from covey.storage._event_rows import event_of, group_of, topic_of
from covey.storage._events_checked import CheckedTransactionalEvents
from covey.storage._events_contract import (
    DeliveryStats,
    EventGroup,
    EventRecord,
    GroupStart,
    TopicInfo,
)
from covey.storage._group_commit import GroupCommit
from covey.storage._message import Message
from covey.storage._model import SaveResult
from covey.storage.postgres._errors import translated
from covey.storage.postgres._event_queries import EventStatements
from covey.storage.postgres._runners import int64
from covey.storage.postgres._writer import Op, SaveOp, Writer


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresEventStore(CheckedTransactionalEvents):
    """:class:`covey.storage.EventStore` on PostgreSQL.

    ``append_in`` stores through the application's asyncpg connection, inside
    its transaction, and wakes the deliveries' owners at its commit with the
    same ``pg_notify`` as ``save_requests_in``.

    Args:
        pool: the storage's asyncpg pool.
        schema: the storage's schema (quoted) and its plain name.
        batcher: the group commit appends go through.
        writer: the group commit's flush (its save runs in the application's
            transaction too).
    """

    connection_types = (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)

    def __init__(self, pool: Any, schema: tuple[str, str], batcher: GroupCommit[Op, object],
                 writer: Writer) -> None:
        self._pool = pool
        self._sql = EventStatements(schema[0])
        self._batcher = batcher
        self._writer = writer
        #: the sequencer's lock: one per schema
        self._sequence_lock = int64(stable_hash(f"covey:{schema[1]}:events-sequence"))

    async def _append(self, events: list[EventRecord],
                      messages: list[Message]) -> list[SaveResult]:
        return cast(list[SaveResult], await self._batcher.submit(SaveOp(messages, events)))

    async def _append_in(self, connection: Any, events: list[EventRecord],
                         messages: list[Message]) -> list[SaveResult]:
        out: list[object] = [None]
        with translated("publishing events in the application's transaction"):
            await self._writer.save(connection, [(0, SaveOp(messages, events))], out)
            if messages:
                await self._writer.notify(connection, messages)
        if isinstance(out[0], BaseException):
            raise out[0]
        return cast(list[SaveResult], out[0])

    async def _sequence(self, limit: int) -> int:
        with translated("sequencing events"):
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(self._sql.SEQUENCE_LOCK, self._sequence_lock):
                    return 0  # another sequencer is at work
                return _count(await conn.execute(self._sql.SEQUENCE, limit))

    async def _read(self, after: int, topics: list[str] | None,
                    limit: int) -> list[EventRecord]:
        with translated("reading events"):
            rows = await self._pool.fetch(self._sql.READ, after, topics, limit)
        return [event_of(row) for row in rows]

    async def _unfanned(self, group: str, topic: str, after: int,
                        limit: int) -> tuple[list[EventRecord], int]:
        with translated("reading events a group lacks"):
            async with self._pool.acquire() as conn:
                end = await conn.fetchval(self._sql.WINDOW_END, topic, after, limit)
                if end is None:
                    return [], after
                rows = await conn.fetch(self._sql.UNFANNED, topic, after, end, group)
        return [event_of(row) for row in rows], int(end)

    async def _delivery_stats(self) -> list[DeliveryStats]:
        with translated("counting event deliveries"):
            rows = await self._pool.fetch(self._sql.DELIVERY_STATS)
        return [DeliveryStats(r[0], int(r[1]), r[2], int(r[3])) for r in rows]

    async def _get(self, event_id: int) -> EventRecord | None:
        with translated("reading an event"):
            row = await self._pool.fetchrow(self._sql.GET, event_id)
        return None if row is None else event_of(row)

    async def _last_position(self, topic: str | None) -> int:
        with translated("reading the last event position"):
            return int(await self._pool.fetchval(self._sql.LAST_POSITION, topic))

    async def _position_at(self, when: float, topic: str | None) -> int:
        with translated("reading an event position"):
            return int(await self._pool.fetchval(self._sql.POSITION_AT, when, topic))

    async def _register_group(self, group: str, topic: str, start: GroupStart,
                              now: float) -> EventGroup:
        with translated("registering an event group"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(self._sql.INSERT_GROUP, group, topic, start, now)
                row = await conn.fetchrow(self._sql.GET_GROUP, group, topic)
        return group_of(row)

    async def _groups_in(self, connection: Any, topic: str) -> list[EventGroup]:
        with translated("reading event groups in the application's transaction"):
            rows = await connection.fetch(self._sql.GROUPS, topic, None)
        return [group_of(row) for row in rows]

    async def _groups(self, topic: str | None, group: str | None) -> list[EventGroup]:
        with translated("reading event groups"):
            rows = await self._pool.fetch(self._sql.GROUPS, topic, group)
        return [group_of(row) for row in rows]

    async def _advance_group(self, group: str, topic: str, cursor: int) -> None:
        with translated("advancing an event group"):
            status = await self._pool.execute(self._sql.ADVANCE_GROUP, group, topic, cursor)
        if _count(status) == 0:
            raise group_not_found(group, topic)

    async def _replay_group(self, group: str, topic: str, after: int) -> EventGroup:
        with translated("replaying an event group"):
            row = await self._pool.fetchrow(self._sql.REPLAY_GROUP, group, topic, after)
        if row is None:
            raise group_not_found(group, topic)
        return group_of(row)

    async def _delete_group(self, group: str, topic: str | None) -> int:
        with translated("deleting an event group"):
            return _count(await self._pool.execute(self._sql.DELETE_GROUP, group, topic))

    async def _topics(self) -> list[TopicInfo]:
        with translated("reading event topics"):
            rows = await self._pool.fetch(self._sql.TOPICS)
        return [topic_of(row) for row in rows]

    async def _purge(self, before: float, limit: int) -> int:
        with translated("purging events"):
            return _count(await self._pool.execute(self._sql.PURGE, before, limit))
