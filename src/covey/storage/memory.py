"""The in-memory backend: one process, no I/O, the reference semantics.

Used by ``covey.testing`` and unit tests. Everything happens inside one event
loop without awaiting, so each method is atomic by construction. Shard ownership
is a lease (like SQLite), so two in-process runners can race for a shard.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from covey.core import (
    AlreadyProcessed,
    Clock,
    EntityAddress,
    FencedOut,
    MessageNotFound,
    RunnerAddress,
    ShardId,
    StorageError,
    StorageOptions,
    SystemClock,
    VersionConflict,
)
from covey.storage._base import StorageLifecycle, check_shards
from covey.storage._checks import (
    check_max_age,
    check_registration,
    check_runner_address,
    check_runner_shards,
)
from covey.storage._model import (
    Duplicate,
    Fence,
    Message,
    MessageRecord,
    Reply,
    RunnerInfo,
    Saved,
    SaveResult,
    StorageInfo,
    Versioned,
    check_address,
    check_counting,
    check_ids,
    check_limit,
    check_listing,
    check_message,
    check_purge,
    check_reply,
    check_reschedule,
    check_shard_ids,
    check_state_delete,
    check_state_key,
    check_state_write,
)

_STALE_RUNNER = 300.0  # seconds; a row older than this frees its machine id


@dataclass
class _Lease:
    epoch: int = 0
    owner: RunnerAddress | None = None
    until: float = 0.0


@dataclass
class _Row:
    message: Message
    created_at: float
    lease_until: float | None = None
    reply: Reply | None = None
    processed_at: float | None = None
    last_error: str | None = None

    def record(self) -> MessageRecord:
        return MessageRecord(self.message, self.created_at, self.processed_at, self.reply,
                             self.last_error, self.lease_until)


class InMemoryRunnerStorage:
    """Runner rows and shard leases in dictionaries."""

    def __init__(self, clock: Clock, options: StorageOptions) -> None:
        self._clock = clock
        self._options = options
        self._runners: dict[RunnerAddress, RunnerInfo] = {}
        self.leases: dict[ShardId, _Lease] = {}

    async def register(
        self, address: RunnerAddress, *, groups: Sequence[str] = ("default",), weight: int = 1
    ) -> int:
        check_registration(address, groups, weight)
        now = self._clock.now()
        for other, info in list(self._runners.items()):
            if other != address and info.last_heartbeat < now - _STALE_RUNNER:
                del self._runners[other]
        existing = self._runners.get(address)
        if existing is not None:
            machine_id = existing.machine_id
        else:
            used = {info.machine_id for info in self._runners.values()}
            free = next((i for i in range(1024) if i not in used), None)
            if free is None:
                raise StorageError("all 1024 machine ids are in use by registered runners")
            machine_id = free
        self._runners[address] = RunnerInfo(address, machine_id, tuple(groups), weight, now)
        return machine_id

    async def heartbeat(self, address: RunnerAddress) -> bool:
        check_runner_address(address)
        info = self._runners.get(address)
        if info is None:
            return False
        self._runners[address] = replace(info, last_heartbeat=self._clock.now())
        return True

    async def live_runners(self, max_age: float) -> list[RunnerInfo]:
        check_max_age(max_age)
        cutoff = self._clock.now() - max_age
        return sorted(
            (i for i in self._runners.values() if i.last_heartbeat >= cutoff),
            key=lambda i: i.address,
        )

    async def unregister(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        self._runners.pop(address, None)

    async def expire(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        self._runners.pop(address, None)
        await self.release_all(address)

    async def acquire(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> dict[ShardId, int]:
        check_runner_shards(address, shards, serving=True)
        now = self._clock.now()
        held: dict[ShardId, int] = {}
        for shard in shards:
            lease = self.leases.setdefault(shard, _Lease())
            if lease.owner == address and lease.until > now:
                lease.until = now + self._options.shard_lease
            elif lease.owner is None or lease.until <= now:
                lease.epoch += 1
                lease.owner = address
                lease.until = now + self._options.shard_lease
            else:
                continue
            held[shard] = lease.epoch
        return held

    async def refresh(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> set[ShardId]:
        check_runner_shards(address, shards)
        now = self._clock.now()
        kept: set[ShardId] = set()
        for shard in shards:
            lease = self.leases.get(shard)
            if lease is not None and lease.owner == address and lease.until > now:
                lease.until = now + self._options.shard_lease
                kept.add(shard)
        return kept

    async def release(self, address: RunnerAddress, shards: Collection[ShardId]) -> None:
        check_runner_shards(address, shards)
        for shard in shards:
            lease = self.leases.get(shard)
            if lease is not None and lease.owner == address:
                lease.owner = None
                lease.until = 0.0

    async def release_all(self, address: RunnerAddress) -> None:
        check_runner_address(address)
        await self.release(address, list(self.leases))

    def current_epoch(self, shard: ShardId) -> int:
        lease = self.leases.get(shard)
        return lease.epoch if lease is not None else 0


class InMemoryMessageStorage:
    """Messages and replies in a dictionary keyed by id."""

    def __init__(self, clock: Clock, options: StorageOptions, runners: InMemoryRunnerStorage):
        self._clock = clock
        self._options = options
        self._runners = runners
        self.rows: dict[int, _Row] = {}
        self._by_key: dict[str, int] = {}

    def _save(self, message: Message, staged: dict[int, _Row], keys: dict[str, int]) -> SaveResult:
        key = message.dedupe_key
        if key is not None:
            original = keys.get(key, self._by_key.get(key))
            if original is not None:
                row = staged.get(original) or self.rows.get(original)
                return Duplicate(original, row.reply if row else None)
        if message.id in self.rows or message.id in staged:  # a retried save of one message
            row = staged.get(message.id) or self.rows[message.id]
            return Duplicate(message.id, row.reply)
        staged[message.id] = _Row(
            replace(message, attempts=0, failures=0, starts=0, last_error=None),
            self._clock.now())
        if key is not None:
            keys[key] = message.id
        return Saved(message.id)

    async def save_request(self, message: Message) -> SaveResult:
        return (await self.save_requests([message]))[0]

    async def save_requests(self, messages: Sequence[Message]) -> list[SaveResult]:
        for message in messages:
            check_message(message)
        staged: dict[int, _Row] = {}
        keys: dict[str, int] = {}
        results = [self._save(m, staged, keys) for m in messages]  # raises before commit
        self.rows.update(staged)
        self._by_key.update(keys)
        return results

    def _completable(self, request_id: int, fence: Fence) -> _Row:
        row = self.rows.get(request_id)
        if row is None:
            raise MessageNotFound(f"no message with id {request_id}", message_id=request_id)
        if row.message.address.shard != fence.shard or (
            self._runners.current_epoch(fence.shard) != fence.epoch
        ):
            raise FencedOut(
                f"epoch {fence.epoch} of shard {fence.shard} is no longer current",
                shard=str(fence.shard), epoch=fence.epoch,
            )
        if row.reply is not None:
            raise AlreadyProcessed(f"message {request_id} already has a reply",
                                   message_id=request_id)
        return row

    async def save_reply(self, reply: Reply, fence: Fence) -> None:
        check_reply(reply, fence)
        row = self._completable(reply.request_id, fence)
        row.reply = reply
        row.processed_at = self._clock.now()
        row.lease_until = None

    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        check_shard_ids(shards)
        check_limit(limit)
        now = self._clock.now()
        wanted = set(shards)
        due = [
            row for row in self.rows.values()
            if row.reply is None
            and row.message.address.shard in wanted
            and (row.message.deliver_at is None or row.message.deliver_at <= now)
            and (row.lease_until is None or row.lease_until <= now)
        ]
        due.sort(key=lambda r: (-r.message.priority, r.message.id))
        out: list[Message] = []
        for row in due[: max(limit, 0)]:
            row.lease_until = now + self._options.message_lease
            row.message = replace(row.message, attempts=row.message.attempts + 1)
            out.append(row.message)
        return out

    async def reschedule(
        self, request_id: int, *, deliver_at: float, error: str, fence: Fence
    ) -> int:
        check_reschedule(request_id, deliver_at, error, fence)
        row = self._completable(request_id, fence)
        row.message = replace(row.message, deliver_at=float(deliver_at),
                              failures=row.message.failures + 1, last_error=str(error))
        row.lease_until = None
        row.last_error = str(error)
        return row.message.failures

    async def mark_started(self, request_ids: Collection[int]) -> None:
        for request_id in check_ids(request_ids):
            row = self.rows.get(request_id)
            if row is not None and row.reply is None:
                row.message = replace(row.message, starts=row.message.starts + 1)

    async def inspect(self, request_ids: Collection[int]) -> dict[int, MessageRecord]:
        return {i: self.rows[i].record() for i in check_ids(request_ids) if i in self.rows}

    async def list_messages(
        self,
        entity_type: str,
        *,
        state: Literal["unprocessed", "processed", "error"] | None = None,
        tag: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[MessageRecord]:
        check_listing(entity_type, state, tag, limit, before_id)

        def wanted(row: _Row) -> bool:
            m = row.message
            if m.address.entity_type != entity_type or (tag is not None and m.tag != tag):
                return False
            if before_id is not None and m.id >= before_id:
                return False
            if state == "unprocessed":
                return row.reply is None
            if state == "processed":
                return row.reply is not None
            if state == "error":
                return row.reply is not None and row.reply.is_error
            return True

        rows = sorted((r for r in self.rows.values() if wanted(r)),
                      key=lambda r: r.message.id, reverse=True)
        return [r.record() for r in rows[: max(limit, 0)]]

    async def count_messages(
        self, entity_type: str, *, with_processed: bool = True
    ) -> list[tuple[str, int, str, int]]:
        check_counting(entity_type, with_processed)
        counts: dict[tuple[str, int, str], int] = {}
        for row in self.rows.values():
            m = row.message
            if m.address.entity_type != entity_type:
                continue
            state = ("unprocessed" if row.reply is None
                     else "error" if row.reply.is_error else "processed")
            if state == "processed" and not with_processed:
                continue
            key = (m.tag, m.priority, state)
            counts[key] = counts.get(key, 0) + 1
        return [(t, p, s, n) for (t, p, s), n in sorted(counts.items())]

    async def delete(self, request_ids: Collection[int]) -> int:
        doomed = [i for i in check_ids(request_ids) if i in self.rows]
        for i in doomed:
            self._drop(i)
        return len(doomed)

    async def next_due(self, shards: Collection[ShardId]) -> float | None:
        check_shard_ids(shards)
        now = self._clock.now()
        wanted = set(shards)
        due = [row.message.deliver_at for row in self.rows.values()
               if row.reply is None and row.message.address.shard in wanted
               and row.message.deliver_at is not None and row.message.deliver_at > now]
        return min(due) if due else None

    async def get(self, request_id: int) -> Message | None:
        check_ids([request_id])
        row = self.rows.get(request_id)
        return row.message if row else None

    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        check_ids(request_ids)
        out: dict[int, Reply] = {}
        for request_id in request_ids:
            row = self.rows.get(request_id)
            if row is not None and row.reply is not None:
                out[request_id] = row.reply
        return out

    async def reset_shards(self, shards: Collection[ShardId]) -> None:
        check_shard_ids(shards)
        wanted = set(shards)
        for row in self.rows.values():
            if row.message.address.shard in wanted:
                row.lease_until = None

    async def reset_request(self, request_id: int) -> None:
        check_ids([request_id])
        row = self.rows.get(request_id)
        if row is None:
            raise MessageNotFound(f"no message with id {request_id}", message_id=request_id)
        row.reply = None
        row.processed_at = None
        row.lease_until = None
        row.last_error = None
        row.message = replace(row.message, failures=0, attempts=0, starts=0, last_error=None)

    async def clear_address(self, address: EntityAddress) -> int:
        check_address(address)
        doomed = [
            i for i, row in self.rows.items()
            if row.reply is None
            and row.message.address.entity_type == address.entity_type
            and row.message.address.entity_id == address.entity_id
        ]
        for i in doomed:
            self._drop(i)
        return len(doomed)

    async def purge(
        self, before: float, *, limit: int = 1000, keep_errors_of: Collection[str] = ()
    ) -> int:
        kept = set(check_purge(before, limit, keep_errors_of))
        doomed = [
            i for i, row in self.rows.items()
            if row.reply is not None and row.processed_at is not None
            and row.processed_at < before
            and not (row.reply.is_error and row.message.address.entity_type in kept)
        ][:limit]
        for i in doomed:
            self._drop(i)
        return len(doomed)

    def _drop(self, message_id: int) -> None:
        row = self.rows.pop(message_id)
        key = row.message.dedupe_key
        if key is not None and self._by_key.get(key) == message_id:
            del self._by_key[key]


class InMemoryStateStore:
    """Versioned values in a dictionary."""

    def __init__(self, runners: InMemoryRunnerStorage) -> None:
        self._runners = runners
        self._values: dict[str, Versioned] = {}

    async def get(self, key: str) -> Versioned | None:
        check_state_key(key)
        return self._values.get(key)

    async def set(
        self, key: str, value: bytes, *, expected_version: int | None, fence: Fence | None = None
    ) -> int:
        check_state_write(key, value, expected_version, fence)
        if fence is not None and self._runners.current_epoch(fence.shard) != fence.epoch:
            raise FencedOut(f"epoch {fence.epoch} of shard {fence.shard} is no longer current",
                            shard=str(fence.shard), epoch=fence.epoch)
        current = self._values.get(key)
        found = current.version if current else None
        if found != expected_version:
            raise VersionConflict(
                f"state {key!r} is at version {found}, expected {expected_version}",
                key=key, found=found, expected=expected_version,
            )
        version = (found or 0) + 1
        self._values[key] = Versioned(value, version)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        check_state_delete(key, expected_version)
        current = self._values.get(key)
        if current is None:
            return False
        if expected_version is not None and current.version != expected_version:
            return False
        del self._values[key]
        return True


class InMemoryStorage(StorageLifecycle):
    """All three stores in memory. ``start``/``close`` only check the shard count.

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
        self.messages = InMemoryMessageStorage(clock, options, self.runners)
        self.state = InMemoryStateStore(self.runners)

    async def start(self) -> None:
        if self._recorded_shards is None:
            self._recorded_shards = self.shards
        check_shards(self._recorded_shards, self.shards, "this in-memory store")

    async def close(self) -> None:
        return None

    async def info(self) -> StorageInfo:
        rows = self.messages.rows.values()
        return StorageInfo(
            backend="memory",
            location="memory://",
            schema_version=0,
            shards=self.shards,
            runners=len(await self.runners.live_runners(max_age=float("inf"))),
            messages_total=len(rows),
            messages_unprocessed=sum(1 for r in rows if r.reply is None),
        )
