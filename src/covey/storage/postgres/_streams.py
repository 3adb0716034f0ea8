"""Stream items, routes and mailboxes on PostgreSQL.

An append is one transaction: it reads which ids the streams hold already (a
retried append burns no position), then creates or moves every head it needs
in key order (``INSERT .. ON CONFLICT DO UPDATE .. RETURNING``: the row lock is
held until commit, so a second appender of a stream waits and positions follow
commit order), then inserts the items. Should a concurrent retry of the same id
commit between the read and the lock, the insert finds it (``ON CONFLICT DO
NOTHING`` stores fewer rows than sent): the transaction (or, inside the
application's or a unit of work's, a savepoint of it) is rolled back and the
append runs again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from covey.core import Reason, StorageError
from covey.storage._errors import invalid
from covey.storage._message import encode_headers
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
from covey.storage.postgres._errors import translated
from covey.storage.postgres._stream_queries import StreamStatements
from covey.storage.postgres._transaction import PostgresTransaction

#: how many times an append runs again after racing a concurrent retry of its ids
_ATTEMPTS = 3
_SAVEPOINT = "SAVEPOINT covey_stream_append"
#: undo and forget the savepoint (one simple query: a single round trip)
_ROLLBACK_TO = ("ROLLBACK TO SAVEPOINT covey_stream_append;"
                " RELEASE SAVEPOINT covey_stream_append")
_RELEASE = "RELEASE SAVEPOINT covey_stream_append"
#: this transaction's commit does not wait for the WAL flush (``sync=False``)
_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"


class _Raced(Exception):
    """A concurrent append stored one of the ids after this one looked for it."""


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column: the arrays a batch statement unnests."""
    return [list(column) for column in zip(*rows, strict=True)]


