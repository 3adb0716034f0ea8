"""Stored message rows back into records, for both SQL backends.

Both select :data:`MESSAGE_COLUMNS` (and :data:`RECORD_COLUMNS`) in this order
and hand the rows here by position (a ``sqlite3`` tuple or an asyncpg
``Record``). A row that does not have the types a message has (SQLite stores
whatever it is given; an operator may edit a row) is ``storage_corrupt``,
naming the message, instead of a ``TypeError`` deep inside a runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from covey.core import EntityAddress, ShardId
from covey.storage._errors import corrupt_message
from covey.storage._message import Message, MessageRecord, decode_headers
from covey.storage._model import Reply

MESSAGE_COLUMNS = (
    "id, entity_type, entity_id, shard_group, shard, tag, payload, headers,"
    " primary_key, deliver_at, priority, attempts, failures, last_error, starts"
)
#: a message with its bookkeeping, for :class:`MessageRecord`
RECORD_COLUMNS = (
    f"{MESSAGE_COLUMNS}, created_at, processed, processed_at, reply, reply_is_error,"
    " lease_until"
)
_WIDTH = len(MESSAGE_COLUMNS.split(","))

_TEXT = (str,)
_NUMBER = (int, float)
#: the type each column of MESSAGE_COLUMNS must have; None allowed where nullable
_MESSAGE_TYPES: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("entity_type", _TEXT, False), ("entity_id", _TEXT, False),
    ("shard_group", _TEXT, False), ("shard", (int,), False), ("tag", _TEXT, False),
    ("payload", (bytes,), False), ("headers", _TEXT, True), ("primary_key", _TEXT, True),
    ("deliver_at", _NUMBER, True), ("priority", (int,), False), ("attempts", (int,), False),
    ("failures", (int,), False), ("last_error", _TEXT, True), ("starts", (int,), False),
)
_RECORD_TYPES: tuple[tuple[str, tuple[type, ...], bool], ...] = (
    ("created_at", _NUMBER, False), ("processed", (int,), False),
    ("processed_at", _NUMBER, True), ("reply", (bytes,), True),
    ("reply_is_error", (int,), False), ("lease_until", _NUMBER, True),
)


def _check(message_id: object, values: Sequence[Any],
           types: tuple[tuple[str, tuple[type, ...], bool], ...]) -> None:
    bad = [name for (name, kinds, nullable), value in zip(types, values, strict=True)
           if not (isinstance(value, kinds) or (nullable and value is None))]
    if bad:
        raise corrupt_message(message_id, "unexpected type in " + ", ".join(bad))


def message_of(row: Sequence[Any]) -> Message:
    """A row of :data:`MESSAGE_COLUMNS` (or longer) as a :class:`Message`."""
    message_id = row[0]
    if not isinstance(message_id, int):
        raise corrupt_message(message_id, "its id is not an int")
    values = tuple(row[1:_WIDTH])
    _check(message_id, values, _MESSAGE_TYPES)
    (entity_type, entity_id, group, shard, tag, payload, headers, primary_key,
     deliver_at, priority, attempts, failures, last_error, starts) = values
    return Message(
        id=message_id,
        address=EntityAddress(entity_type, entity_id, ShardId(group, shard)),
        tag=tag,
        payload=payload,
        headers=decode_headers(headers, message_id),
        primary_key=primary_key,
        deliver_at=None if deliver_at is None else float(deliver_at),
        priority=priority,
        attempts=attempts,
        failures=failures,
        last_error=last_error,
        starts=starts,
    )


def record_of(row: Sequence[Any]) -> MessageRecord:
    """A row of :data:`RECORD_COLUMNS` as a :class:`MessageRecord`."""
    message = message_of(row)
    values = tuple(row[_WIDTH:])
    _check(message.id, values, _RECORD_TYPES)
    created_at, processed, processed_at, reply, is_error, lease_until = values
    return MessageRecord(
        message=message,
        created_at=float(created_at),
        processed_at=None if processed_at is None else float(processed_at),
        reply=reply_of(message.id, reply, is_error) if processed else None,
        last_error=message.last_error,
        lease_until=None if lease_until is None else float(lease_until),
    )


def reply_of(message_id: int, payload: object, is_error: object) -> Reply:
    """A stored reply; a processed message without one is corrupt."""
    if not isinstance(payload, bytes):
        raise corrupt_message(message_id, "processed without a reply")
    return Reply(message_id, payload, bool(is_error))
