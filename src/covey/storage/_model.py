"""The records that cross the storage contracts."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from covey.core import ClusterError, EntityAddress, Reason, RunnerAddress, ShardId, StorageError

#: The longest dedupe key stored as is; longer keys are stored as their SHA-256.
MAX_DEDUPE_KEY = 255


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


def check_ids(request_ids: Collection[int]) -> list[int]:
    """Distinct message ids, each checked to be an int (typed error otherwise)."""
    ids = list(set(request_ids))
    for request_id in ids:
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise _bad("request_id", request_id)
    return ids


def check_state_key(key: object) -> None:
    """Refuse a state key that is not a non-empty string."""
    if not isinstance(key, str) or not key:
        raise _bad("key", key)


def check_state_write(key: object, value: object, expected_version: object,
                      fence: object) -> None:
    """Refuse malformed ``StateStore.set`` arguments with a typed error."""
    check_state_key(key)
    if not isinstance(value, bytes):
        raise _bad("value", value)
    if expected_version is not None and (
            not isinstance(expected_version, int) or isinstance(expected_version, bool)):
        raise _bad("expected_version", expected_version)
    if fence is not None and not isinstance(fence, Fence):
        raise _bad("fence", fence)


def check_reschedule(request_id: int, deliver_at: object, error: object, fence: Fence) -> None:
    """Refuse malformed ``reschedule`` arguments with a typed error."""
    check_reply(Reply(request_id, b""), fence)
    if not isinstance(deliver_at, int | float) or isinstance(deliver_at, bool):
        raise _bad("deliver_at", deliver_at)
    if not isinstance(error, str):
        raise _bad("error", error)


def check_listing(entity_type: object, state: object, tag: object, limit: object,
                  before_id: object) -> None:
    """Refuse malformed ``list_messages`` arguments with a typed error."""
    if not isinstance(entity_type, str):
        raise _bad("entity_type", entity_type)
    if state not in (None, "unprocessed", "processed", "error"):
        raise _bad("state", state)
    if tag is not None and not isinstance(tag, str):
        raise _bad("tag", tag)
    for name, value in (("limit", limit), ("before_id", before_id)):
        if (value is not None or name == "limit") and (
                not isinstance(value, int) or isinstance(value, bool)):
            raise _bad(name, value)


def _bad(what: str, value: object) -> ClusterError:
    return ClusterError(
        f"invalid {what}: {value!r} ({type(value).__name__})",
        reason=Reason.INVALID_ARGUMENT,
        field=what,
    )


def check_message(message: Message) -> None:
    """Refuse a message with wrong field types before it reaches the database.

    Raises:
        ClusterError: reason ``invalid_argument``; ``details["field"]`` names it.
    """
    if not isinstance(message, Message):
        raise _bad("message", message)
    if not isinstance(message.id, int) or isinstance(message.id, bool) or not (
        0 < message.id <= _INT64_MAX
    ):
        raise _bad("id", message.id)
    address = message.address
    if not isinstance(address, EntityAddress):
        raise _bad("address", address)
    if not isinstance(address.entity_type, str) or not address.entity_type:
        raise _bad("address.entity_type", address.entity_type)
    if not isinstance(address.entity_id, str):
        raise _bad("address.entity_id", address.entity_id)
    if not isinstance(address.shard, ShardId) or address.shard.id < 1:
        raise _bad("address.shard", address.shard)
    if not isinstance(message.tag, str) or not message.tag:
        raise _bad("tag", message.tag)
    if not isinstance(message.payload, bytes):
        raise _bad("payload", message.payload)
    if not isinstance(message.headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in message.headers.items()
    ):
        raise _bad("headers", message.headers)
    if message.primary_key is not None and not isinstance(message.primary_key, str):
        raise _bad("primary_key", message.primary_key)
    if message.deliver_at is not None and (
        not isinstance(message.deliver_at, int | float) or isinstance(message.deliver_at, bool)
    ):
        raise _bad("deliver_at", message.deliver_at)
    if not isinstance(message.priority, int) or isinstance(message.priority, bool) or not (
        -32768 <= message.priority <= 32767
    ):
        raise _bad("priority", message.priority)


def check_reply(reply: Reply, fence: Fence) -> None:
    """Refuse a reply or fence with wrong field types."""
    if not isinstance(reply, Reply):
        raise _bad("reply", reply)
    if not isinstance(reply.request_id, int) or isinstance(reply.request_id, bool):
        raise _bad("request_id", reply.request_id)
    if not isinstance(reply.payload, bytes):
        raise _bad("reply.payload", reply.payload)
    if not isinstance(fence, Fence) or not isinstance(fence.shard, ShardId):
        raise _bad("fence", fence)
    if not isinstance(fence.epoch, int) or isinstance(fence.epoch, bool):
        raise _bad("fence.epoch", fence.epoch)


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
