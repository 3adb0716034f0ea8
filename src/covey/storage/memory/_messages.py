"""Messages and replies of the in-memory backend."""

from __future__ import annotations

from dataclasses import dataclass, replace

from covey.core import Clock, EntityAddress, ShardId, StorageOptions
from covey.storage._checked import CheckedMessageStorage, MessageState
from covey.storage._errors import completion_refused, message_not_found
from covey.storage._events_contract import EVENT_ENTITY_TYPE, DeliveryStats, EventRecord
from covey.storage._message import Message, MessageRecord
from covey.storage._model import Duplicate, Fence, Reply, Saved, SaveResult
from covey.storage._streams_contract import StreamEntry
from covey.storage._unit import CheckedUnitOfWork, StateWrite
from covey.storage.memory._events import EventLog
from covey.storage.memory._runners import InMemoryRunnerStorage
from covey.storage.memory._state import InMemoryStateStore
from covey.storage.memory._streams import InMemoryStreamStore
from covey.storage.memory._unit import InMemoryUnitOfWork, MemoryTransaction


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

    def state(self) -> MessageState:
        if self.reply is None:
            return "unprocessed"
        return "error" if self.reply.is_error else "processed"


class InMemoryMessageStorage(CheckedMessageStorage):
    """Messages and replies in a dictionary keyed by id.

    ``streams`` is the stream store a unit of work appends its stream items to.
    """

    def __init__(self, clock: Clock, options: StorageOptions, runners: InMemoryRunnerStorage,
                 state: InMemoryStateStore, streams: InMemoryStreamStore) -> None:
        self._clock = clock
        self._options = options
        self._runners = runners
        self._state = state
        self._streams = streams
        self.rows: dict[int, _Row] = {}
        self._by_key: dict[str, int] = {}
        self.event_log = EventLog()

    def _stage(self, message: Message, staged: dict[int, _Row],
               keys: dict[str, int]) -> SaveResult:
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

    async def _save_request(self, message: Message) -> SaveResult:
        return (await self._save_requests([message]))[0]

    async def _save_requests(self, messages: list[Message]) -> list[SaveResult]:
        return self.store_batch(messages, [])

    def store_batch(self, messages: list[Message],
                    events: list[EventRecord]) -> list[SaveResult]:
        """Store messages (deduplicated) and events (a stored id is kept) at once."""
        staged: dict[int, _Row] = {}
        keys: dict[str, int] = {}
        results = [self._stage(m, staged, keys) for m in messages]  # raises before commit
        fresh = self.event_log.stage(events)
        self.rows.update(staged)
        self._by_key.update(keys)
        self.event_log.apply(fresh)
        return results

    def _completable(self, request_id: int, fence: Fence) -> _Row:
        row = self.rows.get(request_id)
        refused = completion_refused(
            fence, self._runners.current_epoch(fence.shard), request_id,
            None if row is None else row.message.address.shard,
            row is not None and row.reply is not None)
        if refused is not None:
            raise refused
        assert row is not None  # refused above otherwise
        return row

    async def _save_reply(self, reply: Reply, fence: Fence) -> None:
        self._complete(self._completable(reply.request_id, fence), reply)

    def _complete(self, row: _Row, reply: Reply) -> None:
        row.reply = reply
        row.processed_at = self._clock.now()
        row.lease_until = None

    def _unit(self, fence: Fence, request_id: int) -> CheckedUnitOfWork:
        return InMemoryUnitOfWork(self, fence, request_id, self._save_reply)

    def commit_unit(self, reply: Reply, fence: Fence, states: list[StateWrite],
                    sent: list[Message], events: list[EventRecord],
                    streams: list[StreamEntry], app: MemoryTransaction | None) -> None:
        """A unit's commit: every check, then every write, with no ``await`` between.

        Checked in order (the first refusal raises, and nothing is written): the
        fenced-completion rule, the state versions, the application's callables
        (an error of theirs is ``handler_failed``); the outgoing messages are
        deduplicated as by ``save_requests``, the stream items appended as by
        ``streams.append`` (checked when staged: they cannot be refused).
        """
        row = self._completable(reply.request_id, fence)
        self._state.check_writes(states)
        staged: dict[int, _Row] = {}
        keys: dict[str, int] = {}
        for message in sent:
            self._stage(message, staged, keys)
        fresh = self.event_log.stage(events)
        if app is not None:
            app.apply()
        self._state.apply_writes(states)
        self.rows.update(staged)
        self._by_key.update(keys)
        self.event_log.apply(fresh)
        if streams:
            self._streams.store(streams, self._clock.now())
        self._complete(row, reply)

    async def _unprocessed(self, shards: list[ShardId], limit: int) -> list[Message]:
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
        for row in due[:limit]:
            row.lease_until = now + self._options.message_lease
            row.message = replace(row.message, attempts=row.message.attempts + 1)
            out.append(row.message)
        return out

    def delivery_stats(self) -> list[DeliveryStats]:
        """The event store's ``delivery_stats`` (the rows live here)."""
        pending: dict[str, list[float]] = {}
        dead: dict[str, int] = {}
        for row in self.rows.values():
            if row.message.address.entity_type != EVENT_ENTITY_TYPE:
                continue
            group = row.message.address.entity_id.split("/", 1)[0]
            if row.reply is None:
                pending.setdefault(group, []).append(row.created_at)
            elif row.reply.is_error:
                dead[group] = dead.get(group, 0) + 1
        return [DeliveryStats(g, len(pending.get(g, ())), min(pending[g]) if g in pending
                              else None, dead.get(g, 0))
                for g in sorted({*pending, *dead})]

    async def _unprocessed_of(self, address: EntityAddress, limit: int) -> list[Message]:
        rows = sorted((row for row in self.rows.values()
                       if row.reply is None
                       and row.message.address.entity_type == address.entity_type
                       and row.message.address.entity_id == address.entity_id),
                      key=lambda r: r.message.id)
        return [row.message for row in rows[:limit]]

    async def _reschedule(self, request_id: int, deliver_at: float, error: str,
                          fence: Fence) -> int:
        row = self._completable(request_id, fence)
        row.message = replace(row.message, deliver_at=deliver_at,
                              failures=row.message.failures + 1, last_error=error)
        row.lease_until = None
        row.last_error = error
        return row.message.failures

    async def _mark_started(self, ids: list[int]) -> None:
        for request_id in ids:
            row = self.rows.get(request_id)
            if row is not None and row.reply is None:
                row.message = replace(row.message, starts=row.message.starts + 1)

    async def _inspect(self, ids: list[int]) -> dict[int, MessageRecord]:
        return {i: self.rows[i].record() for i in ids if i in self.rows}

    async def _list_messages(self, entity_type: str, state: MessageState | None,
                             tag: str | None, limit: int,
                             before_id: int | None) -> list[MessageRecord]:
        def wanted(row: _Row) -> bool:
            m = row.message
            if m.address.entity_type != entity_type or (tag is not None and m.tag != tag):
                return False
            if before_id is not None and m.id >= before_id:
                return False
            if state == "processed":  # any reply, error or not
                return row.reply is not None
            return state is None or row.state() == state

        rows = sorted((r for r in self.rows.values() if wanted(r)),
                      key=lambda r: r.message.id, reverse=True)
        return [r.record() for r in rows[:limit]]

    async def _count_messages(self, entity_type: str,
                              with_processed: bool) -> list[tuple[str, int, str, int]]:
        counts: dict[tuple[str, int, str], int] = {}
        for row in self.rows.values():
            m = row.message
            state = row.state()
            if m.address.entity_type != entity_type or (
                    state == "processed" and not with_processed):
                continue
            key = (m.tag, m.priority, state)
            counts[key] = counts.get(key, 0) + 1
        return [(t, p, s, n) for (t, p, s), n in sorted(counts.items())]

    async def _delete(self, ids: list[int]) -> int:
        doomed = [i for i in ids if i in self.rows]
        for i in doomed:
            self._drop(i)
        return len(doomed)

    async def _next_due(self, shards: list[ShardId]) -> float | None:
        now = self._clock.now()
        wanted = set(shards)
        due = [row.message.deliver_at for row in self.rows.values()
               if row.reply is None and row.message.address.shard in wanted
               and row.message.deliver_at is not None and row.message.deliver_at > now]
        return min(due) if due else None

    async def _get(self, request_id: int) -> Message | None:
        row = self.rows.get(request_id)
        return row.message if row else None

    async def _find(self, dedupe_key: str) -> int | None:
        found = self._by_key.get(dedupe_key)
        return found if found is not None and found in self.rows else None

    async def _replies_for(self, ids: list[int]) -> dict[int, Reply]:
        out: dict[int, Reply] = {}
        for request_id in ids:
            row = self.rows.get(request_id)
            if row is not None and row.reply is not None:
                out[request_id] = row.reply
        return out

    async def _reset_shards(self, shards: list[ShardId]) -> None:
        wanted = set(shards)
        for row in self.rows.values():
            if row.message.address.shard in wanted:
                row.lease_until = None

    async def _reset_request(self, request_id: int) -> None:
        row = self.rows.get(request_id)
        if row is None:
            raise message_not_found(request_id)
        row.reply = None
        row.processed_at = None
        row.lease_until = None
        row.last_error = None
        row.message = replace(row.message, failures=0, attempts=0, starts=0, last_error=None)

    async def _clear_address(self, address: EntityAddress) -> int:
        doomed = [
            i for i, row in self.rows.items()
            if row.reply is None
            and row.message.address.entity_type == address.entity_type
            and row.message.address.entity_id == address.entity_id
        ]
        for i in doomed:
            self._drop(i)
        return len(doomed)

    async def _purge(self, before: float, limit: int, keep_errors_of: list[str]) -> int:
        kept = set(keep_errors_of)
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

    def messages_unprocessed(self) -> int:
        """How many stored messages have no reply (for ``info``)."""
        return sum(1 for row in self.rows.values() if row.reply is None)
