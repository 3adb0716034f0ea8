"""The unit of work on SQLite: everything staged, then one ``BEGIN IMMEDIATE``."""

from __future__ import annotations

import sqlite3

from covey.core import Clock
from covey.storage._events_contract import EventRecord
from covey.storage._message import Message
from covey.storage._model import Fence, Reply
from covey.storage._streams_contract import StreamEntry
from covey.storage._unit import CheckedUnitOfWork, PlainCompletion, StateWrite
from covey.storage.sqlite import _queries as q
from covey.storage.sqlite._connection import SqliteDatabase
from covey.storage.sqlite._streams import store_entries
from covey.storage.sqlite._transaction import SqliteTransaction, Staged, run_staged
from covey.storage.sqlite._writes import (
    check_completable,
    insert_event,
    insert_message,
    write_state,
)


class SqliteUnitOfWork(CheckedUnitOfWork):
    """A unit on SQLite: nothing touches the file until :meth:`commit`, which is one
    :meth:`SqliteDatabase.write` (one job on the connection's thread, one transaction).

    Its order: the fenced-completion rule (the message exists, lives in the fenced
    shard, the epoch is current, no reply yet), the state compare-and-sets, the
    application's staged statements, the outgoing messages, the events, the stream
    items (numbered in this transaction: SQLite has one writer, so positions
    follow commit order), the reply. The first refusal rolls everything back.
    """

    __slots__ = ("_app", "_clock", "_db")

    def __init__(self, db: SqliteDatabase, fence: Fence, request_id: int,
                 plain: PlainCompletion, clock: Clock) -> None:
        super().__init__(fence, request_id, plain)
        self._db = db
        self._clock = clock
        self._app: SqliteTransaction | None = None

    async def _transaction(self) -> SqliteTransaction:
        if self._app is None:
            self._app = SqliteTransaction(self._db)
        return self._app

    async def _commit(self, reply: Reply, states: list[StateWrite], sent: list[Message],
                      events: list[EventRecord], streams: list[StreamEntry]) -> None:
        staged: list[Staged] = []
        if self._app is not None:
            self._app.close()
            staged = self._app.staged
        fence, now = self.fence, self._clock.now()

        def work(conn: sqlite3.Connection) -> None:
            check_completable(conn, reply.request_id, fence)
            for write in states:
                write_state(conn, write)
            run_staged(conn, staged)
            for message in sent:
                insert_message(conn, message, now)
            for event in events:
                insert_event(conn, event)
            if streams:
                store_entries(conn, streams, now)
            conn.execute(q.COMPLETE, (now, reply.payload, int(reply.is_error), reply.request_id))

        await self._db.write(work)

    async def _discard(self) -> None:
        if self._app is not None:
            self._app.close()
