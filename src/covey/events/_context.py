"""``EventContext``: what an event handler knows besides its event, and its effects.

A handler runs at least once per event and group (again after a failure or a
crash); what it stages through its context (``await ctx.transaction()`` writes,
``ctx.publish(...)``, ``job.submit(..., transaction=ctx)``,
``cluster.publish(..., transaction=ctx)``) commits in one transaction with the
delivery's completion, or not at all: its effects happen once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from covey.core import RequestContext
from covey.events._event import Event
from covey.storage import UnitOfWork

#: stages events on a unit: ``(unit, [(event, key)]) -> ids``
Stager = Callable[[UnitOfWork, Sequence[tuple[Any, Any]]], Awaitable[list[int]]]


class EventContext:
    """One run of a group's handler for one event (read-only by convention).

    Attributes:
        event_id: the event's id (a snowflake; the same for every group).
        key: its partition key.
        group: the subscriber group running it.
        topic: its topic.
        type: its stored type name.
        version: the version it was stored with (the handler gets it upcast).
        published_at: when it was published (Unix seconds, the publisher's clock).
        position: its place in the log, when known at delivery (a backfill or a
            replay); ``None`` for a delivery made by the publisher.
        attempt: 1 on the first run, +1 per retry or re-run after a crash.
        max_attempts: the retry policy's limit.
        context: the publisher's request context (tenant, request id, trace).
    """

    __slots__ = ("_stage", "_unit", "attempt", "context", "event_id", "group", "key",
                 "max_attempts", "position", "published_at", "topic", "type", "version")

    def __init__(self, *, event_id: int, key: str, group: str, topic: str, type: str,
                 version: int, published_at: float, position: int | None, attempt: int,
                 max_attempts: int, context: RequestContext, unit: UnitOfWork,
                 stage: Stager | None) -> None:
        self.event_id = event_id
        self.key = key
        self.group = group
        self.topic = topic
        self.type = type
        self.version = version
        self.published_at = published_at
        self.position = position
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.context = context
        self._unit = unit
        self._stage = stage

    def __repr__(self) -> str:
        return (f"EventContext(group={self.group!r}, topic={self.topic!r}, "
                f"event_id={self.event_id}, key={self.key!r}, attempt={self.attempt})")

    @property
    def idempotency_key(self) -> str:
        """A key for calls to outside systems: the same on every retry, pod and
        failover of this event in this group (``sha256("group/event_id")``, hex)."""
        return hashlib.sha256(f"{self.group}/{self.event_id}".encode()).hexdigest()

    @property
    def last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    async def transaction(self) -> Any:
        """The application's handle inside the transaction this run commits with
        (as ``EntityContext.transaction``): writes made through it commit with the
        delivery's completion, or not at all (a handler that raises keeps none)."""
        return await self._unit.transaction()

    async def publish(self, event: Event, *, key: Any = None) -> int:
        """Publish ``event`` with this run's commit (never if the handler raises);
        returns its id."""
        return (await self.publish_many([(event, key)]))[0]

    async def publish_many(self, events: Sequence[Event | tuple[Event, Any]]) -> list[int]:
        """Publish several events with this run's commit (``(event, key)`` pairs
        choose their keys); returns their ids."""
        if self._stage is None:  # a runner always has a publisher; a bare test may not
            raise RuntimeError("this event context has no publisher")
        items = [e if isinstance(e, tuple) else (e, None) for e in events]
        return await self._stage(self._unit, items)

    def effect_unit(self, use: str) -> UnitOfWork:
        """The unit of work this run commits with (``transaction=ctx`` of jobs and
        ``cluster.publish``)."""
        return self._unit
