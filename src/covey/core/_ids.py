"""Identifiers: shards, entity addresses and runner addresses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from covey.core._errors import ClusterError, Reason

DEFAULT_GROUP = "default"


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
    """The shard that owns ``entity_id`` in a group of ``shards`` shards."""
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
