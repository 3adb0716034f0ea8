"""Layer 1: where covey keeps its state.

The contracts (:class:`RunnerStorage`, :class:`MessageStorage`,
:class:`StateStore`, :class:`EventStore`, :class:`StreamStore`, bundled as a
:class:`Storage`) and three interchangeable backends: ``memory`` (tests, one
process), ``sqlite`` (the embedded default; WAL, several processes on one host)
and ``postgres`` (the distributed engine: advisory shard locks, group commit).
:func:`open_storage` picks one from a database URL.
"""

from __future__ import annotations

from covey.core import Clock, ConfigError, CoveyConfig, SystemClock
from covey.storage._contracts import (
    MessageStorage,
    RunnerStorage,
    StateStore,
    Storage,
    TransactionalMessages,
    WakeupSource,
)
from covey.storage._events_contract import (
    EVENT_ENTITY_TYPE,
    DeliveryStats,
    EventGroup,
    EventRecord,
    EventStore,
    GroupStart,
    TopicInfo,
    TransactionalEvents,
)
from covey.storage._inspection_contract import InspectionStore, ShardRow, TagCount
from covey.storage._message import MAX_DEDUPE_KEY, Message, MessageRecord, dedupe_key
from covey.storage._model import (
    Duplicate,
    Fence,
    Reply,
    RunnerInfo,
    Saved,
    SaveResult,
    StorageInfo,
    Versioned,
)
from covey.storage._streams_contract import (
    MAX_STREAM_KEY_BYTES,
    Mail,
    Route,
    StreamEntry,
    StreamHead,
    StreamItem,
    StreamStore,
    TransactionalStreams,
)
from covey.storage._unit_contract import UnitOfWork


def open_storage(config: CoveyConfig, *, clock: Clock | None = None) -> Storage:
    """The backend named by ``config.database_url`` (not started yet).

    ``memory://`` → in-memory; ``sqlite:///relative.db`` or ``sqlite:////abs.db``
    → SQLite; ``postgresql://…`` or ``postgres://…`` → PostgreSQL.
    """
    url = config.database_url
    clock = clock or SystemClock()
    if url.startswith("memory:"):
        from covey.storage.memory import InMemoryStorage

        return InMemoryStorage(shards=config.shards, options=config.storage, clock=clock)
    if url.startswith("sqlite:"):
        from covey.storage.sqlite import SqliteStorage

        path = url.removeprefix("sqlite:").removeprefix("//")
        if path.startswith("/") and not path.startswith("//"):
            path = path[1:]  # sqlite:///rel.db -> rel.db ; sqlite:////abs.db -> /abs.db
        elif path.startswith("//"):
            path = path[1:]
        if not path:
            raise ConfigError(f"SQLite URL names no file: {url!r}", setting="COVEY_DATABASE_URL")
        return SqliteStorage(path, shards=config.shards, options=config.storage, clock=clock)
    if url.startswith(("postgresql:", "postgres:")):
        from covey.storage.postgres import PostgresStorage

        return PostgresStorage(url, shards=config.shards, options=config.storage, clock=clock,
                               runner_ttl=config.sharding.runner_ttl)
    raise ConfigError(
        f"unsupported database URL {url!r}: use sqlite:///file.db, postgresql://… or memory://",
        setting="COVEY_DATABASE_URL",
    )


__all__ = [
    "DeliveryStats",
    "Duplicate",
    "EVENT_ENTITY_TYPE",
    "EventGroup",
    "EventRecord",
    "EventStore",
    "Fence",
    "GroupStart",
    "InspectionStore",
    "MAX_DEDUPE_KEY",
    "MAX_STREAM_KEY_BYTES",
    "Mail",
    "Message",
    "MessageRecord",
    "MessageStorage",
    "Reply",
    "Route",
    "RunnerInfo",
    "RunnerStorage",
    "SaveResult",
    "Saved",
    "ShardRow",
    "StateStore",
    "Storage",
    "StorageInfo",
    "StreamEntry",
    "StreamHead",
    "StreamItem",
    "StreamStore",
    "TagCount",
    "TopicInfo",
    "TransactionalEvents",
    "TransactionalMessages",
    "TransactionalStreams",
    "UnitOfWork",
    "Versioned",
    "WakeupSource",
    "dedupe_key",
    "open_storage",
]
