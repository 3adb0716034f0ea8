"""``cluster.events``: publishing, and operating the log and its groups.

Works from any member, a client-only one included: everything it asks is in
storage, except a dead-letter retry, which the delivery's owner carries out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from covey.core import (
    Clock,
    ClusterError,
    EntityError,
    MsgpackCodec,
    Reason,
    SnowflakeGenerator,
)
from covey.core.runtime import invalid_argument
from covey.events._event import Event
from covey.events._publisher import (
    EVENT_ID_HEADER,
    KEY_HEADER,
    TOPIC_HEADER,
    TYPE_HEADER,
    EventPublisher,
)
from covey.events._stats import GroupStats, group_of, group_stats
from covey.sharding.runtime import Envelope, Messenger
from covey.storage import EVENT_ENTITY_TYPE, EventGroup, Message, Storage, TopicInfo

#: the control request that asks a delivery's owner to run a dead one again
RETRY_TAG = "__retry__"


@dataclass(frozen=True)
class DeadLetter:
    """A delivery in a group's dead-letter.

    Attributes:
        message_id: the delivery's id (``retry_dead`` takes it).
        group: the group.
        topic: the event's topic.
        type: the event's type name.
        event_id: the event's id.
        key: its partition key.
        error: the last error.
        errors: every attempt's error.
        attempts: attempts made.
        failed_at: when it was dead-lettered (Unix seconds).
    """

    message_id: int
    group: str
    topic: str
    type: str
    event_id: int
    key: str
    error: str
    errors: tuple[str, ...]
    attempts: int
    failed_at: float | None


def not_found(what: str, name: str) -> ClusterError:
    """An unknown group or topic (``reason`` ``invalid_argument``, ``details``:
    ``not_found`` names what)."""
    return ClusterError(f"no {what} {name!r}", reason=Reason.INVALID_ARGUMENT, field=what,
                        not_found=what)


class Events:
    """Publish events and operate the log (``cluster.events``)."""

    def __init__(self, storage: Storage, messenger: Messenger, publisher: EventPublisher,
                 snowflake: SnowflakeGenerator, clock: Clock) -> None:
        self._storage = storage
        self._messenger = messenger
        self._publisher = publisher
        self._snowflake = snowflake
        self._clock = clock
        self._codec = MsgpackCodec()

    async def publish(self, event: Event, *, key: Any = None, transaction: Any = None) -> int:
        """Publish one event; its id. See ``Cluster.publish``."""
        return (await self._publisher.publish([(event, key)], transaction))[0]

    async def publish_many(self, events: Sequence[Event | tuple[Event, Any]], *,
                           transaction: Any = None) -> list[int]:
        """Publish several events in one transaction; their ids."""
        if isinstance(events, Event) or not isinstance(events, Sequence):
            raise invalid_argument("events", "a list of events")
        items = [e if isinstance(e, tuple) else (e, None) for e in events]
        return await self._publisher.publish(items, transaction)

    # ---- operating -------------------------------------------------------

    async def topics(self) -> list[TopicInfo]:
        """One row per topic in the log."""
        return await self._storage.events.topics()

    async def groups(self, group: str | None = None) -> list[EventGroup]:
        """The registered groups (one row per group and topic)."""
        rows = await self._storage.events.groups(group=group)
        if group is not None and not rows:
            raise not_found("group", group)
        return rows

    async def lag(self, group: str | None = None) -> dict[str, GroupStats]:
        """Per group: pending deliveries, events not fanned out, oldest pending age."""
        if group is not None:
            await self.groups(group)
        return await group_stats(self._storage, self._clock, group)

    async def dead_letters(self, group: str, *, limit: int = 50) -> list[DeadLetter]:
        """The group's dead deliveries, newest first."""
        await self.groups(group)
        found: list[DeadLetter] = []
        before: int | None = None
        while len(found) < limit:
            records = await self._storage.messages.list_messages(
                EVENT_ENTITY_TYPE, state="error", limit=500, before_id=before)
            for record in records:
                if group_of(record) != group or record.reply is None:
                    continue
                outcome: dict[str, Any] = self._codec.decode(record.reply.payload, dict[str, Any])
                headers = record.message.headers
                error = str(outcome.get("error"))
                found.append(DeadLetter(
                    record.message.id, group, headers.get(TOPIC_HEADER, ""),
                    headers.get(TYPE_HEADER, record.message.tag),
                    int(headers.get(EVENT_ID_HEADER, "0")), headers.get(KEY_HEADER, ""),
                    error, tuple(str(e) for e in outcome.get("errors") or [error]),
                    int(outcome.get("attempt") or 0), record.processed_at))
            if len(records) < 500:
                break
            before = records[-1].message.id
        return found[:limit]

    async def retry_dead(self, message_id: int) -> None:
        """Run a dead delivery again (its attempts start over), on its key's owner."""
        record = (await self._storage.messages.inspect([message_id])).get(message_id)
        if (record is None or record.message.address.entity_type != EVENT_ENTITY_TYPE
                or record.reply is None or not record.reply.is_error):
            raise not_found("dead_letter", str(message_id))
        if not self._messenger.has_owner(record.message.address.shard):
            raise EntityError("no runner is up to run it again (start one)",
                              reason=Reason.PEER_UNAVAILABLE)
        probe = Message(id=self._snowflake.next_id(), address=record.message.address,
                        tag=RETRY_TAG, payload=self._codec.encode(message_id))
        await self._messenger.call(Envelope(probe, persisted=False), timeout=10.0,
                                   discard=False)

    async def purge_dead(self, group: str) -> int:
        """Delete the group's dead deliveries; how many."""
        total = 0
        while True:
            dead = await self.dead_letters(group, limit=500)
            if not dead:
                return total
            total += await self._storage.messages.delete([d.message_id for d in dead])

    async def replay(self, group: str, *, from_position: int | None = None,
                     from_time: float | None = None) -> list[EventGroup]:
        """Deliver again every retained event after ``from_position`` (or published
        from ``from_time`` on) to ``group`` (all its topics)."""
        if (from_position is None) == (from_time is None):
            raise invalid_argument("from_position", "give from_position or from_time")
        rows = await self.groups(group)
        updated = []
        for row in rows:
            after = from_position if from_position is not None else (
                await self._storage.events.position_at(float(from_time or 0.0), row.topic))
            updated.append(await self._storage.events.replay_group(group, row.topic, after))
        return updated
