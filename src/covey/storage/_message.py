"""The persisted message: its record, its dedupe key, its checks and its stored headers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from covey.core import (
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    EntityAddress,
)
from covey.core.runtime import check_text, invalid_argument
from covey.storage._checks import INT64_MAX, check_address, check_int, check_time
from covey.storage._errors import corrupt_message, invalid
from covey.storage._model import Reply

#: The longest dedupe key stored as is; longer keys are stored as their SHA-256.
MAX_DEDUPE_KEY = 255


@dataclass(frozen=True, slots=True)
class Message:
    """A persisted request to an entity.

    ``id`` is a snowflake chosen by the sender. ``primary_key`` makes the request
    idempotent: a second request with the same address, tag and primary key is a
    :class:`Duplicate`. ``deliver_at`` (Unix seconds) holds the message back until
    then. Higher ``priority`` is read first. ``attempts`` counts how many times
    storage handed the message out, ``starts`` how many runs of it began
    (:meth:`MessageStorage.mark_started`), ``failures`` how many times it was
    rescheduled after a failed run and ``last_error`` the error given then (all
    set by storage; ignored on save).
    """

    id: int
    address: EntityAddress
    tag: str
    payload: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    primary_key: str | None = None
    deliver_at: float | None = None
    priority: int = 0
    attempts: int = 0
    failures: int = 0
    last_error: str | None = None
    starts: int = 0

    def check(self) -> None:
        """Refuse this message, as every storage backend would (see :func:`check_message`).

        Raises:
            ClusterError: reason ``invalid_argument``; ``details["field"]`` names it.
        """
        check_message(self)

    @property
    def dedupe_key(self) -> str | None:
        """The unique key stored for ``primary_key`` (``None`` when there is none)."""
        if self.primary_key is None:
            return None
        return dedupe_key(self.address, self.tag, self.primary_key)


def dedupe_key(address: EntityAddress, tag: str, primary_key: str) -> str:
    """``type/id/tag/key``, or its SHA-256 when longer than :data:`MAX_DEDUPE_KEY`."""
    key = f"{address.entity_type}/{address.entity_id}/{tag}/{primary_key}"
    if len(key) > MAX_DEDUPE_KEY:
        return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message with its bookkeeping, for status queries and operators.

    ``reply`` is set once processed; ``last_error`` is the error of the last
    :meth:`MessageStorage.reschedule`; ``lease_until`` is set while a reader holds it.
    """

    message: Message
    created_at: float
    processed_at: float | None
    reply: Reply | None
    last_error: str | None
    lease_until: float | None

    @property
    def processed(self) -> bool:
        return self.reply is not None


def check_message(message: object) -> Message:
    """Refuse a message no backend can store the same way, before any is written.

    Wrong field types, names and keys that break their limits
    (:func:`covey.core.check_text`: NUL, lone surrogates, too long), more than
    :data:`~covey.core.MAX_HEADERS` headers, a ``deliver_at`` that is not a finite,
    non-negative time, a priority or shard outside the stored ranges.

    Raises:
        ClusterError: reason ``invalid_argument``; ``details["field"]`` names it.
    """
    if not isinstance(message, Message):
        raise invalid("message", message, "a Message")
    check_int("id", message.id, 1, INT64_MAX)
    check_address(message.address)
    check_text("tag", message.tag, max_bytes=MAX_NAME_BYTES)
    if not isinstance(message.payload, bytes):
        raise invalid("payload", message.payload, "bytes")
    check_headers(message.headers)
    if message.primary_key is not None:
        # "" would make every request with an empty key a duplicate of the first
        check_text("primary_key", message.primary_key, max_bytes=MAX_KEY_BYTES)
    if message.deliver_at is not None:
        check_time("deliver_at", message.deliver_at)
    check_int("priority", message.priority, -32768, 32767)
    return message


def check_messages(messages: object) -> list[Message]:
    """The messages of a batch as a list, each checked (the batch is refused whole)."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
        raise invalid("messages", messages, "a sequence of Message")
    return [check_message(message) for message in messages]


def check_headers(headers: object, field: str = "headers") -> None:
    """Refuse headers no backend can store: not a str map, too many, bad text."""
    if not isinstance(headers, Mapping):
        raise invalid(field, headers, "a mapping of str to str")
    if len(headers) > MAX_HEADERS:
        raise invalid_argument(field, f"{len(headers)} of them; the limit is {MAX_HEADERS}",
                               limit=MAX_HEADERS)
    for key, value in headers.items():
        check_text(field, key, max_bytes=MAX_NAME_BYTES)
        check_text(field, value, max_bytes=MAX_HEADER_VALUE_BYTES, empty=True)


def encode_headers(headers: Mapping[str, str]) -> str:
    """Headers as stored: a JSON object."""
    return json.dumps(dict(headers), separators=(",", ":"), sort_keys=True)


def decode_headers(raw: str | None, message_id: int) -> dict[str, str]:
    """Stored headers back into a dict; corrupt ones are a ``storage_corrupt`` error."""
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise corrupt_message(message_id, "its headers are not valid JSON") from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise corrupt_message(message_id, "its headers are not a string map")
    return value
