"""Stream items, routes and mailboxes on SQLite.

SQLite has one writer at a time, so an item is numbered in the transaction that
stores it and positions follow commit order. The writes of the publish and
connect paths (``append``, routes, mail) go through the group-committed writer,
each in a savepoint of a shared transaction; maintenance (``trim``, purges,
renewals) runs in transactions of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from covey.storage._stream_rows import (
    ItemKey,
    answer,
    fresh_entries,
    head_of,
    item_of,
    item_params,
    mail_of,
    mail_params,
    new_epoch,
    place,
    route_of,
    route_params,
)
from covey.storage._streams_checked import CheckedTransactionalStreams
from covey.storage._streams_contract import Mail, Route, StreamEntry, StreamHead, StreamItem
from covey.storage.sqlite import _stream_queries as q
from covey.storage.sqlite._connection import SqliteDatabase, changed
from covey.storage.sqlite._writer import SqliteGroupWriter

T = TypeVar("T")

#: keys per ``IN (...)``: far below SQLite's limit on bound parameters
_CHUNK = 500


def _chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


def store_entries(conn: sqlite3.Connection, entries: list[StreamEntry],
                  now: float) -> list[StreamItem]:
    """Append ``entries`` in the caller's transaction (see :meth:`StreamStore.append`)."""
    found: dict[ItemKey, StreamItem] = {}
    for entry in entries:
        row = conn.execute(q.STORED_ITEM, (entry.stream, entry.id)).fetchone()
        if row is not None:
            found[(entry.stream, entry.id)] = item_of(row[0], row[1:])
    for stream, fresh in fresh_entries(entries, found).items():
        head = conn.execute(q.HEAD, (stream,)).fetchone()
        if head is None:
            epoch, last = new_epoch(), 0
            conn.execute(q.CREATE_HEAD, (stream, epoch, len(fresh), now))
        else:
            epoch, last = int(head[0]), int(head[1])
            conn.execute(q.MOVE_HEAD, (len(fresh), now, stream))
        items = place(fresh, epoch, last + 1)
        conn.executemany(q.INSERT_ITEM, [item_params(item) for item in items])
        found.update(((stream, item.id), item) for item in items)
    return answer(entries, found)


class SqliteStreamStore(CheckedTransactionalStreams):
    """:class:`covey.storage.StreamStore` on SQLite.

    ``append_in`` takes a :class:`sqlite3.Connection` the application opened on
    covey's database file, inside its own transaction: the items are inserted
    through it and exist only if the application commits.
    """

    connection_types = (sqlite3.Connection,)

    def __init__(self, db: SqliteDatabase, writer: SqliteGroupWriter) -> None:
        self._db = db
        self._writer = writer

    # ---- stream items --------------------------------------------------

    async def _append(self, entries: list[StreamEntry], now: float,
                      sync: bool) -> list[StreamItem]:
        return await self._writer.submit(lambda conn: store_entries(conn, entries, now))

    async def _append_in(self, connection: Any, entries: list[StreamEntry],
                         now: float) -> list[StreamItem]:
        return store_entries(connection, entries, now)

    async def _read(self, stream: str, after: int,
                    limit: int) -> tuple[StreamHead | None, list[StreamItem]]:
        query = q.HEADS.format(marks=q.marks(1))

        def run(conn: sqlite3.Connection) -> tuple[StreamHead | None, list[StreamItem]]:
            # two statements, one read transaction: the head and the items agree
            conn.execute("BEGIN")
            try:
                row = conn.execute(query, (stream,)).fetchone()
                if row is None:
                    return None, []
                head = head_of(row)
                return head, [item_of(head.epoch, item) for item in
                              conn.execute(q.READ_ITEMS, (stream, after, limit))]
            finally:
                conn.execute("COMMIT")

        return await self._db.read(run)

    async def _heads(self, streams: list[str]) -> dict[str, StreamHead]:
        def run(conn: sqlite3.Connection) -> dict[str, StreamHead]:
            heads: dict[str, StreamHead] = {}
            for chunk in _chunks(streams):
                query = q.HEADS.format(marks=q.marks(len(chunk)))
                heads.update((head.stream, head) for head in
                             map(head_of, conn.execute(query, list(chunk))))
            return heads

        return await self._db.read(run)

    async def _trim(self, keep: int, before: float, limit: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            deleted = 0
            for query, first in ((q.TRIM_IDLE_ITEMS, before), (q.TRIM_IDLE_HEADS, before),
                                 (q.TRIM_BEYOND_KEEP, keep),
                                 (q.TRIM_PUBLISHED_BEFORE, before)):
                if deleted < limit:
                    deleted += changed(conn, query, (first, limit - deleted))
            return deleted

        return await self._db.write(run)

    async def _stream_stats(self) -> tuple[int, int]:
        row = await self._db.read(lambda conn: conn.execute(q.STREAM_STATS).fetchone())
        return int(row[0]), int(row[1])

    # ---- routes --------------------------------------------------------

    async def _put_routes(self, routes: list[Route]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany(q.PUT_ROUTE, [route_params(route) for route in routes])

        await self._writer.submit(run)

    async def _renew_routes(self, runner: str, expires_at: float) -> int:
        return await self._db.write(lambda conn: changed(conn, q.RENEW_ROUTES,
                                                         (expires_at, runner)))

    async def _delete_routes(self, kind: str, pairs: list[tuple[str, str]]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return sum(changed(conn, q.DELETE_ROUTE, (kind, key, c)) for key, c in pairs)

        return await self._writer.submit(run)

    async def _delete_runner_routes(self, runner: str) -> int:
        return await self._db.write(lambda conn: changed(conn, q.DELETE_RUNNER_ROUTES,
                                                         (runner,)))

    async def _routes(self, kind: str, keys: list[str], now: float) -> list[Route]:
        def run(conn: sqlite3.Connection) -> list[Route]:
            found: list[Route] = []
            for chunk in _chunks(keys):  # keys are sorted: chunks keep the order
                query = q.ROUTES.format(marks=q.marks(len(chunk)))
                found.extend(map(route_of, conn.execute(query, [kind, *chunk, now])))
            return found

        return await self._db.read(run)

    async def _route_counts(self, now: float) -> dict[tuple[str, str], int]:
        rows = await self._db.read(lambda conn: conn.execute(q.ROUTE_COUNTS, (now,)).fetchall())
        return {(str(runner), str(kind)): int(count) for runner, kind, count in rows}

    async def _purge_routes(self, now: float, limit: int) -> int:
        return await self._db.write(lambda conn: changed(conn, q.PURGE_ROUTES, (now, limit)))

    # ---- mailboxes -----------------------------------------------------

    async def _put_mail(self, mails: list[Mail]) -> list[bool]:
        def run(conn: sqlite3.Connection) -> list[bool]:
            return [changed(conn, q.PUT_MAIL, mail_params(mail)) == 1 for mail in mails]

        return await self._writer.submit(run)

    async def _mail(self, key: str, now: float, limit: int) -> list[Mail]:
        return await self._db.read(
            lambda conn: [mail_of(row) for row in conn.execute(q.MAIL, (key, now, limit))])

    async def _delete_mail(self, key: str, ids: list[str]) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return sum(changed(conn, q.DELETE_MAIL.format(marks=q.marks(len(chunk))),
                               [key, *chunk]) for chunk in _chunks(ids))

        return await self._writer.submit(run)

    async def _purge_mail(self, now: float, limit: int) -> int:
        return await self._db.write(lambda conn: changed(conn, q.PURGE_MAIL, (now, limit)))
