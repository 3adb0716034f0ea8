"""Builders shared by the contract tests."""

from __future__ import annotations

import itertools
from typing import Any

from covey.core import EntityAddress, RunnerAddress, ShardId
from covey.storage import Message

_ids = itertools.count(1_000_001)

S1 = ShardId("default", 1)
S2 = ShardId("default", 2)
S3 = ShardId("default", 3)
RUNNER_A = RunnerAddress("10.0.0.1", 7001)
RUNNER_B = RunnerAddress("10.0.0.2", 7002)


def next_id() -> int:
    return next(_ids)


def msg(
    entity_id: str = "e1",
    *,
    shard: ShardId = S1,
    tag: str = "deposit",
    payload: bytes = b"\x81\xa1a\x01",
    entity_type: str = "Account",
    **fields: Any,
) -> Message:
    return Message(
        id=fields.pop("id", None) or next_id(),
        address=EntityAddress(entity_type, entity_id, shard),
        tag=tag,
        payload=payload,
        **fields,
    )
