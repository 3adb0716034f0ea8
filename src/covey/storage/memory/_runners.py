"""Runner rows and shard leases of the in-memory backend."""

from __future__ import annotations

from dataclasses import dataclass, replace

from covey.core import MAX_MACHINE_ID, Clock, RunnerAddress, ShardId, StorageOptions
from covey.storage._checked import CheckedRunnerStorage
from covey.storage._errors import machine_ids_exhausted
from covey.storage._model import MACHINE_ID_EXPIRY, RunnerInfo


@dataclass
class _Lease:
    epoch: int = 0
    owner: RunnerAddress | None = None
    until: float = 0.0
    acquired_at: float | None = None


class InMemoryRunnerStorage(CheckedRunnerStorage):
    """Runner rows and shard leases in dictionaries."""

    def __init__(self, clock: Clock, options: StorageOptions) -> None:
        self._clock = clock
        self._options = options
        self._runners: dict[RunnerAddress, RunnerInfo] = {}
        self.leases: dict[ShardId, _Lease] = {}

    async def _register(self, address: RunnerAddress, groups: tuple[str, ...],
                        weight: int) -> int:
        now = self._clock.now()
        for other, info in list(self._runners.items()):
            if other != address and info.last_heartbeat < now - MACHINE_ID_EXPIRY:
                del self._runners[other]
        existing = self._runners.get(address)
        if existing is not None:
            machine_id = existing.machine_id
        else:
            used = {info.machine_id for info in self._runners.values()}
            free = next((i for i in range(MAX_MACHINE_ID + 1) if i not in used), None)
            if free is None:
                raise machine_ids_exhausted()
            machine_id = free
        self._runners[address] = RunnerInfo(address, machine_id, groups, weight, now)
        return machine_id

    async def _heartbeat(self, address: RunnerAddress) -> bool:
        info = self._runners.get(address)
        if info is None:
            return False
        self._runners[address] = replace(info, last_heartbeat=self._clock.now())
        return True

    async def _live_runners(self, max_age: float) -> list[RunnerInfo]:
        cutoff = self._clock.now() - max_age
        return sorted(
            (i for i in self._runners.values() if i.last_heartbeat >= cutoff),
            key=lambda i: i.address,
        )

    async def _unregister(self, address: RunnerAddress) -> None:
        self._runners.pop(address, None)

    async def _expire(self, address: RunnerAddress) -> None:
        self._runners.pop(address, None)
        await self._release_all(address)

    async def _acquire(self, address: RunnerAddress, shards: list[ShardId]) -> dict[ShardId, int]:
        now = self._clock.now()
        held: dict[ShardId, int] = {}
        for shard in shards:
            lease = self.leases.setdefault(shard, _Lease())
            if lease.owner == address and lease.until > now:
                lease.until = now + self._options.shard_lease
            elif lease.owner is None or lease.until <= now:
                lease.epoch += 1
                lease.owner = address
                lease.acquired_at = now
                lease.until = now + self._options.shard_lease
            else:
                continue
            held[shard] = lease.epoch
        return held

    async def _refresh(self, address: RunnerAddress, shards: list[ShardId]) -> set[ShardId]:
        now = self._clock.now()
        kept: set[ShardId] = set()
        for shard in shards:
            lease = self.leases.get(shard)
            if lease is not None and lease.owner == address and lease.until > now:
                lease.until = now + self._options.shard_lease
                kept.add(shard)
        return kept

    async def _release(self, address: RunnerAddress, shards: list[ShardId]) -> None:
        for shard in shards:
            lease = self.leases.get(shard)
            if lease is not None and lease.owner == address:
                lease.owner = None
                lease.until = 0.0

    async def _release_all(self, address: RunnerAddress) -> None:
        await self._release(address, list(self.leases))

    def current_epoch(self, shard: ShardId) -> int | None:
        """The shard's epoch (``None``: never acquired), for fenced writes."""
        lease = self.leases.get(shard)
        return lease.epoch if lease is not None else None
