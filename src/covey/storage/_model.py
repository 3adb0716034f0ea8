"""The records that cross the storage contracts."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from covey.core import (
    MAX_ENTITY_ID_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    ClusterError,
    EntityAddress,
    Reason,
    RunnerAddress,
    ShardId,
    StorageError,
    check_text,
)

#: The longest dedupe key stored as is; longer keys are stored as their SHA-256.
MAX_DEDUPE_KEY = 255
#: The longest state key (UTF-8 bytes): it is indexed, and a PostgreSQL index row
#: holds at most about 2700 bytes.
MAX_STATE_KEY_BYTES = 2048


@dataclass(frozen=True, slots=True)
class RunnerInfo:
    """A registered runner as storage sees it."""

    address: RunnerAddress
    machine_id: int
    groups: tuple[str, ...]
    weight: int
    last_heartbeat: float


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of shard ownership carried by every completion write.

    ``epoch`` is the value :meth:`RunnerStorage.acquire` returned for ``shard``.
    A write whose epoch is no longer the shard's current epoch is refused with
    :class:`covey.core.FencedOut` and changes nothing.
    """

    shard: ShardId
    epoch: int


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
class Reply:
    """The outcome of a persisted request. ``is_error`` marks an encoded failure."""

    request_id: int
    payload: bytes
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Saved:
    """``save_request`` stored the message under ``id``."""

    id: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A message with the same dedupe key exists already.

    ``reply`` is its reply when it has been processed, else ``None``.
    """

    original_id: int
    reply: Reply | None


SaveResult = Saved | Duplicate


@dataclass(frozen=True, slots=True)
class Versioned:
    """A value in the state store with its version (1 on creation, +1 per write)."""

    value: bytes
    version: int


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """What a storage holds, for humans (``covey status``, the demo)."""

    backend: str
    location: str
    schema_version: int
    shards: int
    runners: int
    messages_total: int
    messages_unprocessed: int


_INT64_MAX = (1 << 63) - 1
_INT32_MAX = (1 << 31) - 1


def check_ids(request_ids: Collection[int]) -> list[int]:
    """Distinct message ids, each an int in 1..2**63-1 (the ids a message can have).

    Raises:
        ClusterError: reason ``invalid_argument``, ``details["field"] == "request_id"``,
            for a non-int id or one outside that range (which no backend could store,
            and which PostgreSQL would refuse with a driver error).
    """
    if isinstance(request_ids, str | bytes) or not isinstance(request_ids, Collection):
        raise _bad("request_id", request_ids)
    for request_id in request_ids:
        # checked before set(): an unhashable id must be refused, not raise TypeError
        if not isinstance(request_id, int) or isinstance(request_id, bool) or not (
            0 < request_id <= _INT64_MAX
        ):
            raise _bad("request_id", request_id)
    return list(set(request_ids))


def check_state_key(key: object) -> None:
    """Refuse a state key that is not a non-empty string every backend can store."""
    check_text("key", key, max_bytes=MAX_STATE_KEY_BYTES)


def check_state_write(key: object, value: object, expected_version: object,
                      fence: object) -> None:
    """Refuse malformed ``StateStore.set`` arguments with a typed error."""
    check_state_key(key)
    if not isinstance(value, bytes):
        raise _bad("value", value)
    _check_version(expected_version)
    if fence is not None:
        check_fence(fence)


def check_state_delete(key: object, expected_version: object) -> None:
    """Refuse malformed ``StateStore.delete`` arguments with a typed error."""
    check_state_key(key)
    _check_version(expected_version)


def _check_version(expected_version: object) -> None:
    # versions start at 1; beyond int64 no backend can store one
    if expected_version is not None and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool)
            or not 0 < expected_version <= _INT64_MAX):
        raise _bad("expected_version", expected_version)


def check_reschedule(request_id: int, deliver_at: object, error: object, fence: Fence) -> None:
    """Refuse malformed ``reschedule`` arguments with a typed error."""
    check_reply(Reply(request_id, b""), fence)
    check_time("deliver_at", deliver_at)
    # no length limit: a job's error history grows with its attempts
    check_text("error", error, max_bytes=sys.maxsize, empty=True)


def check_time(field: str, value: object) -> float:
    """``value`` as a float if it is a time (Unix seconds): finite and not negative.

    A NaN or infinite time would never come due (or always be due) and differs
    between backends; a timer set for it would spin.

    Raises:
        ClusterError: reason ``invalid_argument``, ``details["field"]`` = ``field``.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(field, value)
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        raise _bad(field, value) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ClusterError(
            f"invalid {field}: {value!r} (a time must be finite and not negative)",
            reason=Reason.INVALID_ARGUMENT, field=field,
        )
    return seconds


def check_listing(entity_type: object, state: object, tag: object, limit: object,
                  before_id: object) -> None:
    """Refuse malformed ``list_messages`` arguments with a typed error."""
    check_text("entity_type", entity_type, max_bytes=MAX_NAME_BYTES, empty=True)
    if state not in (None, "unprocessed", "processed", "error"):
        raise _bad("state", state)
    if tag is not None:
        check_text("tag", tag, max_bytes=MAX_NAME_BYTES, empty=True)
    check_limit(limit)
    if before_id is not None and (not isinstance(before_id, int) or isinstance(
            before_id, bool) or not 0 < before_id <= _INT64_MAX):
        raise _bad("before_id", before_id)


