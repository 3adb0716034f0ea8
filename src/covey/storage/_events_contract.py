"""The :class:`EventStore` contract: the durable event log and its subscriber groups.

An event is stored once, in the log, with the persisted messages that deliver it
to each subscriber group (one message per group, to the entity
``covey.Event/<group>/<key>``), in **one transaction**: there is no event
without its deliveries and no delivery without its event. The log keeps what
replay, new groups, lag and retention need:

- **positions follow commit order.** A position is given to an event only once
  no transaction that could still commit an event *before* it is open, so a
  reader that keeps ``position > last`` never skips a row that committed late
  (a sequence value or a snowflake is taken before the commit, and would).
  SQLite and memory serialize their writers, so they number events as they
  store them; PostgreSQL stamps them with :meth:`EventStore.sequence` below the
  oldest open transaction (``pg_snapshot_xmin``), which a single sequencer (the
  runner that holds the events singleton) calls.
- **groups** are registered by the runners that subscribe (``register_group``);
  a group's ``cursor`` is the position up to which its deliveries are known to
  exist. The events singleton walks ``read(after=cursor)`` and stores what a
  publisher did not (it did not know the group yet, or the group is replaying).
- **retention** never drops an event a group still needs: ``purge`` only deletes
  events at or below every cursor of their topic's groups.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from covey.storage._message import Message
from covey.storage._model import SaveResult

#: The entity type of the messages that deliver events to subscriber groups.
EVENT_ENTITY_TYPE = "covey.Event"

GroupStart = Literal["earliest", "latest"]


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored event.

    Attributes:
        id: its snowflake (unique; storing the same id again keeps the first).
        topic: the topic it was published to (``[A-Za-z0-9._-]``, <= 200 bytes).
        type: the event class's name (<= 200 bytes).
        version: the event class's version when it was published (>= 1).
        key: the partition key: events with one key are handled in order.
        payload: the encoded event.
        headers: the publisher's request context (tenant, request id, trace).
        published_at: Unix seconds, the publisher's clock.
        groups: the groups the publisher stored a delivery for.
        position: its place in commit order; ``None`` until sequenced (set by the
            store, ignored when storing).
    """

    id: int
    topic: str
    type: str
    version: int
    key: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    published_at: float = 0.0
    groups: tuple[str, ...] = ()
    position: int | None = None


@dataclass(frozen=True, slots=True)
class EventGroup:
    """A subscriber group of one topic, as stored.

    Attributes:
        group: its name (``[A-Za-z0-9._-]``, <= 200 bytes).
        topic: the topic it reads.
        start: where it started when first registered.
        created_at: when it was first registered (Unix seconds).
        cursor: deliveries exist for every event of the topic at or below this
            position (0: none yet).
        replay_until: events with ``cursor < position <= replay_until`` are to be
            delivered again (a replay); 0 when no replay is under way.
        replay: how many replays were asked for (each gives the re-deliveries a
            primary key of their own).
    """

    group: str
    topic: str
    start: GroupStart
    created_at: float
    cursor: int = 0
    replay_until: int = 0
    replay: int = 0


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """What the log holds for one topic (``covey events topics``)."""

    topic: str
    events: int
    first_position: int | None
    last_position: int | None
    last_published_at: float | None
    unsequenced: int


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """The stored deliveries of one group (``covey.Event/<group>/...`` messages).

    Attributes:
        group: the group.
        pending: deliveries not completed yet.
        oldest_pending_at: when the oldest of them was stored (``None``: none).
        dead: deliveries completed as dead (its dead-letter).
    """

    group: str
    pending: int
    oldest_pending_at: float | None
    dead: int


