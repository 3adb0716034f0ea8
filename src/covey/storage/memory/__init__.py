"""The in-memory backend: one process, no I/O, the reference semantics.

Used by ``covey.testing`` and unit tests. Everything happens inside one event
loop without awaiting, so each method is atomic by construction. Shard ownership
is a lease (like SQLite), so two in-process runners can race for a shard.
"""

from __future__ import annotations

from covey.core import Clock, StorageOptions, SystemClock
from covey.storage._base import StorageLifecycle, check_shards
from covey.storage._model import StorageInfo
from covey.storage.memory._events import InMemoryEventStore
from covey.storage.memory._inspection import InMemoryInspectionStore
from covey.storage.memory._messages import InMemoryMessageStorage
from covey.storage.memory._runners import InMemoryRunnerStorage
from covey.storage.memory._state import InMemoryStateStore
from covey.storage.memory._streams import InMemoryStreamStore
from covey.storage.memory._unit import MemoryTransaction


class InMemoryStorage(StorageLifecycle):
    """Every store in memory. ``start``/``close`` only check the shard count.

    Args:
        shards: shards per group (recorded on first start, like the SQL backends).
        options: storage options (leases).
        clock: time source; a TestClock makes leases and ``deliver_at`` testable.
    """

    backend = "memory"

    def __init__(
        self,
        *,
        shards: int = 300,
        options: StorageOptions | None = None,
        clock: Clock | None = None,
    ) -> None:
        options = options or StorageOptions()
        clock = clock or SystemClock()
        self.shards = shards
        self._recorded_shards: int | None = None
        self.runners = InMemoryRunnerStorage(clock, options)
        self.state = InMemoryStateStore(self.runners)
        self.streams = InMemoryStreamStore()
        self.messages = InMemoryMessageStorage(clock, options, self.runners, self.state,
                                               self.streams)
        self.events = InMemoryEventStore(self.messages)
        self.inspection = InMemoryInspectionStore(self.runners, self.messages)

    async def start(self) -> None:
        if self._recorded_shards is None:
            self._recorded_shards = self.shards
        check_shards(self._recorded_shards, self.shards, "this in-memory store")

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        """Nothing to reach: always answers (health checks)."""
        return None

    async def info(self) -> StorageInfo:
        return StorageInfo(
            backend="memory",
            location="memory://",
            schema_version=0,
            shards=self.shards,
            runners=len(await self.runners.live_runners(max_age=float("inf"))),
            messages_total=len(self.messages.rows),
            messages_unprocessed=self.messages.messages_unprocessed(),
        )


__all__ = [
    "InMemoryEventStore",
    "InMemoryInspectionStore",
    "InMemoryMessageStorage",
    "InMemoryRunnerStorage",
    "InMemoryStateStore",
    "InMemoryStorage",
    "InMemoryStreamStore",
    "MemoryTransaction",
]