def check_limit(limit: object) -> None:
    """Refuse a row limit that is not an int >= 0."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= _INT64_MAX:
        raise _bad("limit", limit)


def check_shard_ids(shards: object) -> None:
    """Refuse anything but a collection of shard ids a message can have."""
    if isinstance(shards, str | bytes) or not isinstance(shards, Collection):
        raise _bad("shards", shards)
    for shard in shards:
        _check_shard("shards", shard)


def _check_shard(field: str, shard: object) -> None:
    if not isinstance(shard, ShardId) or not isinstance(shard.id, int) or isinstance(
        shard.id, bool
    ) or not 1 <= shard.id <= _INT32_MAX:
        raise _bad(field, shard)
    check_text(field, shard.group, max_bytes=MAX_NAME_BYTES)


def check_address(address: object) -> None:
    """Refuse an entity address whose names or shard no message can have."""
    if not isinstance(address, EntityAddress):
        raise _bad("address", address)
    check_text("address.entity_type", address.entity_type, max_bytes=MAX_NAME_BYTES)
    check_text("address.entity_id", address.entity_id, max_bytes=MAX_ENTITY_ID_BYTES)
    _check_shard("address.shard", address.shard)


def _bad(what: str, value: object) -> ClusterError:
    return ClusterError(
        f"invalid {what}: {value!r} ({type(value).__name__})",
        reason=Reason.INVALID_ARGUMENT,
        field=what,
    )


def check_message(message: Message) -> None:
    """Refuse a message no backend can store the same way, before any is written.

    Wrong field types, names and keys that break their limits
    (:func:`covey.core.check_text`: NUL, lone surrogates, too long), more than
    :data:`~covey.core.MAX_HEADERS` headers, a ``deliver_at`` that is not a finite,
    non-negative time, a priority or shard outside the stored ranges.

    Raises:
        ClusterError: reason ``invalid_argument``; ``details["field"]`` names it.
    """
    if not isinstance(message, Message):
        raise _bad("message", message)
    if not isinstance(message.id, int) or isinstance(message.id, bool) or not (
        0 < message.id <= _INT64_MAX
    ):
        raise _bad("id", message.id)
    check_address(message.address)
    check_text("tag", message.tag, max_bytes=MAX_NAME_BYTES)
    if not isinstance(message.payload, bytes):
        raise _bad("payload", message.payload)
    _check_headers(message.headers)
    if message.primary_key is not None:
        # "" would make every request with an empty key a duplicate of the first
        check_text("primary_key", message.primary_key, max_bytes=MAX_KEY_BYTES)
    if message.deliver_at is not None:
        check_time("deliver_at", message.deliver_at)
    if not isinstance(message.priority, int) or isinstance(message.priority, bool) or not (
        -32768 <= message.priority <= 32767
    ):
        raise _bad("priority", message.priority)


def _check_headers(headers: object) -> None:
    if not isinstance(headers, Mapping):
        raise _bad("headers", headers)
    if len(headers) > MAX_HEADERS:
        raise ClusterError(
            f"invalid headers: {len(headers)} of them; the limit is {MAX_HEADERS}",
            reason=Reason.INVALID_ARGUMENT, field="headers", limit=MAX_HEADERS,
        )
    for key, value in headers.items():
        check_text("headers", key, max_bytes=MAX_NAME_BYTES)
        check_text("headers", value, max_bytes=MAX_HEADER_VALUE_BYTES, empty=True)


def check_reply(reply: Reply, fence: Fence) -> None:
    """Refuse a reply or fence with wrong field types."""
    if not isinstance(reply, Reply):
        raise _bad("reply", reply)
    if not isinstance(reply.request_id, int) or isinstance(reply.request_id, bool) or not (
        0 < reply.request_id <= _INT64_MAX
    ):
        raise _bad("request_id", reply.request_id)
    if not isinstance(reply.payload, bytes):
        raise _bad("reply.payload", reply.payload)
    check_fence(fence)


def check_fence(fence: object) -> None:
    """Refuse anything but a :class:`Fence` of a valid shard and an int64 epoch."""
    if not isinstance(fence, Fence):
        raise _bad("fence", fence)
    _check_shard("fence", fence.shard)
    if not isinstance(fence.epoch, int) or isinstance(fence.epoch, bool) or not (
        0 <= fence.epoch <= _INT64_MAX
    ):
        raise _bad("fence.epoch", fence.epoch)


def check_counting(entity_type: object, with_processed: object) -> None:
    """Refuse malformed ``count_messages`` arguments with a typed error."""
    check_text("entity_type", entity_type, max_bytes=MAX_NAME_BYTES, empty=True)
    if not isinstance(with_processed, bool):
        raise _bad("with_processed", with_processed)


def check_purge(before: object, limit: object, keep_errors_of: object) -> list[str]:
    """Refuse malformed ``purge`` arguments; the kept entity types as a list.

    ``before`` must be a finite time >= 0 (NaN would match no row on one backend
    and every row on another), ``limit`` an int >= 1, ``keep_errors_of`` a
    collection of entity-type strings (a bare string is refused: it would be
    read as its characters).
    """
    if not isinstance(before, int | float) or isinstance(before, bool) or not (
            0 <= before < float("inf")):
        raise _bad("before", before)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise _bad("limit", limit)
    if isinstance(keep_errors_of, str | bytes) or not isinstance(keep_errors_of, Collection) \
            or not all(isinstance(t, str) for t in keep_errors_of):
        raise _bad("keep_errors_of", keep_errors_of)
    return sorted(set(keep_errors_of))


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
        raise StorageError(
            f"stored headers of message {message_id} are not valid JSON",
            reason=Reason.STORAGE_CORRUPT,
            message_id=message_id,
        ) from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise StorageError(
            f"stored headers of message {message_id} are not a string map",
            reason=Reason.STORAGE_CORRUPT,
            message_id=message_id,
        )
    return value


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
