"""The records that cross the storage contracts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from covey.core import EntityAddress, RunnerAddress, ShardId

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
    storage handed the message out (set by storage; ignored on save).
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
