"""Identifiers: shards, entity addresses and runner addresses, and their limits.

The names and keys a message carries (entity type, entity id, RPC name, shard
group, primary key, header names and values) are stored as text on every
backend. :func:`check_text` refuses a value no backend can store the same way —
not a ``str``, empty (only a header value may be), a NUL character, a lone
surrogate (not encodable as UTF-8) or longer than its limit — with
``invalid_argument`` naming the field, before anything is sent or stored. The
limits are in UTF-8 bytes:

====================  ======  =============================================
value                 limit   constant
====================  ======  =============================================
entity type           255     :data:`MAX_NAME_BYTES`
entity id             1024    :data:`MAX_ENTITY_ID_BYTES`
RPC / job name (tag)  255     :data:`MAX_NAME_BYTES`
shard group           255     :data:`MAX_NAME_BYTES`
primary key           4096    :data:`MAX_KEY_BYTES`
header name           255     :data:`MAX_NAME_BYTES`
header value          8192    :data:`MAX_HEADER_VALUE_BYTES`
headers per message   64      :data:`MAX_HEADERS`
====================  ======  =============================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from covey.core._checks import invalid_argument
from covey.core._errors import ClusterError, Reason

DEFAULT_GROUP = "default"

#: The longest entity type, RPC/job name, shard group or header name (UTF-8 bytes).
MAX_NAME_BYTES = 255
#: The longest entity id (UTF-8 bytes); a job's id is ``name:dedupe_key``.
MAX_ENTITY_ID_BYTES = 1024
#: The longest primary key (UTF-8 bytes); its dedupe key is hashed beyond 255 characters.
MAX_KEY_BYTES = 4096
#: The longest header value (UTF-8 bytes).
MAX_HEADER_VALUE_BYTES = 8192
#: The most headers one message carries.
MAX_HEADERS = 64


def check_text(field: str, value: object, *, max_bytes: int, empty: bool = False) -> str:
    """``value`` if every backend can store it as text; a typed error otherwise.

    Args:
        field: the name the error gives in ``details["field"]``.
        value: the value to check.
        max_bytes: the longest UTF-8 encoding allowed.
        empty: whether ``""`` is allowed.

    Raises:
        ClusterError: reason ``invalid_argument``, ``details["field"]`` = ``field``:
            not a ``str``, empty (unless ``empty``), a NUL character, a lone
            surrogate, or longer than ``max_bytes`` (``details["limit"]``).
    """
    if not isinstance(value, str):
        raise invalid_argument(field, f"must be a str, got {type(value).__name__}")
    if not value:
        if empty:
            return value
        raise invalid_argument(field, "must not be empty")
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL; SQLite and memory would store it: refuse everywhere
        raise invalid_argument(field, "must not contain a NUL character")
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise invalid_argument(field, "is not valid Unicode (a lone surrogate)") from None
    if size > max_bytes:
        raise invalid_argument(field, f"is {size} UTF-8 bytes long; the limit is {max_bytes}",
                       size=size, limit=max_bytes)
    return value


@dataclass(frozen=True, order=True, slots=True)
class ShardId:
    """One shard of a shard group. Shard numbers start at 1."""

    group: str
    id: int

    def __str__(self) -> str:
        return f"{self.group}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> ShardId:
        """Parse the ``"group:id"`` form produced by ``str()``."""
        group, sep, number = text.rpartition(":")
        if not sep or not group or not number.isdigit() or int(number) < 1:
            raise ClusterError(
                f"not a shard id: {text!r} (expected 'group:number')",
                reason=Reason.INVALID_ARGUMENT,
            )
        return cls(group, int(number))


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process, version and platform."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def shard_for(entity_id: str, shards: int, group: str = DEFAULT_GROUP) -> ShardId:
    """The shard that owns ``entity_id`` in a group of ``shards`` shards.

    Raises:
        ClusterError: ``invalid_argument`` when ``entity_id`` or ``group`` breaks
            :func:`check_text` (so a bad id is refused where its address is built,
            before any call, volatile or persisted, is sent or stored).
    """
    check_text("entity_id", entity_id, max_bytes=MAX_ENTITY_ID_BYTES)
    check_text("shard_group", group, max_bytes=MAX_NAME_BYTES)
    return ShardId(group, stable_hash(entity_id) % shards + 1)


@dataclass(frozen=True, slots=True)
class EntityAddress:
    """Where a message goes: an entity type, an entity id and its shard."""

    entity_type: str
    entity_id: str
    shard: ShardId = field(compare=False)

    def __str__(self) -> str:
        return f"{self.entity_type}/{self.entity_id}@{self.shard}"


@dataclass(frozen=True, order=True, slots=True)
class RunnerAddress:
    """The host and port a runner's transport listens on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> RunnerAddress:
        """Parse ``"host:port"``."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ClusterError(
                f"not a runner address: {text!r} (expected 'host:port')",
                reason=Reason.INVALID_ARGUMENT,
            )
        return cls(host, int(port))
