"""Argument checks of the storage contracts, shared by every backend.

They run once, in :mod:`covey.storage._checked`, before a backend sees the
call: a malformed value is refused the same way on memory, SQLite and
PostgreSQL, with a non-retryable :class:`~covey.core.ClusterError` (reason
``invalid_argument``, ``details["field"]`` naming the argument), and nothing is
read, written or locked. A value no backend could store (an id beyond int64, a
NUL in a name, a NaN time) would otherwise fail differently on each: a driver
error on one, a silent no-op on another.

Messages are checked in :mod:`covey.storage._message`, registrations and
runner arguments in :mod:`covey.storage._runner_checks`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Collection

from covey.core import MAX_ENTITY_ID_BYTES, MAX_NAME_BYTES, EntityAddress, ShardId
from covey.core.runtime import check_text
from covey.storage._errors import invalid
from covey.storage._model import Fence, Reply

#: The longest state key (UTF-8 bytes): it is indexed, and a PostgreSQL index row
#: holds at most about 2700 bytes.
MAX_STATE_KEY_BYTES = 2048
#: Ids, epochs, versions and row counts are stored as int64.
INT64_MAX = (1 << 63) - 1
#: Shard numbers are stored as int32.
INT32_MAX = (1 << 31) - 1
#: What ``list_messages(state=...)`` accepts besides ``None``.
MESSAGE_STATES = ("unprocessed", "processed", "error")


def check_int(field: str, value: object, low: int, high: int) -> int:
    """``value`` if it is an int (a bool is not) within ``low..high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(field, value, f"an int in {low}..{high}")
    return value


def check_id(field: str, value: object) -> int:
    """``value`` if it is an id a message can have: an int in 1..2**63-1."""
    return check_int(field, value, 1, INT64_MAX)


def check_ids(request_ids: object) -> list[int]:
    """Distinct message ids, sorted (``details["field"] == "request_id"``)."""
    if isinstance(request_ids, str | bytes) or not isinstance(request_ids, Collection):
        raise invalid("request_id", request_ids, "a collection of message ids")
    # each is checked before set(): an unhashable id must be refused, not raise TypeError
    return sorted({check_id("request_id", request_id) for request_id in request_ids})


