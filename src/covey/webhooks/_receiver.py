"""The receiving side: an ASGI app that verifies webhooks and runs each id once.

Senders retry until they see a 2xx, and a retry keeps its ``webhook-id``; so the
receiver records the id in the same transaction as the application's own
writes (:class:`ReceivedStore`). Either both commit, and a resend is answered
``duplicate`` without running the handler, or both roll back, and the resend
runs it again. Mount it with ``app.mount("/hooks", WebhookReceiver(...))`` or
use it as a Starlette ``Route`` endpoint::

    POST, verified, new id           200 {"status": "ok"}        (handler ran, committed)
    POST, verified, id seen before   200 {"status": "duplicate"} (handler not called)
    signature or timestamp wrong     401 problem+json, nothing recorded
    body over max_body               413 (the rest is not read)
    the handler raised               500, rolled back: the sender retries
    the store failed                 503, rolled back: the sender retries
    any other method                 405
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from covey.core import Clock, Reason, StorageError, SystemClock, WebhookError
from covey.core.runtime import answer_lifespan, check_seconds, invalid_argument
from covey.webhooks._secrets import WebhookSecret, parse_secrets
from covey.webhooks._signing import VerifiedWebhook, check_message_id, verify

log = logging.getLogger("covey.webhooks")

__all__ = [
    "MemoryReceivedStore",
    "PostgresReceivedStore",
    "ReceivedStore",
    "SqliteReceivedStore",
    "WebhookReceiver",
]

Handler = Callable[[VerifiedWebhook, Any], Awaitable[None]]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TYPE_PREFIX = "urn:covey:reason:"  # the same problem types as covey.asgi
_TITLES = {401: "Unauthorized", 405: "Method Not Allowed", 413: "Content Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


T = TypeVar("T")
DEFAULT_TABLE = "covey_webhooks_received"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class ReceivedStore(Protocol):
    """Where received webhook ids are kept, so each one has its effect once."""

    def once(self, webhook_id: str) -> AbstractAsyncContextManager[Any | None]:
        """Record ``webhook_id`` in a new transaction and yield its handle.

        Yields ``None`` when the id was recorded before (a duplicate: skip it).
        Leaving the block normally commits the id and the writes made through
        the handle together; an exception rolls both back. A second ``once()``
        for the same id waits until the first one's transaction ends.
        """
        ...


def _table_name(table: str, *, qualified: bool) -> str:
    parts = table.split(".") if isinstance(table, str) else [""]
    if len(parts) > (2 if qualified else 1) or not all(_NAME.fullmatch(p) for p in parts):
        raise invalid_argument("table", "must be a plain SQL identifier"
                               + (" or schema.table" if qualified else ""))
    return ".".join(f'"{p}"' for p in parts)


class PostgresReceivedStore:
    """Received ids in a PostgreSQL table (``id TEXT PRIMARY KEY, received_at``).

    ``once()`` inserts the id with ``ON CONFLICT DO NOTHING`` in a transaction on
    a connection from ``pool`` and yields that connection. A concurrent request
    with the same id waits on the primary key until the first transaction ends:
    if it committed, the second sees a duplicate; if it rolled back, the second
    runs. So a resend that arrives while the first attempt is still running has
    no second effect.

    Args:
        pool: an ``asyncpg`` pool; the caller opens and closes it.
        table: the table's name (``schema.table`` allowed).
    """

    def __init__(self, pool: Any, *, table: str = DEFAULT_TABLE) -> None:
        self._pool = pool
        self._table = _table_name(table, qualified=True)

    async def setup(self) -> None:
        """Create the table (and its ``received_at`` index) if missing."""
        index = '"' + self._table.replace('"', "").replace(".", "_") + '_received_at"'
        async with self._pool.acquire() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (id TEXT PRIMARY KEY, "
                "received_at TIMESTAMPTZ NOT NULL DEFAULT now());"
                f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (received_at)")

    @asynccontextmanager
    async def once(self, webhook_id: str) -> AsyncIterator[Any | None]:
        """See :meth:`ReceivedStore.once`; the handle is an asyncpg connection."""
        check_message_id(webhook_id)
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                f"INSERT INTO {self._table} (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
                webhook_id)
            yield conn if status == "INSERT 0 1" else None

    async def purge(self, older_than: float) -> int:
        """Forget ids received more than ``older_than`` seconds ago; how many.

        Keep them longer than the sender retries (Svix: about 28 hours).
        """
        seconds = check_seconds("older_than", older_than)
        async with self._pool.acquire() as conn:
            status = await conn.execute(
                f"DELETE FROM {self._table} "
                "WHERE received_at < now() - $1::float8 * interval '1 second'", seconds)
        return int(status.split()[-1])


class SqliteReceivedStore:
    """Received ids in a table of a SQLite file (WAL), for one process.

    ``once()`` blocks run one at a time (an ``asyncio.Lock``), each inside
    ``BEGIN IMMEDIATE``, and yield the ``sqlite3.Connection``: the handler writes
    its effects through it, on the event loop's thread. The table is created on
    open.

    Args:
        path: the database file; missing parent directories are created.
        table: the table's name.
        clock: the time source for ``received_at`` (default: the system clock).
    """

    def __init__(self, path: str, *, table: str = DEFAULT_TABLE,
                 clock: Clock | None = None) -> None:
        self._table = _table_name(table, qualified=False)
        self._clock = clock or SystemClock()
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
        # check_same_thread=False: statements that may wait on another process's
        # lock run on a worker thread; the lock below keeps them from overlapping.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 5000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} "
                           "(id TEXT PRIMARY KEY, received_at REAL NOT NULL)")
        self._lock = asyncio.Lock()

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on a worker thread; if cancelled, still wait for it to end,
        so nothing else touches the connection while it runs."""
        future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    def _begin(self, webhook_id: str, now: float) -> bool:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._conn.execute(
                f"INSERT OR IGNORE INTO {self._table} (id, received_at) VALUES (?, ?)",
                (webhook_id, now))
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return cursor.rowcount == 1

    def _end(self, commit: bool) -> None:
        if not self._conn.in_transaction:
            return
        if commit:
            try:
                self._conn.execute("COMMIT")
                return
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
        self._conn.execute("ROLLBACK")

    @asynccontextmanager
    async def once(self, webhook_id: str) -> AsyncIterator[sqlite3.Connection | None]:
        """See :meth:`ReceivedStore.once`; the handle is the ``sqlite3.Connection``."""
        check_message_id(webhook_id)
        async with self._lock:
            try:
                inserted = await self._off_loop(self._begin, webhook_id, self._clock.now())
            except sqlite3.Error as exc:
                raise StorageError(f"cannot record webhook {webhook_id}: {exc}") from exc
            try:
                yield self._conn if inserted else None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._off_loop(self._end, False)
                raise
            try:
                await self._off_loop(self._end, True)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot commit webhook {webhook_id}: {exc}") from exc

    async def purge(self, older_than: float) -> int:
        """Forget ids received more than ``older_than`` seconds ago; how many."""
        cutoff = self._clock.now() - check_seconds("older_than", older_than)
        async with self._lock:
            cursor = await self._off_loop(
                self._conn.execute, f"DELETE FROM {self._table} WHERE received_at < ?",
                (cutoff,))
        return int(cursor.rowcount)

    def close(self) -> None:
        """Close the file; safe twice."""
        self._conn.close()


