"""The public face of every backend's :class:`~covey.storage.StreamStore`: check, then call.

As in :mod:`covey.storage._events_checked`, the public methods of
:class:`CheckedStreamStore` are ``@final``: they check their arguments once,
here, so memory, SQLite and PostgreSQL refuse a bad value the same way
(``invalid_argument`` naming the field, nothing stored), and hand the backend
values it can trust: keys of 1..:data:`MAX_STREAM_KEY_BYTES` UTF-8 bytes without
NUL, ids in int64, finite times, limits of at least 1, batches as lists (routes
deduplicated by primary key, last one wins; a mail repeated in its batch is
answered ``False`` here). Calls that can only have an empty answer are answered
without a round trip.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, final

from covey.core.runtime import check_text
from covey.storage._checks import INT64_MAX, check_id, check_int, check_limit, check_time
from covey.storage._errors import invalid
from covey.storage._message import check_headers
from covey.storage._streams_contract import (
    MAX_STREAM_KEY_BYTES,
    Mail,
    Route,
    StreamEntry,
    StreamHead,
    StreamItem,
)

#: What a route's ``kind`` may be.
ROUTE_KINDS = ("stream", "user")


def check_key(field: str, value: object) -> str:
    """``value`` if it is a stream, route or mailbox key: 1..300 UTF-8 bytes, no NUL."""
    return check_text(field, value, max_bytes=MAX_STREAM_KEY_BYTES)


def check_kind(field: str, value: object) -> str:
    """``value`` if it is a route kind: ``"stream"`` or ``"user"``."""
    if not isinstance(value, str) or value not in ROUTE_KINDS:
        raise invalid(field, value, "'stream' or 'user'")
    return value


def _batch(field: str, value: object) -> list[Any]:
    """A batch argument as a list (a str, bytes or mapping is not a batch)."""
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise invalid(field, value, "a sequence")
    return list(value)


def _keys(field: str, value: object) -> list[str]:
    """Distinct keys of a collection argument, sorted."""
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise invalid(field, value, "a collection of keys")
    return sorted({check_key(field, key) for key in value})


def check_entry(entry: object) -> StreamEntry:
    """Refuse an entry no backend can store the same way."""
    if not isinstance(entry, StreamEntry):
        raise invalid("entry", entry, "a StreamEntry")
    check_key("entry.stream", entry.stream)
    check_id("entry.id", entry.id)
    if not isinstance(entry.payload, bytes):
        raise invalid("entry.payload", entry.payload, "bytes")
    check_headers(entry.headers, "entry.headers")
    check_time("entry.published_at", entry.published_at)
    return entry


def check_entries(entries: object) -> list[StreamEntry]:
    """``entries`` as a list if it is a batch of entries each :func:`check_entry` accepts
    (``details["field"]``: ``"entries"`` for the batch itself, ``"entry…"`` for one)."""
    return [check_entry(entry) for entry in _batch("entries", entries)]


def check_route(route: object) -> Route:
    """Refuse a route no backend can store the same way."""
    if not isinstance(route, Route):
        raise invalid("route", route, "a Route")
    check_kind("route.kind", route.kind)
    check_key("route.key", route.key)
    check_key("route.conn", route.conn)
    check_key("route.runner", route.runner)
    check_text("route.tenant", route.tenant, max_bytes=MAX_STREAM_KEY_BYTES, empty=True)
    check_time("route.expires_at", route.expires_at)
    return route


def check_mail(mail: object) -> Mail:
    """Refuse a mail no backend can store the same way."""
    if not isinstance(mail, Mail):
        raise invalid("mail", mail, "a Mail")
    check_key("mail.key", mail.key)
    check_key("mail.id", mail.id)
    if not isinstance(mail.payload, bytes):
        raise invalid("mail.payload", mail.payload, "bytes")
    check_headers(mail.headers, "mail.headers")
    check_time("mail.stored_at", mail.stored_at)
    check_time("mail.expires_at", mail.expires_at)
    return mail


def check_pairs(pairs: object) -> list[tuple[str, str]]:
    """Distinct ``(key, conn)`` pairs, sorted."""
    found: set[tuple[str, str]] = set()
    for pair in _batch("pairs", pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise invalid("pairs", pair, "a (key, conn) tuple")
        found.add((check_key("pairs", pair[0]), check_key("pairs", pair[1])))
    return sorted(found)


class CheckedStreamStore(ABC):
    """:class:`~covey.storage.StreamStore` with its checks; backends implement ``_`` methods."""

    # ---- stream items --------------------------------------------------

    @final
    async def append(self, entries: Sequence[StreamEntry], *, now: float,
                     sync: bool = True) -> list[StreamItem]:
        checked = check_entries(entries)
        seconds = check_time("now", now)
        return await self._append(checked, seconds, bool(sync)) if checked else []

    @final
    async def read(self, stream: str, after: int, *,
                   limit: int = 1000) -> tuple[StreamHead | None, list[StreamItem]]:
        key = check_key("stream", stream)
        check_int("after", after, 0, INT64_MAX)
        check_limit(limit, low=1)
        return await self._read(key, after, limit)

    @final
    async def heads(self, streams: Collection[str]) -> dict[str, StreamHead]:
        keys = _keys("streams", streams)
        return await self._heads(keys) if keys else {}

    @final
    async def trim(self, *, keep: int, before: float, limit: int = 10_000) -> int:
        check_int("keep", keep, 0, INT64_MAX)
        seconds = check_time("before", before)
        check_limit(limit, low=1)
        return await self._trim(keep, seconds, limit)

    @final
    async def stream_stats(self) -> tuple[int, int]:
        return await self._stream_stats()

    # ---- routes --------------------------------------------------------

    @final
    async def put_routes(self, routes: Sequence[Route]) -> None:
        # by primary key, the last one wins: one statement may not write a row twice
        unique = {(r.kind, r.key, r.conn): r
                  for r in (check_route(route) for route in _batch("routes", routes))}
        if unique:
            await self._put_routes([unique[k] for k in sorted(unique)])

    @final
    async def renew_routes(self, runner: str, expires_at: float) -> int:
        check_key("runner", runner)
        return await self._renew_routes(runner, check_time("expires_at", expires_at))

    @final
    async def delete_routes(self, kind: str, pairs: Sequence[tuple[str, str]]) -> int:
        check_kind("kind", kind)
        checked = check_pairs(pairs)
        return await self._delete_routes(kind, checked) if checked else 0

    @final
    async def delete_runner_routes(self, runner: str) -> int:
        return await self._delete_runner_routes(check_key("runner", runner))

    @final
    async def routes(self, kind: str, keys: Collection[str], *,
                     now: float) -> list[Route]:
        check_kind("kind", kind)
        wanted = _keys("keys", keys)
        seconds = check_time("now", now)
        return await self._routes(kind, wanted, seconds) if wanted else []

    @final
    async def route_counts(self, *, now: float) -> dict[tuple[str, str], int]:
        return await self._route_counts(check_time("now", now))

    @final
    async def purge_routes(self, *, now: float, limit: int = 10_000) -> int:
        seconds = check_time("now", now)
        check_limit(limit, low=1)
        return await self._purge_routes(seconds, limit)

    # ---- mailboxes -----------------------------------------------------

    @final
    async def put_mail(self, mails: Sequence[Mail]) -> list[bool]:
        checked = [check_mail(mail) for mail in _batch("mails", mails)]
        first: dict[tuple[str, str], int] = {}
        for index, mail in enumerate(checked):
            first.setdefault((mail.key, mail.id), index)
        if not first:
            return []
        unique = [checked[index] for index in first.values()]
        stored = dict(zip(first.values(), await self._put_mail(unique), strict=True))
        # a repeat within the batch is a mail stored already: the first copy is kept
        return [stored.get(index, False) for index in range(len(checked))]

    @final
    async def mail(self, key: str, *, now: float, limit: int = 1000) -> list[Mail]:
        check_key("key", key)
        seconds = check_time("now", now)
        check_limit(limit, low=1)
        return await self._mail(key, seconds, limit)

    @final
    async def delete_mail(self, key: str, ids: Collection[str]) -> int:
        check_key("key", key)
        wanted = _keys("ids", ids)
        return await self._delete_mail(key, wanted) if wanted else 0

    @final
    async def purge_mail(self, *, now: float, limit: int = 10_000) -> int:
        seconds = check_time("now", now)
        check_limit(limit, low=1)
        return await self._purge_mail(seconds, limit)

    # ---- what backends implement ---------------------------------------

    @abstractmethod
    async def _append(self, entries: list[StreamEntry], now: float,
                      sync: bool) -> list[StreamItem]:
        """``entries`` is not empty."""

    @abstractmethod
    async def _read(self, stream: str, after: int,
                    limit: int) -> tuple[StreamHead | None, list[StreamItem]]: ...

    @abstractmethod
    async def _heads(self, streams: list[str]) -> dict[str, StreamHead]:
        """``streams``: distinct, sorted, not empty."""

    @abstractmethod
    async def _trim(self, keep: int, before: float, limit: int) -> int: ...

    @abstractmethod
    async def _stream_stats(self) -> tuple[int, int]: ...

    @abstractmethod
    async def _put_routes(self, routes: list[Route]) -> None:
        """``routes``: one per primary key, sorted by it, not empty."""

    @abstractmethod
    async def _renew_routes(self, runner: str, expires_at: float) -> int: ...

    @abstractmethod
    async def _delete_routes(self, kind: str, pairs: list[tuple[str, str]]) -> int:
        """``pairs``: distinct, sorted, not empty."""

    @abstractmethod
    async def _delete_runner_routes(self, runner: str) -> int: ...

    @abstractmethod
    async def _routes(self, kind: str, keys: list[str], now: float) -> list[Route]:
        """``keys``: distinct, sorted, not empty."""

    @abstractmethod
    async def _route_counts(self, now: float) -> dict[tuple[str, str], int]: ...

    @abstractmethod
    async def _purge_routes(self, now: float, limit: int) -> int: ...

    @abstractmethod
    async def _put_mail(self, mails: list[Mail]) -> list[bool]:
        """``mails``: distinct ``(key, id)``, in the caller's order, not empty."""

    @abstractmethod
    async def _mail(self, key: str, now: float, limit: int) -> list[Mail]: ...

    @abstractmethod
    async def _delete_mail(self, key: str, ids: list[str]) -> int:
        """``ids``: distinct, sorted, not empty."""

    @abstractmethod
    async def _purge_mail(self, now: float, limit: int) -> int: ...


class CheckedTransactionalStreams(CheckedStreamStore):
    """Adds :class:`~covey.storage.TransactionalStreams` with its checks.

    ``connection_types`` are the connection classes the backend accepts.
    """

    connection_types: tuple[type, ...] = ()

    @final
    async def append_in(self, connection: Any, entries: Sequence[StreamEntry], *,
                        now: float) -> list[StreamItem]:
        if not isinstance(connection, self.connection_types):
            raise invalid("connection", connection,
                          "a connection of the database, inside the application's transaction")
        checked = check_entries(entries)
        seconds = check_time("now", now)
        return await self._append_in(connection, checked, seconds) if checked else []

    @abstractmethod
    async def _append_in(self, connection: Any, entries: list[StreamEntry],
                         now: float) -> list[StreamItem]:
        """``entries`` is not empty."""
