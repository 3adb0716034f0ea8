"""The small records that cross the storage contracts (messages: :mod:`._message`)."""

from __future__ import annotations

from dataclasses import dataclass

from covey.core import RunnerAddress, ShardId

#: A registration whose heartbeat is older than this (seconds) is deleted by the
#: next ``register`` on any backend, and its machine id is free again. Far
#: longer than any runner TTL: a machine id must not be reused while snowflakes
#: made under it may still be in flight.
MACHINE_ID_EXPIRY = 300.0


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
