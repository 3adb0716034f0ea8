"""Layer 3: domain events — a typed bus with a transactional outbox and durable groups.

An application declares event classes (:class:`Event`: topic, version,
partition key), publishes them (``cluster.publish``, ``self.ctx.publish`` in a
persisted entity handler, ``ctx.publish`` in an event handler) and subscribes
groups (``@cluster.subscribe``): each group handles every event once, per key
in publish order, spread across runners by key. The handler gets an
:class:`EventContext`. ``cluster.events`` (:class:`Events`) operates the log:
topics, groups, lag, dead-letters, replay. The machinery is in
:mod:`covey.events.runtime`.
"""

from covey.events._context import EventContext
from covey.events._event import Event
from covey.events._events import DeadLetter, Events
from covey.events._stats import GroupStats
from covey.storage import EventGroup, GroupStart, TopicInfo

__all__ = [
    "DeadLetter",
    "Event",
    "EventContext",
    "EventGroup",
    "Events",
    "GroupStart",
    "GroupStats",
    "TopicInfo",
]