class MemoryReceivedStore:
    """Received ids in memory, for tests: NOT durable (a restart forgets them).

    ``once()`` yields a list: what the handler appends is added to
    :attr:`effects` when the block commits, and dropped when it raises, which
    models the application's transactional writes.

    Attributes:
        effects: everything committed handlers appended, in commit order.
    """

    def __init__(self) -> None:
        self.effects: list[Any] = []
        self._ids: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    def __contains__(self, webhook_id: object) -> bool:
        return webhook_id in self._ids

    @asynccontextmanager
    async def once(self, webhook_id: str) -> AsyncIterator[list[Any] | None]:
        """See :meth:`ReceivedStore.once`; the handle is a list of effects."""
        check_message_id(webhook_id)
        async with self._locks.setdefault(webhook_id, asyncio.Lock()):
            if webhook_id in self._ids:
                yield None
                return
            pending: list[Any] = []
            yield pending
            self._ids.add(webhook_id)
            self.effects.extend(pending)


class _TooLarge(Exception):
    pass


class WebhookReceiver:
    """An ASGI app that receives Standard Webhooks for one application.

    Args:
        secret: the sender's secret for this endpoint, or several while it rotates.
        handler: ``await handler(webhook, tx)`` for each new id; ``tx`` is the
            store's transaction handle (an asyncpg connection, a sqlite3
            connection): write the effects through it so they commit with the id.
        store: where received ids are kept (:class:`PostgresReceivedStore`,
            :class:`SqliteReceivedStore`).
        tolerance: seconds a timestamp may be off either way.
        max_body: the largest body accepted, in bytes.
        clock: the time source for the timestamp check (default: the system clock).

    Raises:
        ClusterError: ``invalid_argument`` for a malformed secret, a handler that is
            not callable or a ``max_body`` that is not a positive int.
    """

    def __init__(self, secret: str | WebhookSecret | Sequence[str | WebhookSecret],
                 handler: Handler, *, store: ReceivedStore, tolerance: float = 300.0,
                 max_body: int = 1_048_576, clock: Clock | None = None) -> None:
        self._secrets = parse_secrets(secret)
        if not callable(handler):
            raise invalid_argument("handler", "must be an async callable")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise invalid_argument("max_body", "must be a positive int")
        self._tolerance = check_seconds("tolerance", tolerance)
        self._handler = handler
        self._store = store
        self._max_body = max_body
        self._clock = clock or SystemClock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # run on its own: nothing to start
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not ours; returning closes the connection
        if scope.get("method") != "POST":
            await _respond(send, 405, _problem(405, Reason.INVALID_ARGUMENT, "use POST"),
                           [(b"allow", b"POST")])
            return
        try:
            body = await self._read_body(scope, receive)
        except _TooLarge:
            await _respond(send, 413, _problem(413, Reason.FRAME_TOO_LARGE,
                                               f"the body exceeds {self._max_body} bytes"))
            return
        if body is None:
            return  # the client went away
        try:
            webhook = verify(scope.get("headers", []), body, self._secrets,
                             tolerance=self._tolerance, now=self._clock.now())
        except WebhookError as exc:
            log.info("webhook refused (%s): %s", exc.reason.value, exc)
            await _respond(send, 401, _problem(401, exc.reason, str(exc)))
            return
        status, answer = await self._run_once(webhook)
        await _respond(send, status, answer,
                       content_type=b"application/json" if status == 200 else None)

    async def _run_once(self, webhook: VerifiedWebhook) -> tuple[int, dict[str, Any]]:
        handler_failed = False
        try:
            async with self._store.once(webhook.id) as tx:
                if tx is None:
                    return 200, {"status": "duplicate"}
                try:
                    await self._handler(webhook, tx)
                except Exception:
                    handler_failed = True
                    raise
        except Exception:
            if handler_failed:
                log.exception("webhook %s: the handler failed; rolled back", webhook.id)
                return 500, _problem(500, Reason.HANDLER_FAILED, "the handler failed")
            log.exception("webhook %s: the received-ids store failed", webhook.id)
            return 503, _problem(503, Reason.STORAGE_UNAVAILABLE, "the store failed")
        return 200, {"status": "ok"}

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length" and value.strip().isdigit() and (
                    int(value) > self._max_body):
                raise _TooLarge  # refused before reading a byte
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _problem(status: int, reason: Reason, detail: str) -> dict[str, Any]:
    return {"type": _TYPE_PREFIX + reason.value, "title": _TITLES[status], "status": status,
            "detail": detail, "reason": reason.value}


async def _respond(send: Send, status: int, body: dict[str, Any],
                   extra: list[tuple[bytes, bytes]] | None = None, *,
                   content_type: bytes | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", content_type or b"application/problem+json"),
               (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})