def check_time(field: str, value: object) -> float:
    """``value`` as a float if it is a time (Unix seconds): finite and not negative.

    A NaN or infinite time would never come due (or always be due) and differs
    between backends; a timer set for it would spin.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(field, value, "a time in Unix seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond any float
        raise invalid(field, value, "a time a float can hold") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise invalid(field, value, "a time must be finite and not negative")
    return seconds


def check_limit(limit: object, *, low: int = 0) -> int:
    """``limit`` if it is a row count: an int in ``low``..2**63-1."""
    return check_int("limit", limit, low, INT64_MAX)


def check_shard(field: str, shard: object) -> ShardId:
    """``shard`` if it is a shard id a message can have (group name, 1..2**31-1)."""
    if not isinstance(shard, ShardId):
        raise invalid(field, shard, "a ShardId")
    if not isinstance(shard.id, int) or isinstance(shard.id, bool) or not (
            1 <= shard.id <= INT32_MAX):
        raise invalid(field, shard, f"a shard number in 1..{INT32_MAX}")
    check_text(field, shard.group, max_bytes=MAX_NAME_BYTES)
    return shard


def check_shard_ids(shards: object) -> list[ShardId]:
    """Distinct shard ids, sorted (``details["field"] == "shards"``)."""
    if isinstance(shards, str | bytes) or not isinstance(shards, Collection):
        raise invalid("shards", shards, "a collection of ShardId")
    return sorted({check_shard("shards", shard) for shard in shards})


def check_address(address: object) -> EntityAddress:
    """``address`` if its names and shard are ones a message can have."""
    if not isinstance(address, EntityAddress):
        raise invalid("address", address, "an EntityAddress")
    check_text("address.entity_type", address.entity_type, max_bytes=MAX_NAME_BYTES)
    check_text("address.entity_id", address.entity_id, max_bytes=MAX_ENTITY_ID_BYTES)
    check_shard("address.shard", address.shard)
    return address


def check_fence(fence: object) -> Fence:
    """``fence`` if it is a :class:`Fence` of a valid shard and an int64 epoch."""
    if not isinstance(fence, Fence):
        raise invalid("fence", fence, "a Fence")
    check_shard("fence", fence.shard)
    check_int("fence.epoch", fence.epoch, 0, INT64_MAX)
    return fence


def check_reply(reply: object, fence: object) -> None:
    """Refuse a malformed ``save_reply``."""
    if not isinstance(reply, Reply):
        raise invalid("reply", reply, "a Reply")
    check_id("request_id", reply.request_id)
    if not isinstance(reply.payload, bytes):
        raise invalid("reply.payload", reply.payload, "bytes")
    if not isinstance(reply.is_error, bool):
        raise invalid("reply.is_error", reply.is_error, "a bool")
    check_fence(fence)


def check_reschedule(request_id: object, deliver_at: object, error: object,
                     fence: object) -> float:
    """Refuse a malformed ``reschedule``; ``deliver_at`` as a float."""
    check_id("request_id", request_id)
    check_fence(fence)
    seconds = check_time("deliver_at", deliver_at)
    # no length limit: a job's error history grows with its attempts
    check_text("error", error, max_bytes=sys.maxsize, empty=True)
    return seconds


def check_entity_type(entity_type: object) -> None:
    """Refuse an entity type a listing, count or purge could not look up."""
    check_text("entity_type", entity_type, max_bytes=MAX_NAME_BYTES, empty=True)


def check_listing(entity_type: object, state: object, tag: object, limit: object,
                  before_id: object) -> None:
    """Refuse a malformed ``list_messages``."""
    check_entity_type(entity_type)
    if state is not None and not (isinstance(state, str) and state in MESSAGE_STATES):
        raise invalid("state", state, "None or one of " + ", ".join(MESSAGE_STATES))
    if tag is not None:
        check_text("tag", tag, max_bytes=MAX_NAME_BYTES, empty=True)
    check_limit(limit)
    if before_id is not None:
        check_id("before_id", before_id)


def check_counting(entity_type: object, with_processed: object) -> None:
    """Refuse a malformed ``count_messages``."""
    check_entity_type(entity_type)
    if not isinstance(with_processed, bool):
        raise invalid("with_processed", with_processed, "a bool")


def check_purge(before: object, limit: object, keep_errors_of: object) -> tuple[float, list[str]]:
    """Refuse a malformed ``purge``; ``before`` as a float and the kept types, sorted.

    ``before`` must be a finite time >= 0 (NaN would match no row on one backend
    and every row on another), ``limit`` an int >= 1, ``keep_errors_of`` a
    collection of entity types (a bare string is refused: it would be read as
    its characters).
    """
    seconds = check_time("before", before)
    check_limit(limit, low=1)
    if isinstance(keep_errors_of, str | bytes) or not isinstance(keep_errors_of, Collection):
        raise invalid("keep_errors_of", keep_errors_of, "a collection of entity types")
    for entity_type in keep_errors_of:
        check_text("keep_errors_of", entity_type, max_bytes=MAX_NAME_BYTES, empty=True)
    return seconds, sorted(set(keep_errors_of))


def check_state_key(key: object) -> str:
    """``key`` if it is a non-empty string every backend can store as a state key."""
    return check_text("key", key, max_bytes=MAX_STATE_KEY_BYTES)


def check_version(expected_version: object) -> None:
    """Refuse an ``expected_version`` that no stored value can have (versions start at 1)."""
    if expected_version is not None:
        check_int("expected_version", expected_version, 1, INT64_MAX)


def check_state_write(key: object, value: object, expected_version: object,
                      fence: object) -> None:
    """Refuse a malformed ``StateStore.set``."""
    check_state_key(key)
    if not isinstance(value, bytes):
        raise invalid("value", value, "bytes")
    check_version(expected_version)
    if fence is not None:
        check_fence(fence)
