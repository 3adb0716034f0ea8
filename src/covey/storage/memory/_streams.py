"""Stream items, routes and mailboxes of the in-memory backend.

Everything runs on one event loop without awaiting, so each call is atomic and
appends are numbered in the order they are made: positions follow commit order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from covey.storage._stream_rows import (
    ItemKey,
    answer,
    fresh_entries,
    new_epoch,
    place,
)
from covey.storage._streams_checked import CheckedStreamStore
from covey.storage._streams_contract import Mail, Route, StreamEntry, StreamHead, StreamItem


@dataclass(slots=True)
class _Stream:
    """One stream: its head and its stored items, by position (in position order)."""

    epoch: int
    last: int
    updated_at: float
    items: dict[int, StreamItem] = field(default_factory=dict)
    ids: dict[int, int] = field(default_factory=dict)  # id -> position

    def head(self, key: str) -> StreamHead:
        first = next(iter(self.items), self.last + 1)
        return StreamHead(key, self.epoch, self.last, first, self.updated_at)

    def drop(self, position: int) -> None:
        item = self.items.pop(position)
        del self.ids[item.id]


class InMemoryStreamStore(CheckedStreamStore):
    """:class:`~covey.storage.StreamStore` in dictionaries."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}
        self._route_rows: dict[tuple[str, str, str], Route] = {}
        #: key -> id -> mail; a dict keeps insertion order: the order they were stored
        self._boxes: dict[str, dict[str, Mail]] = {}

    # ---- stream items --------------------------------------------------

    async def _append(self, entries: list[StreamEntry], now: float,
                      sync: bool) -> list[StreamItem]:
        return self.store(entries, now)

    def store(self, entries: list[StreamEntry], now: float) -> list[StreamItem]:
        """:meth:`append` of checked ``entries``, synchronously: a unit of work's commit
        calls it with its other writes, with no ``await`` in between."""
        found: dict[ItemKey, StreamItem] = {}
        for entry in entries:
            stream = self._streams.get(entry.stream)
            position = None if stream is None else stream.ids.get(entry.id)
            if stream is not None and position is not None:
                found[(entry.stream, entry.id)] = stream.items[position]
        for key, fresh in fresh_entries(entries, found).items():
            stream = self._streams.get(key)
            if stream is None:
                stream = self._streams[key] = _Stream(new_epoch(), 0, now)
            for item in place(fresh, stream.epoch, stream.last + 1):
                stream.items[item.position] = item
                stream.ids[item.id] = item.position
                found[(key, item.id)] = item
            stream.last += len(fresh)
            stream.updated_at = now
        return answer(entries, found)

    async def _read(self, stream: str, after: int,
                    limit: int) -> tuple[StreamHead | None, list[StreamItem]]:
        found = self._streams.get(stream)
        if found is None:
            return None, []
        items = [item for position, item in found.items.items() if position > after]
        return found.head(stream), items[:limit]

    async def _heads(self, streams: list[str]) -> dict[str, StreamHead]:
        return {key: self._streams[key].head(key) for key in streams if key in self._streams}

    async def _trim(self, keep: int, before: float, limit: int) -> int:
        deleted = 0
        for key in sorted(self._streams):
            stream = self._streams[key]
            if stream.updated_at < before:  # idle: its items, then the head
                for position in list(stream.items):
                    if deleted == limit:
                        return deleted
                    stream.drop(position)
                    deleted += 1
                if deleted == limit:
                    return deleted
                del self._streams[key]
                deleted += 1
                continue
            for position, item in list(stream.items.items()):
                if deleted == limit:
                    return deleted
                # the newest item stays while the head does
                if position < stream.last and (position <= stream.last - keep
                                               or item.published_at < before):
                    stream.drop(position)
                    deleted += 1
        return deleted

    async def _stream_stats(self) -> tuple[int, int]:
        return len(self._streams), sum(len(s.items) for s in self._streams.values())

    # ---- routes --------------------------------------------------------

    async def _put_routes(self, routes: list[Route]) -> None:
        for route in routes:
            self._route_rows[(route.kind, route.key, route.conn)] = route

    async def _renew_routes(self, runner: str, expires_at: float) -> int:
        renewed = 0
        for key, route in self._route_rows.items():
            if route.runner == runner:
                self._route_rows[key] = Route(route.kind, route.key, route.conn, route.runner,
                                          expires_at, route.tenant)
                renewed += 1
        return renewed

    def _delete(self, doomed: list[tuple[str, str, str]]) -> int:
        for key in doomed:
            del self._route_rows[key]
        return len(doomed)

    async def _delete_routes(self, kind: str, pairs: list[tuple[str, str]]) -> int:
        return self._delete([(kind, key, conn) for key, conn in pairs
                             if (kind, key, conn) in self._route_rows])

    async def _delete_runner_routes(self, runner: str) -> int:
        return self._delete([k for k, r in self._route_rows.items() if r.runner == runner])

    async def _routes(self, kind: str, keys: list[str], now: float) -> list[Route]:
        wanted = set(keys)
        return [route for key, route in sorted(self._route_rows.items())
                if key[0] == kind and key[1] in wanted and route.expires_at > now]

    async def _route_counts(self, now: float) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for route in self._route_rows.values():
            if route.expires_at > now:
                counts[(route.runner, route.kind)] = counts.get((route.runner, route.kind),
                                                                0) + 1
        return counts

    async def _purge_routes(self, now: float, limit: int) -> int:
        return self._delete([k for k, r in self._route_rows.items() if r.expires_at <= now][:limit])

    # ---- mailboxes -----------------------------------------------------

    async def _put_mail(self, mails: list[Mail]) -> list[bool]:
        stored: list[bool] = []
        for mail in mails:
            box = self._boxes.setdefault(mail.key, {})
            stored.append(mail.id not in box)
            if stored[-1]:
                box[mail.id] = Mail(mail.key, mail.id, mail.payload, mail.stored_at,
                                    mail.expires_at, dict(mail.headers))
        return stored

    async def _mail(self, key: str, now: float, limit: int) -> list[Mail]:
        box = self._boxes.get(key, {})
        return [mail for mail in box.values() if mail.expires_at > now][:limit]

    async def _delete_mail(self, key: str, ids: list[str]) -> int:
        box = self._boxes.get(key, {})
        deleted = sum(box.pop(mail_id, None) is not None for mail_id in ids)
        if not box:
            self._boxes.pop(key, None)
        return deleted

    async def _purge_mail(self, now: float, limit: int) -> int:
        deleted = 0
        for key in list(self._boxes):
            box = self._boxes[key]
            for mail_id in [i for i, m in box.items() if m.expires_at <= now]:
                if deleted == limit:
                    return deleted
                del box[mail_id]
                deleted += 1
            if not box:
                del self._boxes[key]
        return deleted
