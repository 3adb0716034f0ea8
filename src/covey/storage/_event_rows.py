"""Stored event and group rows back into records, for both SQL backends.

Both select :data:`EVENT_COLUMNS` / :data:`GROUP_COLUMNS` in this order and hand
the rows here by position (a ``sqlite3`` tuple or an asyncpg ``Record``).
Headers and groups are stored as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from covey.core import Reason, StorageError
from covey.storage._events_contract import EventGroup, EventRecord, GroupStart, TopicInfo
from covey.storage._message import encode_headers

EVENT_COLUMNS = "id, topic, type, version, key, payload, headers, published_at, groups, position"
GROUP_COLUMNS = "grp, topic, start, created_at, cursor, replay_until, replay"


def corrupt_event(event_id: object, problem: str) -> StorageError:
    """A stored event row that cannot be read back."""
    return StorageError(f"stored event {event_id} is corrupt: {problem}",
                        reason=Reason.STORAGE_CORRUPT, event_id=event_id)


def event_params(event: EventRecord) -> tuple[Any, ...]:
    """The values stored for ``event``, in :data:`EVENT_COLUMNS` order (no position)."""
    return (event.id, event.topic, event.type, event.version, event.key, event.payload,
            encode_headers(event.headers), event.published_at, encode_groups(event.groups))


def encode_groups(groups: Sequence[str]) -> str:
    """Groups as stored: a JSON array."""
    return json.dumps(list(groups), separators=(",", ":"))


def _json(raw: object, event_id: object, what: str) -> Any:
    if not isinstance(raw, str):
        raise corrupt_event(event_id, f"its {what} are not text")
    try:
        return json.loads(raw) if raw else None
    except ValueError as exc:
        raise corrupt_event(event_id, f"its {what} are not valid JSON") from exc


def event_of(row: Sequence[Any]) -> EventRecord:
    """A row of :data:`EVENT_COLUMNS` as an :class:`EventRecord`."""
    event_id = row[0]
    headers = _json(row[6], event_id, "headers") or {}
    groups = _json(row[8], event_id, "groups") or []
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise corrupt_event(event_id, "its headers are not a string map")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise corrupt_event(event_id, "its groups are not a list of names")
    try:
        return EventRecord(
            id=int(event_id), topic=str(row[1]), type=str(row[2]), version=int(row[3]),
            key=str(row[4]), payload=bytes(row[5]), headers=headers,
            published_at=float(row[7]), groups=tuple(groups),
            position=None if row[9] is None else int(row[9]))
    except (TypeError, ValueError) as exc:
        raise corrupt_event(event_id, f"unexpected value: {exc}") from exc


def group_of(row: Sequence[Any]) -> EventGroup:
    """A row of :data:`GROUP_COLUMNS` as an :class:`EventGroup`."""
    start: GroupStart = "latest" if row[2] == "latest" else "earliest"
    return EventGroup(group=str(row[0]), topic=str(row[1]), start=start,
                      created_at=float(row[3]), cursor=int(row[4]),
                      replay_until=int(row[5]), replay=int(row[6]))


def topic_of(row: Sequence[Any]) -> TopicInfo:
    """A row of ``topic, events, first, last, last_published_at, unsequenced``."""
    return TopicInfo(topic=str(row[0]), events=int(row[1]),
                     first_position=None if row[2] is None else int(row[2]),
                     last_position=None if row[3] is None else int(row[3]),
                     last_published_at=None if row[4] is None else float(row[4]),
                     unsequenced=int(row[5]))
