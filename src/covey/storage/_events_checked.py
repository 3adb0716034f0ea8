"""The public face of every backend's event log: check the arguments, then call it.

As in :mod:`covey.storage._checked`, the public methods of
:class:`CheckedEventStore` are ``@final``: they check their arguments once (with
:mod:`covey.storage._event_checks` and the message checks) and hand the backend
values it can trust; calls that can only have an empty answer are answered here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, final

from covey.storage._checks import check_id, check_limit, check_time
from covey.storage._errors import invalid
from covey.storage._event_checks import (
    check_event_name,
    check_events,
    check_optional_name,
    check_position,
    check_start,
    check_topics,
)
from covey.storage._events_contract import (
    DeliveryStats,
    EventGroup,
    EventRecord,
    GroupStart,
    TopicInfo,
)
from covey.storage._message import Message, check_messages
from covey.storage._model import SaveResult


class CheckedEventStore(ABC):
    """:class:`~covey.storage.EventStore` with its checks; backends implement ``_`` methods."""

    @final
    async def append(self, events: Sequence[EventRecord],
                     messages: Sequence[Message]) -> list[SaveResult]:
        checked = check_events(events)
        batch = check_messages(messages)
        if not checked and not batch:
            return []
        return await self._append(checked, batch)

    @final
    async def sequence(self, *, limit: int = 10_000) -> int:
        return await self._sequence(limit) if check_limit(limit) else 0

    @final
    async def read(self, after: int, *, topics: Collection[str] | None = None,
                   limit: int = 1000) -> list[EventRecord]:
        check_position("after", after)
        wanted = check_topics(topics)
        if not check_limit(limit) or wanted == []:
            return []
        return await self._read(after, wanted, limit)

    @final
    async def unfanned(self, group: str, topic: str, after: int, *,
                       limit: int = 1000) -> tuple[list[EventRecord], int]:
        check_event_name("group", group)
        check_event_name("topic", topic)
        check_position("after", after)
        if not check_limit(limit):
            return [], after
        return await self._unfanned(group, topic, after, limit)

    async def _unfanned(self, group: str, topic: str, after: int,
                        limit: int) -> tuple[list[EventRecord], int]:
        """Backends that can filter in the store override this (it reads every event)."""
        records = await self._read(after, [topic], limit)
        if not records:
            return [], after
        last = records[-1].position
        assert last is not None
        return [r for r in records if group not in r.groups], last

    @final
    async def delivery_stats(self) -> list[DeliveryStats]:
        return await self._delivery_stats()

    @abstractmethod
    async def _delivery_stats(self) -> list[DeliveryStats]: ...

    @final
    async def get(self, event_id: int) -> EventRecord | None:
        return await self._get(check_id("event_id", event_id))

    @final
    async def last_position(self, topic: str | None = None) -> int:
        return await self._last_position(check_optional_name("topic", topic))

    @final
    async def position_at(self, when: float, topic: str | None = None) -> int:
        seconds = check_time("when", when)
        return await self._position_at(seconds, check_optional_name("topic", topic))

    @final
    async def register_group(self, group: str, topic: str, *, start: GroupStart,
                             now: float) -> EventGroup:
        check_event_name("group", group)
        check_event_name("topic", topic)
        return await self._register_group(group, topic, check_start(start),
                                          check_time("now", now))

    @final
    async def groups(self, *, topic: str | None = None,
                     group: str | None = None) -> list[EventGroup]:
        return await self._groups(check_optional_name("topic", topic),
                                  check_optional_name("group", group))

    @final
    async def advance_group(self, group: str, topic: str, cursor: int) -> None:
        check_event_name("group", group)
        check_event_name("topic", topic)
        await self._advance_group(group, topic, check_position("cursor", cursor))

    @final
    async def replay_group(self, group: str, topic: str, after: int) -> EventGroup:
        check_event_name("group", group)
        check_event_name("topic", topic)
        return await self._replay_group(group, topic, check_position("after", after))

    @final
    async def delete_group(self, group: str, topic: str | None = None) -> int:
        check_event_name("group", group)
        return await self._delete_group(group, check_optional_name("topic", topic))

    @final
    async def topics(self) -> list[TopicInfo]:
        return await self._topics()

    @final
    async def purge(self, before: float, *, limit: int = 1000) -> int:
        seconds = check_time("before", before)
        check_limit(limit, low=1)
        return await self._purge(seconds, limit)

    @abstractmethod
    async def _append(self, events: list[EventRecord],
                      messages: list[Message]) -> list[SaveResult]:
        """Never called with both lists empty."""

    async def _sequence(self, limit: int) -> int:
        """Backends that number events at append (SQLite, memory) have nothing to do."""
        return 0

    @abstractmethod
    async def _read(self, after: int, topics: list[str] | None,
                    limit: int) -> list[EventRecord]:
        """``topics`` is ``None`` (all) or not empty; ``limit`` >= 1."""

    @abstractmethod
    async def _get(self, event_id: int) -> EventRecord | None: ...

    @abstractmethod
    async def _last_position(self, topic: str | None) -> int: ...

    @abstractmethod
    async def _position_at(self, when: float, topic: str | None) -> int: ...

    @abstractmethod
    async def _register_group(self, group: str, topic: str, start: GroupStart,
                              now: float) -> EventGroup: ...

    @abstractmethod
    async def _groups(self, topic: str | None, group: str | None) -> list[EventGroup]: ...

    @abstractmethod
    async def _advance_group(self, group: str, topic: str, cursor: int) -> None: ...

    @abstractmethod
    async def _replay_group(self, group: str, topic: str, after: int) -> EventGroup: ...

    @abstractmethod
    async def _delete_group(self, group: str, topic: str | None) -> int: ...

    @abstractmethod
    async def _topics(self) -> list[TopicInfo]: ...

    @abstractmethod
    async def _purge(self, before: float, limit: int) -> int: ...


class CheckedTransactionalEvents(CheckedEventStore):
    """Adds :class:`~covey.storage.TransactionalEvents` with its checks.

    ``connection_types`` are the connection classes the backend accepts.
    """

    connection_types: tuple[type, ...] = ()

    @final
    async def append_in(self, connection: Any, events: Sequence[EventRecord],
                        messages: Sequence[Message]) -> list[SaveResult]:
        if not isinstance(connection, self.connection_types):
            raise invalid("connection", connection,
                          "a connection of the database, inside the application's transaction")
        checked = check_events(events)
        batch = check_messages(messages)
        if not checked and not batch:
            return []
        return await self._append_in(connection, checked, batch)

    @final
    async def groups_in(self, connection: Any, topic: str) -> list[EventGroup]:
        if not isinstance(connection, self.connection_types):
            raise invalid("connection", connection,
                          "a connection of the database, inside the application's transaction")
        return await self._groups_in(connection, check_event_name("topic", topic))

    @abstractmethod
    async def _append_in(self, connection: Any, events: list[EventRecord],
                         messages: list[Message]) -> list[SaveResult]: ...

    @abstractmethod
    async def _groups_in(self, connection: Any, topic: str) -> list[EventGroup]: ...
