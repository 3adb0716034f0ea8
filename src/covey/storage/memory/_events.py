"""The event log of the in-memory backend.

Everything runs on one event loop without awaiting, so an append is atomic with
its messages and positions are given as events are stored: commit order is
append order.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from covey.storage._errors import group_not_found
from covey.storage._events_checked import CheckedEventStore
from covey.storage._events_contract import (
    DeliveryStats,
    EventGroup,
    EventRecord,
    GroupStart,
    TopicInfo,
)
from covey.storage._message import Message
from covey.storage._model import SaveResult

if TYPE_CHECKING:
    from covey.storage.memory._messages import InMemoryMessageStorage


class EventLog:
    """The stored events, in position order, and the subscriber groups."""

    def __init__(self) -> None:
        self.events: dict[int, EventRecord] = {}  # by id, in position order
        self.last = 0
        self.groups: dict[tuple[str, str], EventGroup] = {}

    def stage(self, events: list[EventRecord]) -> list[EventRecord]:
        """The events of a batch not stored yet (the first of a repeated id)."""
        seen: set[int] = set()
        fresh: list[EventRecord] = []
        for event in events:
            if event.id not in self.events and event.id not in seen:
                seen.add(event.id)
                fresh.append(event)
        return fresh

    def apply(self, fresh: list[EventRecord]) -> None:
        """Store what :meth:`stage` returned, numbering it in order."""
        for event in fresh:
            self.last += 1
            self.events[event.id] = replace(event, headers=dict(event.headers),
                                            position=self.last)

    def last_of(self, topic: str | None) -> int:
        if topic is None:
            return self.last
        return max((e.position or 0 for e in self.events.values() if e.topic == topic),
                   default=0)


class InMemoryEventStore(CheckedEventStore):
    """The event log in dictionaries, sharing the message store's transaction."""

    def __init__(self, messages: InMemoryMessageStorage) -> None:
        self._messages = messages
        self.log = messages.event_log

    async def _append(self, events: list[EventRecord],
                      messages: list[Message]) -> list[SaveResult]:
        return self._messages.store_batch(messages, events)

    async def _read(self, after: int, topics: list[str] | None,
                    limit: int) -> list[EventRecord]:
        wanted = None if topics is None else set(topics)
        out: list[EventRecord] = []
        for event in self.log.events.values():
            if (event.position or 0) > after and (wanted is None or event.topic in wanted):
                out.append(event)
                if len(out) == limit:
                    break
        return out

    async def _delivery_stats(self) -> list[DeliveryStats]:
        return self._messages.delivery_stats()

    async def _get(self, event_id: int) -> EventRecord | None:
        return self.log.events.get(event_id)

    async def _last_position(self, topic: str | None) -> int:
        return self.log.last_of(topic)

    async def _position_at(self, when: float, topic: str | None) -> int:
        return max((e.position or 0 for e in self.log.events.values()
                    if e.published_at < when and (topic is None or e.topic == topic)),
                   default=0)

    async def _register_group(self, group: str, topic: str, start: GroupStart,
                              now: float) -> EventGroup:
        row = self.log.groups.get((group, topic))
        if row is None:
            cursor = self.log.last_of(topic) if start == "latest" else 0
            row = EventGroup(group, topic, start, now, cursor)
            self.log.groups[(group, topic)] = row
        return row

    async def _groups(self, topic: str | None, group: str | None) -> list[EventGroup]:
        return [row for key, row in sorted(self.log.groups.items())
                if (topic is None or row.topic == topic) and (group is None or key[0] == group)]

    def _row(self, group: str, topic: str) -> EventGroup:
        row = self.log.groups.get((group, topic))
        if row is None:
            raise group_not_found(group, topic)
        return row

    async def _advance_group(self, group: str, topic: str, cursor: int) -> None:
        row = self._row(group, topic)
        if cursor > row.cursor:
            until = row.replay_until if row.replay_until > cursor else 0
            self.log.groups[(group, topic)] = replace(row, cursor=cursor, replay_until=until)

    async def _replay_group(self, group: str, topic: str, after: int) -> EventGroup:
        row = self._row(group, topic)
        row = replace(row, cursor=after, replay_until=self.log.last_of(topic),
                      replay=row.replay + 1)
        self.log.groups[(group, topic)] = row
        return row

    async def _delete_group(self, group: str, topic: str | None) -> int:
        doomed = [key for key in self.log.groups
                  if key[0] == group and (topic is None or key[1] == topic)]
        for key in doomed:
            del self.log.groups[key]
        return len(doomed)

    async def _topics(self) -> list[TopicInfo]:
        found: dict[str, list[EventRecord]] = {}
        for event in self.log.events.values():
            found.setdefault(event.topic, []).append(event)
        out: list[TopicInfo] = []
        for topic, events in sorted(found.items()):
            positions = [e.position for e in events if e.position is not None]
            out.append(TopicInfo(topic, len(events), min(positions, default=None),
                                 max(positions, default=None),
                                 max(e.published_at for e in events),
                                 len(events) - len(positions)))
        return out

    async def _purge(self, before: float, limit: int) -> int:
        floors: dict[str, int] = {}
        for (_, topic), row in self.log.groups.items():
            floors[topic] = min(floors.get(topic, row.cursor), row.cursor)
        # the newest event is kept, as on the SQL backends (they number from it)
        newest = max((e.position or 0 for e in self.log.events.values()), default=0)
        doomed = [
            event.id for event in self.log.events.values()
            if event.position is not None and event.published_at < before
            and event.position < newest
            and event.position <= floors.get(event.topic, event.position)
        ][:limit]
        for event_id in doomed:
            del self.log.events[event_id]
        return len(doomed)