class PostgresStreamStore(CheckedTransactionalStreams):
    """:class:`covey.storage.StreamStore` on PostgreSQL.

    ``append_in`` stores through the application's asyncpg connection, inside
    its transaction (in a savepoint of it): the items exist only if it commits,
    and the heads they moved stay locked until then. It also takes a unit of
    work's handle (:class:`~covey.storage.postgres.PostgresTransaction`): the
    unit goes live and the items commit with its reply.

    Args:
        pool: the storage's asyncpg pool.
        schema: the storage's schema, quoted.
    """

    connection_types = (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy,
                        PostgresTransaction)

    def __init__(self, pool: Any, schema: str) -> None:
        self._pool = pool
        self._sql = StreamStatements(schema)

    # ---- stream items --------------------------------------------------

    async def _append(self, entries: list[StreamEntry], now: float,
                      sync: bool) -> list[StreamItem]:
        if len(entries) == 1:  # the common publish: one statement
            with translated("appending to a stream"):
                one = await self._append_one(entries[0], now, sync)
            if one is not None:
                return [one]

        async def attempt() -> list[StreamItem]:
            async with self._pool.acquire() as conn, conn.transaction():
                if not sync:
                    await conn.execute(_ASYNC_COMMIT)
                return await _store(conn, self._sql, entries, now)

        with translated("appending to streams"):
            return await _retried(attempt)

    async def _append_one(self, entry: StreamEntry, now: float,
                          sync: bool) -> StreamItem | None:
        """:data:`StreamStatements.APPEND_ONE`; ``None`` when the stream holds the id
        (or a concurrent retry of it won the race): the full append answers then."""
        args = (entry.stream, new_epoch(), entry.id, entry.payload,
                encode_headers(entry.headers), entry.published_at, now)
        try:
            if sync:  # its own transaction: one round trip
                row = await self._pool.fetchrow(self._sql.APPEND_ONE, *args)
            else:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(_ASYNC_COMMIT)
                    row = await conn.fetchrow(self._sql.APPEND_ONE, *args)
        except asyncpg.UniqueViolationError:
            return None
        if row is None:
            return None
        return StreamItem(entry.stream, int(row[0]), int(row[1]), entry.id, entry.payload,
                          dict(entry.headers), entry.published_at)

    async def _append_in(self, connection: Any, entries: list[StreamEntry],
                         now: float) -> list[StreamItem]:
        if isinstance(connection, PostgresTransaction):
            # a unit's handle: its connection, inside covey's transaction (the
            # positions are known now, so nothing can be staged for the commit)
            connection = await connection.connection()
        if not connection.is_in_transaction():
            # each statement would commit alone: items without the application's rows
            raise invalid("connection", connection, "a connection inside an open transaction")

        with translated("appending to streams in the application's transaction"):
            return await store_in(connection, self._sql, entries, now)

    async def _read(self, stream: str, after: int,
                    limit: int) -> tuple[StreamHead | None, list[StreamItem]]:
        with translated("reading a stream"):
            rows = await self._pool.fetch(self._sql.READ, stream, after, limit)
        if not rows:
            return None, []
        head = head_of(rows[0][:5])
        return head, [item_of(head.epoch, row[5:]) for row in rows if row[6] is not None]

    async def _heads(self, streams: list[str]) -> dict[str, StreamHead]:
        with translated("reading stream heads"):
            rows = await self._pool.fetch(self._sql.HEADS, streams)
        return {head.stream: head for head in map(head_of, rows)}

    async def _trim(self, keep: int, before: float, limit: int) -> int:
        sql = self._sql
        with translated("trimming streams"):
            async with self._pool.acquire() as conn, conn.transaction():
                idle = [row[0] for row in await conn.fetch(sql.LOCK_IDLE, before, limit)]
                steps: list[tuple[str, Any]] = [(sql.TRIM_BEYOND_KEEP, keep),
                                                (sql.TRIM_PUBLISHED_BEFORE, before)]
                if idle:  # their items first: a head goes once it has none left
                    steps[:0] = [(sql.TRIM_IDLE_ITEMS, idle), (sql.TRIM_IDLE_HEADS, idle)]
                deleted = 0
                for query, first in steps:
                    if deleted < limit:
                        deleted += _count(await conn.execute(query, first, limit - deleted))
                return deleted

    async def _stream_stats(self) -> tuple[int, int]:
        with translated("counting streams"):
            row = await self._pool.fetchrow(self._sql.STREAM_STATS)
        return int(row[0]), int(row[1])

    # ---- routes --------------------------------------------------------

    # Routes are soft state (each pod renews its own every few seconds, and they
    # expire), and so is the deletion of delivered or expired mail (lost, it is
    # delivered again: clients drop a repeated id): these writes commit without
    # waiting for the WAL flush, so a storm of reconnecting clients does not
    # queue behind the disk. Storing mail waits for it.

    async def _put_routes(self, routes: list[Route]) -> None:
        await self._soft("storing routes", self._sql.PUT_ROUTES,
                         *_columns([route_params(route) for route in routes]))

    async def _soft(self, what: str, query: str, *args: Any) -> int:
        """``query`` in a transaction that commits without waiting for the flush."""
        with translated(what):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_ASYNC_COMMIT)
                return _count(await conn.execute(query, *args))

    async def _renew_routes(self, runner: str, expires_at: float) -> int:
        return await self._soft("renewing routes", self._sql.RENEW_ROUTES, runner,
                                   expires_at)

    async def _delete_routes(self, kind: str, pairs: list[tuple[str, str]]) -> int:
        keys, conns = _columns(list(pairs))
        return await self._soft("deleting routes", self._sql.DELETE_ROUTES, kind, keys,
                                   conns)

    async def _delete_runner_routes(self, runner: str) -> int:
        return await self._soft("deleting a runner's routes",
                                   self._sql.DELETE_RUNNER_ROUTES, runner)

    async def _routes(self, kind: str, keys: list[str], now: float) -> list[Route]:
        with translated("reading routes"):
            rows = await self._pool.fetch(self._sql.ROUTES, kind, keys, now)
        return [route_of(row) for row in rows]

    async def _route_counts(self, now: float) -> dict[tuple[str, str], int]:
        with translated("counting routes"):
            rows = await self._pool.fetch(self._sql.ROUTE_COUNTS, now)
        return {(str(runner), str(kind)): int(count) for runner, kind, count in rows}

    async def _purge_routes(self, now: float, limit: int) -> int:
        return await self._soft("purging routes", self._sql.PURGE_ROUTES, now, limit)

    # ---- mailboxes -----------------------------------------------------

    async def _put_mail(self, mails: list[Mail]) -> list[bool]:
        with translated("storing mail"):
            rows = await self._pool.fetch(self._sql.PUT_MAIL,
                                          *_columns([mail_params(mail) for mail in mails]))
        stored = {(row[0], row[1]) for row in rows}
        return [(mail.key, mail.id) in stored for mail in mails]

    async def _mail(self, key: str, now: float, limit: int) -> list[Mail]:
        with translated("reading mail"):
            rows = await self._pool.fetch(self._sql.MAIL, key, now, limit)
        return [mail_of(row) for row in rows]

    async def _delete_mail(self, key: str, ids: list[str]) -> int:
        return await self._soft("deleting mail", self._sql.DELETE_MAIL, key, ids)

    async def _purge_mail(self, now: float, limit: int) -> int:
        return await self._soft("purging mail", self._sql.PURGE_MAIL, now, limit)