@runtime_checkable
class EventStore(Protocol):
    """The event log and its groups (``storage.events``)."""

    async def append(self, events: Sequence[EventRecord],
                     messages: Sequence[Message]) -> list[SaveResult]:
        """Store ``events`` and the ``messages`` that deliver them in one transaction.

        Messages are stored as ``save_requests`` stores them (deduplicated by
        primary key; one result per message, in order). An event whose id is
        stored already is kept as it is (a retried publish). Group-committed:
        publishes that arrive together share one transaction.

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]`` names it) for a
                malformed event or message; nothing is stored then.
        """
        ...

    async def sequence(self, *, limit: int = 10_000) -> int:
        """Give positions, in commit order, to up to ``limit`` committed events that
        have none; returns how many. Call from one process at a time (the events
        singleton). SQLite and memory number events as they store them: 0."""
        ...

    async def read(self, after: int, *, topics: Collection[str] | None = None,
                   limit: int = 1000) -> list[EventRecord]:
        """Sequenced events with ``position > after`` (of ``topics`` when given),
        in position order, at most ``limit``."""
        ...

    async def unfanned(self, group: str, topic: str, after: int, *,
                       limit: int = 1000) -> tuple[list[EventRecord], int]:
        """What the events singleton walks behind ``group``: among the next ``limit``
        sequenced events of ``topic`` after position ``after``, those stored without
        a delivery for ``group`` (not in their ``groups``), in position order; and the
        position it looked up to (``after`` when there was nothing). Events that
        have the group's delivery are not read (their payloads stay in the store)."""
        ...

    async def delivery_stats(self) -> list[DeliveryStats]:
        """Per group with stored deliveries, by group: pending, oldest pending, dead
        (counted in the store: what the lag gauges sample)."""
        ...

    async def get(self, event_id: int) -> EventRecord | None:
        """One event by id (sequenced or not)."""
        ...

    async def last_position(self, topic: str | None = None) -> int:
        """The highest position given (of ``topic``), 0 when none."""
        ...

    async def position_at(self, when: float, topic: str | None = None) -> int:
        """The highest position of an event published before ``when`` (0 if none):
        replaying ``--from TIME`` starts after it."""
        ...

    async def register_group(self, group: str, topic: str, *, start: GroupStart,
                             now: float) -> EventGroup:
        """The group's row, created if missing.

        A new group's cursor is 0 for ``earliest`` (every retained event is
        delivered) and :meth:`last_position` of the topic for ``latest``. An
        existing group is returned unchanged (``start`` only applies once).
        """
        ...

    async def groups(self, *, topic: str | None = None,
                     group: str | None = None) -> list[EventGroup]:
        """Registered groups (of ``topic``, named ``group``), by group then topic."""
        ...

    async def advance_group(self, group: str, topic: str, cursor: int) -> None:
        """Move the group's cursor forward to ``cursor`` (never back; a replay that
        the cursor passed is over: ``replay_until`` is cleared).

        Raises:
            ClusterError: ``invalid_argument`` with ``details["field"] == "group"``
                (and ``group``, ``topic``) for an unknown (group, topic).
        """
        ...

    async def replay_group(self, group: str, topic: str, after: int) -> EventGroup:
        """Deliver again every retained event with ``position > after``: sets the
        cursor to ``after``, ``replay_until`` to the topic's last position and
        bumps ``replay``. Returns the updated row.

        Raises:
            ClusterError: ``invalid_argument`` with ``details["field"] == "group"``
                (and ``group``, ``topic``) for an unknown (group, topic);
                ``invalid_argument`` for ``after < 0``.
        """
        ...

    async def delete_group(self, group: str, topic: str | None = None) -> int:
        """Forget a group (of one topic, or all of its topics); returns rows deleted."""
        ...

    async def topics(self) -> list[TopicInfo]:
        """One row per topic in the log, by topic."""
        ...

    async def purge(self, before: float, *, limit: int = 1000) -> int:
        """Delete up to ``limit`` sequenced events published before ``before`` whose
        position is at or below the cursor of every group of their topic (a topic
        without groups: any). The event with the highest position is always kept,
        so positions never restart. Returns how many; call again until less than
        ``limit``."""
        ...


@runtime_checkable
class TransactionalEvents(Protocol):
    """Optional: publish inside the application's own transaction (the outbox).

    The events and their deliveries exist only if that transaction commits; the
    owners are woken at commit (PostgreSQL ``NOTIFY``)."""

    async def append_in(self, connection: Any, events: Sequence[EventRecord],
                        messages: Sequence[Message]) -> list[SaveResult]:
        """:meth:`EventStore.append` through ``connection`` (the application's
        connection, inside its open transaction)."""
        ...

    async def groups_in(self, connection: Any, topic: str) -> list[EventGroup]:
        """:meth:`EventStore.groups` of ``topic``, read through ``connection``.

        What a publisher inside the application's transaction reads: on SQLite,
        covey's own connection may be waiting for the write lock that very
        transaction holds, so a read through it would never return."""
        ...
