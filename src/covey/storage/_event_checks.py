"""Argument checks of the :class:`~covey.storage.EventStore` contract.

Like :mod:`covey.storage._checks`, they run once for every backend (in
:mod:`covey.storage._events_checked`), before anything is read or written, and
refuse a bad value with ``invalid_argument`` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping

from covey.core.runtime import check_text
from covey.storage._checks import INT64_MAX, check_int, check_time
from covey.storage._errors import invalid
from covey.storage._events_contract import EventRecord, GroupStart
from covey.storage._message import check_headers

#: The longest topic, group or event type name (UTF-8 bytes).
MAX_EVENT_NAME_BYTES = 200
#: The longest partition key (UTF-8 bytes).
MAX_EVENT_KEY_BYTES = 1024
#: What ``register_group(start=...)`` accepts.
GROUP_STARTS: tuple[GroupStart, ...] = ("earliest", "latest")

_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_event_name(field: str, value: object) -> str:
    """``value`` if it is a topic or group name: ``[A-Za-z0-9._-]+``, <= 200 bytes."""
    name = check_text(field, value, max_bytes=MAX_EVENT_NAME_BYTES)
    if _NAME.fullmatch(name) is None:
        raise invalid(field, value, "letters, digits, '.', '_' and '-' only")
    return name


def check_event(event: object) -> EventRecord:
    """Refuse an event no backend can store the same way."""
    if not isinstance(event, EventRecord):
        raise invalid("event", event, "an EventRecord")
    check_int("event.id", event.id, 1, INT64_MAX)
    check_event_name("event.topic", event.topic)
    check_text("event.type", event.type, max_bytes=MAX_EVENT_NAME_BYTES)
    check_int("event.version", event.version, 1, INT64_MAX)
    check_text("event.key", event.key, max_bytes=MAX_EVENT_KEY_BYTES)
    if not isinstance(event.payload, bytes):
        raise invalid("event.payload", event.payload, "bytes")
    check_headers(event.headers, "event.headers")
    check_time("event.published_at", event.published_at)
    if isinstance(event.groups, str | bytes) or not isinstance(event.groups, tuple):
        raise invalid("event.groups", event.groups, "a tuple of group names")
    for group in event.groups:
        check_event_name("event.groups", group)
    return event


def check_events(events: object) -> list[EventRecord]:
    """The events of a batch as a list, each checked (the batch is refused whole)."""
    if isinstance(events, str | bytes | Mapping) or not isinstance(events, Iterable):
        raise invalid("events", events, "a sequence of EventRecord")
    return [check_event(event) for event in events]


def check_position(field: str, value: object) -> int:
    """``value`` if it is a position or a cursor: an int in 0..2**63-1."""
    return check_int(field, value, 0, INT64_MAX)


def check_topics(topics: object) -> list[str] | None:
    """Distinct topic names, sorted (``None``: every topic)."""
    if topics is None:
        return None
    if isinstance(topics, str | bytes) or not isinstance(topics, Collection):
        raise invalid("topics", topics, "a collection of topic names")
    return sorted({check_event_name("topics", topic) for topic in topics})


def check_optional_name(field: str, value: object) -> str | None:
    """``None`` or a topic / group name."""
    return None if value is None else check_event_name(field, value)


def check_start(start: object) -> GroupStart:
    """``start`` if it is ``"earliest"`` or ``"latest"``."""
    if not isinstance(start, str) or start not in GROUP_STARTS:
        raise invalid("start", start, "'earliest' or 'latest'")
    return "earliest" if start == "earliest" else "latest"