async def _retried(attempt: Callable[[], Awaitable[list[StreamItem]]]) -> list[StreamItem]:
    """``attempt()`` again while it races concurrent retries of its ids (each time it
    rolled back; the next one finds the ids stored)."""
    for _ in range(_ATTEMPTS):
        try:
            return await attempt()
        except _Raced:
            continue
    raise StorageError(f"an append raced concurrent appends of the same ids {_ATTEMPTS} "
                       "times; retry it", reason=Reason.STORAGE_UNAVAILABLE)


async def store_in(conn: Any, sql: StreamStatements, entries: list[StreamEntry],
                   now: float) -> list[StreamItem]:
    """Append checked ``entries`` in the transaction open on ``conn`` (the
    application's, or a unit of work's commit), in a savepoint of it: a race with a
    concurrent retry of an id (or a refusal) undoes only this append, which runs
    again. The heads it moved stay locked until that transaction ends.

    Raises:
        StorageError: the append raced concurrent appends of its ids too often.
    """
    async def attempt() -> list[StreamItem]:
        # By hand, not conn.transaction(): asyncpg refuses that inside a
        # transaction begun with a plain BEGIN.
        await conn.execute(_SAVEPOINT)
        try:
            items = await _store(conn, sql, entries, now)
        except Exception:
            with contextlib.suppress(Exception):  # a lost connection: nothing to undo
                await conn.execute(_ROLLBACK_TO)
            raise
        await conn.execute(_RELEASE)
        return items

    return await _retried(attempt)


async def _store(conn: Any, sql: StreamStatements, entries: list[StreamEntry],
                 now: float) -> list[StreamItem]:
    """One attempt of an append in the transaction open on ``conn``.

    Raises:
        _Raced: a concurrent append stored one of the ids after this one looked.
    """
    rows = await conn.fetch(sql.STORED_ITEMS, [e.stream for e in entries],
                            [e.id for e in entries])
    found: dict[ItemKey, StreamItem] = {
        (row[1], row[3]): item_of(row[0], row[1:]) for row in rows}
    fresh = fresh_entries(entries, found)
    if not fresh:
        return answer(entries, found)  # a retry: no head moves, no position burns
    streams = list(fresh)  # in key order: the order the heads are locked in
    heads = await conn.fetch(sql.MOVE_HEADS, streams, [new_epoch() for _ in streams],
                             [len(fresh[stream]) for stream in streams], now)
    placed: list[StreamItem] = []
    for stream, epoch, last in heads:
        batch = fresh[stream]
        placed.extend(place(batch, int(epoch), int(last) - len(batch) + 1))
    status = await conn.execute(sql.INSERT_ITEMS,
                                *_columns([item_params(item) for item in placed]))
    if _count(status) != len(placed):
        raise _Raced
    found.update(((item.stream, item.id), item) for item in placed)
    return answer(entries, found)
