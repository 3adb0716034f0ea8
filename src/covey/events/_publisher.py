"""Publishing: an event stored once in the log with one delivery per subscriber group.

Each delivery is a persisted message to ``covey.Event/<group>/<key>`` (the
shard of that entity id), deduplicated by the event id: a group receives each
event once however often it is stored. Stored together in one transaction
(``storage.events.append``), the owners are then woken directly (a push), or at
the commit of the transaction they were staged in (a persisted handler's unit,
the application's own transaction).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from covey.core import (
    MAX_ENTITY_ID_BYTES,
    Clock,
    EntityAddress,
    SnowflakeGenerator,
    current_context,
    metrics,
)
from covey.core.runtime import inject_trace, invalid_argument, producer_span, shard_for
from covey.entities.runtime import EffectScope
from covey.events._event import encode_event, event_key, event_topic
from covey.sharding.runtime import Envelope, Messenger
from covey.storage import (
    EVENT_ENTITY_TYPE,
    EventRecord,
    Message,
    Saved,
    Storage,
    TransactionalEvents,
    UnitOfWork,
)

EVENT_ID_HEADER = "covey-event-id"
TOPIC_HEADER = "covey-topic"
TYPE_HEADER = "covey-event-type"
VERSION_HEADER = "covey-event-version"
KEY_HEADER = "covey-event-key"
PUBLISHED_HEADER = "covey-published-at"
POSITION_HEADER = "covey-event-position"
#: the id of the event this publisher published before, with the same topic and key
PREVIOUS_HEADER = "covey-event-previous"

#: keys whose last event a publisher remembers (for PREVIOUS_HEADER)
LAST_EVENT_KEYS = 65_536

#: seconds a publisher trusts what it read of a topic's groups
GROUPS_CACHE_SECONDS = 1.0


def delivery(record: EventRecord, group: str, message_id: int, shards: int, *,
             primary_key: str | None = None) -> Message:
    """The message that delivers ``record`` to ``group`` (``primary_key``: the event
    id; a replay's re-delivery has a key of its own)."""
    entity_id = f"{group}/{record.key}"
    if len(entity_id.encode()) > MAX_ENTITY_ID_BYTES:
        raise invalid_argument("key", f"group/key is longer than {MAX_ENTITY_ID_BYTES} bytes")
    headers = {**record.headers, EVENT_ID_HEADER: str(record.id), TOPIC_HEADER: record.topic,
               TYPE_HEADER: record.type, VERSION_HEADER: str(record.version),
               KEY_HEADER: record.key, PUBLISHED_HEADER: repr(record.published_at)}
    if record.position is not None:
        headers[POSITION_HEADER] = str(record.position)
    return Message(id=message_id,
                   address=EntityAddress(EVENT_ENTITY_TYPE, entity_id,
                                         shard_for(entity_id, shards)),
                   tag=record.type, payload=record.payload, headers=headers,
                   primary_key=primary_key or str(record.id))


class EventPublisher:
    """Publishes events from one process (``cluster.publish``, ``ctx.publish``).

    Args:
        storage: the store (``storage.events``).
        messenger: wakes the owners of the deliveries.
        snowflake: ids of events and deliveries.
        clock: publish times, and the groups cache.
        shards: shards per group (the deliveries' addresses).
    """

    def __init__(self, storage: Storage, messenger: Messenger, snowflake: SnowflakeGenerator,
                 clock: Clock, shards: int) -> None:
        self._storage = storage
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self._groups: dict[str, tuple[float, tuple[str, ...]]] = {}
        #: (topic, key) -> the last event published here with them, oldest first
        self._last: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()

    def forget_groups(self) -> None:
        """Read the groups again on the next publish (a group was registered here)."""
        self._groups.clear()

    async def groups_of(self, topic: str, connection: Any = None) -> tuple[str, ...]:
        """The groups of ``topic``, as read at most :data:`GROUPS_CACHE_SECONDS` ago.

        A group this misses (registered since) is given its deliveries by the
        events singleton, which walks the log behind every group. ``connection``:
        the application's, inside its transaction: read through it (covey's own
        SQLite connection may be waiting for the lock that transaction holds).
        """
        now = self._clock.monotonic()
        cached = self._groups.get(topic)
        if cached is not None and now - cached[0] < GROUPS_CACHE_SECONDS:
            return cached[1]
        events = self._storage.events
        rows = (await events.groups_in(connection, topic)
                if connection is not None and isinstance(events, TransactionalEvents)
                else await events.groups(topic=topic))
        groups = tuple(sorted({g.group for g in rows}))
        self._groups[topic] = (now, groups)
        return groups

    async def build(self, items: Iterable[tuple[Any, Any]], connection: Any = None
                    ) -> tuple[list[EventRecord], list[Message]]:
        """The records and deliveries of ``(event, key)`` pairs (every one checked
        before any is stored); ``connection``: see :meth:`groups_of`."""
        records: list[EventRecord] = []
        messages: list[Message] = []
        headers = inject_trace(current_context().to_headers())
        now = self._clock.now()
        for event, key in items:
            cls, payload = encode_event(event)
            topic = event_topic(cls)
            event_id = self._snowflake.next_id()
            groups = await self.groups_of(topic, connection)
            partition = event_key(event, key, event_id)
            record = EventRecord(event_id, topic, cls.__covey_event_type__, cls.covey_version,
                                 partition, payload, self._chained(headers, topic, partition,
                                                                   event_id, key, event), now,
                                 groups)
            records.append(record)
            # checked in full by the store (append checks every message it stores)
            messages += [self._messenger.fits(delivery(record, g, self._snowflake.next_id(),
                                                       self._shards)) for g in groups]
        return records, messages

    def _chained(self, headers: Mapping[str, str], topic: str, partition: str, event_id: int,
                 key: Any, event: Any) -> dict[str, str]:
        """The record's headers, naming the event published here before with the same
        key: a subscriber's lane checks that one is done (or never committed) before
        it runs this one, so an event whose wake-up was lost is not overtaken."""
        own = dict(headers)
        if key is None and type(event).__covey_key__ is None:
            return own  # keyless: the key is the event's own id, nothing to order
        previous = self._last.pop((topic, partition), None)
        if previous is not None:
            own[PREVIOUS_HEADER] = str(previous)
        self._last[(topic, partition)] = event_id
        if len(self._last) > LAST_EVENT_KEYS:
            self._last.popitem(last=False)
        return own

    async def publish(self, items: Sequence[tuple[Any, Any]], transaction: Any = None
                      ) -> list[int]:
        """Store events (and their deliveries) and wake the owners; their ids.

        ``transaction``: ``None`` (stored now), a persisted handler's context
        (``self.ctx`` of an entity, the ``ctx`` of an event handler: stored with
        its commit), or the application's connection inside its transaction
        (stored only if it commits; the owners are woken at commit).
        """
        if not items:
            return []
        if isinstance(transaction, EffectScope):
            return await self.stage(transaction.effect_unit("transaction"), items)
        topics = sorted({getattr(type(e), "__covey_topic__", "") for e, _ in items} - {""})
        carrier: dict[str, str] = {}
        with producer_span(f"publish {','.join(topics) or 'events'}", carrier):
            records, messages = await self.build(items, transaction)
            events = self._storage.events
            if transaction is not None:
                if not isinstance(events, TransactionalEvents):
                    raise invalid_argument(
                        "transaction", "publishing inside the application's transaction is not "
                        f"supported by this cluster's storage ({self._storage.backend})")
                await events.append_in(transaction, records, messages)
                _count(records)
                return [r.id for r in records]
            results = await events.append(records, messages)
        _count(records)
        wake = [Envelope(m, persisted=True) for m, r in zip(messages, results, strict=True)
                if isinstance(r, Saved)]
        if wake:
            await self._messenger.push_many(wake)
        return [r.id for r in records]

    async def stage(self, unit: UnitOfWork, items: Sequence[tuple[Any, Any]]) -> list[int]:
        """Stage events and their deliveries on a persisted run's unit of work: stored
        with its commit (the deliveries' owners are woken after it), never if it is
        discarded."""
        records, messages = await self.build(items)
        unit.publish(records)
        unit.send(messages)
        unit.on_commit(lambda: _count(records))
        return [r.id for r in records]


def _count(records: Sequence[EventRecord]) -> None:
    for record in records:
        metrics.EVENTS_PUBLISHED.labels(record.topic).inc()
