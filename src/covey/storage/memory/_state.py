"""The versioned values of the in-memory backend."""

from __future__ import annotations

from covey.storage._checked import CheckedStateStore
from covey.storage._errors import fenced_out, version_conflict
from covey.storage._model import Fence, Versioned
from covey.storage._unit import StateWrite
from covey.storage.memory._runners import InMemoryRunnerStorage


class InMemoryStateStore(CheckedStateStore):
    """Versioned values in a dictionary."""

    def __init__(self, runners: InMemoryRunnerStorage) -> None:
        self._runners = runners
        self._values: dict[str, Versioned] = {}

    async def _get(self, key: str) -> Versioned | None:
        return self._values.get(key)

    async def _set(self, key: str, value: bytes, expected_version: int | None,
                   fence: Fence | None, sync: bool = True) -> int:
        if fence is not None:
            current_epoch = self._runners.current_epoch(fence.shard)
            if current_epoch != fence.epoch:
                raise fenced_out(fence, current_epoch)
        current = self._values.get(key)
        found = current.version if current else None
        if found != expected_version:
            raise version_conflict(key, expected_version, found)
        version = (found or 0) + 1
        self._values[key] = Versioned(value, version)
        return version

    def check_writes(self, writes: list[StateWrite]) -> None:
        """Refuse the first write whose expected version is not the stored one."""
        for write in writes:
            current = self._values.get(write.key)
            found = current.version if current else None
            if found != write.expected_version:
                raise version_conflict(write.key, write.expected_version, found)

    def apply_writes(self, writes: list[StateWrite]) -> None:
        """Apply writes that :meth:`check_writes` accepted."""
        for write in writes:
            self._values[write.key] = Versioned(write.value, (write.expected_version or 0) + 1)

    async def _delete(self, key: str, expected_version: int | None) -> bool:
        current = self._values.get(key)
        if current is None:
            return False
        if expected_version is not None and current.version != expected_version:
            return False
        del self._values[key]
        return True
