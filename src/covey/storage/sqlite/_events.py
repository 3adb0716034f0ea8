"""The event log on SQLite.

SQLite has one writer at a time, so an event is numbered in the transaction
that stores it (positions follow commit order) and :meth:`sequence` has nothing
to do. ``append`` goes through the group-committed writer with the messages
that deliver the events, in one savepoint: all of it or none.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from covey.core import Clock
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
from covey.storage._message import Message
from covey.storage._model import SaveResult
from covey.storage.sqlite import _event_queries as q
from covey.storage.sqlite._connection import SqliteDatabase, changed
from covey.storage.sqlite._writer import SqliteGroupWriter
from covey.storage.sqlite._writes import insert_event, insert_message


def store_batch(conn: sqlite3.Connection, events: list[EventRecord], messages: list[Message],
                now: float) -> list[SaveResult]:
    """Insert ``messages`` and ``events`` in the caller's transaction."""
    results = [insert_message(conn, message, now) for message in messages]
    for event in events:
        insert_event(conn, event)
    return results


class SqliteEventStore(CheckedTransactionalEvents):
    """:class:`covey.storage.EventStore` on SQLite.

    ``append_in`` takes a :class:`sqlite3.Connection` the application opened on
    covey's database file, inside its own transaction: the rows are inserted
    through it and exist only if the application commits. No one is woken up
    then; the runners' safety poll finds the deliveries.
    """

    connection_types = (sqlite3.Connection,)

    def __init__(self, db: SqliteDatabase, writer: SqliteGroupWriter, clock: Clock) -> None:
        self._db = db
        self._writer = writer
        self._clock = clock

    async def _append(self, events: list[EventRecord],
                      messages: list[Message]) -> list[SaveResult]:
        now = self._clock.now()
        return await self._writer.submit(lambda conn: store_batch(conn, events, messages, now))

    async def _append_in(self, connection: Any, events: list[EventRecord],
                         messages: list[Message]) -> list[SaveResult]:
        return store_batch(connection, events, messages, self._clock.now())

    async def _groups_in(self, connection: Any, topic: str) -> list[EventGroup]:
        query = q.GROUPS.format(filters=" AND topic = ?")
        return [group_of(row) for row in connection.execute(query, [topic])]

    async def _read(self, after: int, topics: list[str] | None,
                    limit: int) -> list[EventRecord]:
        query = q.READ_EVENTS.format(topics=q.topic_filter(topics))
        params = [after, *(topics or ()), limit]
        return await self._db.read(
            lambda conn: [event_of(row) for row in conn.execute(query, params)])

    async def _delivery_stats(self) -> list[DeliveryStats]:
        return await self._db.read(lambda conn: [
            DeliveryStats(str(g), int(p or 0), o, int(d or 0))
            for g, p, o, d in conn.execute(q.DELIVERY_STATS)])

    async def _get(self, event_id: int) -> EventRecord | None:
        def run(conn: sqlite3.Connection) -> EventRecord | None:
            row = conn.execute(q.GET_EVENT, (event_id,)).fetchone()
            return None if row is None else event_of(row)

        return await self._db.read(run)

    async def _scalar(self, query: str, params: list[Any]) -> int:
        row = await self._db.read(lambda conn: conn.execute(query, params).fetchone())
        return int(row[0])

    async def _last_position(self, topic: str | None) -> int:
        topics = None if topic is None else [topic]
        return await self._scalar(q.LAST_POSITION.format(topics=q.topic_filter(topics)),
                                  list(topics or ()))

    async def _position_at(self, when: float, topic: str | None) -> int:
        topics = None if topic is None else [topic]
        return await self._scalar(q.POSITION_AT.format(topics=q.topic_filter(topics)),
                                  [when, *(topics or ())])

    async def _register_group(self, group: str, topic: str, start: GroupStart,
                              now: float) -> EventGroup:
        last = q.LAST_POSITION.format(topics=q.topic_filter([topic]))

        def run(conn: sqlite3.Connection) -> EventGroup:
            cursor = int(conn.execute(last, (topic,)).fetchone()[0]) if start == "latest" else 0
            conn.execute(q.INSERT_GROUP, (group, topic, start, now, cursor))
            return group_of(conn.execute(q.GET_GROUP, (group, topic)).fetchone())

        return await self._db.write(run)

    async def _groups(self, topic: str | None, group: str | None) -> list[EventGroup]:
        filters, params = "", []
        for column, value in (("grp", group), ("topic", topic)):
            if value is not None:
                filters += f" AND {column} = ?"
                params.append(value)
        query = q.GROUPS.format(filters=filters)
        return await self._db.read(
            lambda conn: [group_of(row) for row in conn.execute(query, params)])

    async def _advance_group(self, group: str, topic: str, cursor: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if not changed(conn, q.ADVANCE_GROUP, (cursor, group, topic)):
                raise group_not_found(group, topic)

        await self._db.write(run)

    async def _replay_group(self, group: str, topic: str, after: int) -> EventGroup:
        def run(conn: sqlite3.Connection) -> EventGroup:
            if not changed(conn, q.REPLAY_GROUP, (after, group, topic)):
                raise group_not_found(group, topic)
            return group_of(conn.execute(q.GET_GROUP, (group, topic)).fetchone())

        return await self._db.write(run)

    async def _delete_group(self, group: str, topic: str | None) -> int:
        topics = None if topic is None else [topic]
        query = q.DELETE_GROUP.format(topics=q.topic_filter(topics))
        params = [group, *(topics or ())]
        return await self._db.write(lambda conn: changed(conn, query, params))

    async def _topics(self) -> list[TopicInfo]:
        return await self._db.read(
            lambda conn: [topic_of(row) for row in conn.execute(q.TOPICS)])

    async def _purge(self, before: float, limit: int) -> int:
        return await self._db.write(lambda conn: changed(conn, q.PURGE_EVENTS, (before, limit)))
