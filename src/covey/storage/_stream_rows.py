"""What every stream-store backend shares: epochs, the append plan and stored rows.

:func:`fresh_entries` and :func:`place` are the append rule itself (which
entries get a position, which one), so memory, SQLite and PostgreSQL number a
batch the same way. The SQL backends select the column lists below in this
order and hand the rows here by position (a ``sqlite3`` tuple or an asyncpg
``Record``); headers are stored as JSON text, as for messages and events.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from covey.core import Reason, StorageError
from covey.storage._message import encode_headers
from covey.storage._streams_contract import Mail, Route, StreamEntry, StreamHead, StreamItem

#: an epoch is a positive integer below 2**53 (exact in JavaScript and JSON)
EPOCH_LIMIT = 1 << 53

#: an item row without its epoch (that is the head's)
ITEM_COLUMNS = "stream, position, id, payload, headers, published_at"
ROUTE_COLUMNS = "kind, key, conn, runner, tenant, expires_at"
MAIL_COLUMNS = "key, id, payload, headers, stored_at, expires_at"

#: one item of a stream, by its id
ItemKey = tuple[str, int]


def new_epoch() -> int:
    """A new head's epoch: random in 1..2**53-1 (never 0, which means "no stream")."""
    return secrets.randbelow(EPOCH_LIMIT - 1) + 1


def fresh_entries(entries: Sequence[StreamEntry],
                  stored: Mapping[ItemKey, StreamItem]) -> dict[str, list[StreamEntry]]:
    """The entries that get a position, by stream, in argument order: the first of
    each id that its stream does not hold already. Streams in key order."""
    seen: set[ItemKey] = set(stored)
    fresh: dict[str, list[StreamEntry]] = {}
    for entry in entries:
        key = (entry.stream, entry.id)
        if key not in seen:
            seen.add(key)
            fresh.setdefault(entry.stream, []).append(entry)
    return {stream: fresh[stream] for stream in sorted(fresh)}


def place(entries: Sequence[StreamEntry], epoch: int, first: int) -> list[StreamItem]:
    """``entries`` (of one stream) as items at consecutive positions from ``first``."""
    return [StreamItem(e.stream, epoch, first + n, e.id, e.payload, dict(e.headers),
                       e.published_at) for n, e in enumerate(entries)]


def answer(entries: Sequence[StreamEntry],
           found: Mapping[ItemKey, StreamItem]) -> list[StreamItem]:
    """One item per entry, in order: the one stored now or the one stored before."""
    return [found[(entry.stream, entry.id)] for entry in entries]


def corrupt_row(what: str, problem: str, **details: object) -> StorageError:
    """A stored stream item or mail (``what``) that cannot be read back."""
    return StorageError(f"stored {what} is corrupt: {problem}",
                        reason=Reason.STORAGE_CORRUPT, **details)


def _item(stream: object, position: object) -> tuple[str, dict[str, object]]:
    return f"item {position} of stream {stream!r}", {"stream": str(stream), "position": position}


def decode_headers(raw: object, what: str, **details: object) -> dict[str, str]:
    """Stored headers (JSON text) back into a dict; anything else is corrupt."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise corrupt_row(what, "its headers are not text", **details)
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise corrupt_row(what, "its headers are not valid JSON", **details) from exc
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise corrupt_row(what, "its headers are not a string map", **details)
    return value


def item_params(item: StreamItem) -> tuple[Any, ...]:
    """The values stored for ``item``, in :data:`ITEM_COLUMNS` order."""
    return (item.stream, item.position, item.id, item.payload, encode_headers(item.headers),
            item.published_at)


def item_of(epoch: int, row: Sequence[Any]) -> StreamItem:
    """A row of :data:`ITEM_COLUMNS` of a stream at ``epoch`` as a :class:`StreamItem`."""
    what, details = _item(row[0], row[1])
    headers = decode_headers(row[4], what, **details)
    if not isinstance(row[3], bytes | memoryview):
        raise corrupt_row(what, "its payload is not bytes", **details)
    try:
        return StreamItem(str(row[0]), int(epoch), int(row[1]), int(row[2]), bytes(row[3]),
                          headers, float(row[5]))
    except (TypeError, ValueError) as exc:
        raise corrupt_row(what, f"unexpected value: {exc}", **details) from exc


def head_of(row: Sequence[Any]) -> StreamHead:
    """A row of ``stream, epoch, last, updated_at, first`` (``first`` NULL: no items)."""
    last = int(row[2])
    return StreamHead(str(row[0]), int(row[1]), last, last + 1 if row[4] is None else int(row[4]),
                      float(row[3]))


def route_of(row: Sequence[Any]) -> Route:
    """A row of :data:`ROUTE_COLUMNS` as a :class:`Route`."""
    return Route(kind=str(row[0]), key=str(row[1]), conn=str(row[2]), runner=str(row[3]),
                 tenant=str(row[4]), expires_at=float(row[5]))


def route_params(route: Route) -> tuple[Any, ...]:
    """The values stored for ``route``, in :data:`ROUTE_COLUMNS` order."""
    return (route.kind, route.key, route.conn, route.runner, route.tenant, route.expires_at)


def mail_of(row: Sequence[Any]) -> Mail:
    """A row of :data:`MAIL_COLUMNS` as a :class:`Mail`."""
    what, details = f"mail {row[1]!r} of {row[0]!r}", {"key": str(row[0]), "id": str(row[1])}
    headers = decode_headers(row[3], what, **details)
    if not isinstance(row[2], bytes | memoryview):
        raise corrupt_row(what, "its payload is not bytes", **details)
    return Mail(key=str(row[0]), id=str(row[1]), payload=bytes(row[2]), headers=headers,
                stored_at=float(row[4]), expires_at=float(row[5]))


def mail_params(mail: Mail) -> tuple[Any, ...]:
    """The values stored for ``mail``, in :data:`MAIL_COLUMNS` order."""
    return (mail.key, mail.id, mail.payload, encode_headers(mail.headers), mail.stored_at,
            mail.expires_at)
