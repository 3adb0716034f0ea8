"""The storage contracts. Every backend implements all of them.

Times are Unix seconds from the storage's :class:`covey.core.Clock` (pods are
expected to keep their clocks in sync with NTP; leases are long compared to skew).

Errors are the same on every backend (built in :mod:`covey.storage._errors`):

* Every method may raise :class:`covey.core.StorageError` with reason
  ``storage_unavailable`` when the database cannot be reached; that one is
  retryable.
* Every method refuses a malformed argument, before anything is read or
  written, with a :class:`covey.core.ClusterError` of reason
  ``invalid_argument`` (not retryable) whose ``details["field"]`` names the
  argument (``"request_id"``, ``"fence.epoch"``, ``"address.port"``, …); a text
  too long also has ``details["limit"]`` and ``details["size"]``. The checks
  run once for every backend (:mod:`covey.storage._checked`).
* ``MessageNotFound`` and ``AlreadyProcessed`` carry ``details["message_id"]``.
* ``FencedOut`` carries ``details["shard"]`` (``"group:n"``), ``["epoch"]``
  (the fence's) and ``["current_epoch"]`` (the shard's now; ``None`` if never
  acquired); refused because the message lives in another shard, also
  ``["message_id"]`` and ``["message_shard"]``.
* ``VersionConflict`` carries ``details["key"]``, ``["expected_version"]`` and
  ``["current_version"]`` (``None``: no such key).
* A stored row that cannot be read back is ``storage_corrupt`` with
  ``details["message_id"]``, ``["address"]`` (a runner) or ``["key"]`` (state).
* An application write that fails inside :meth:`UnitOfWork.commit` is an
  :class:`~covey.core.EntityError` ``handler_failed`` with ``details["sql"]``
  and ``["error"]``: the handler's error, not the store's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, Protocol, Self, runtime_checkable

from covey.core import EntityAddress, RunnerAddress, ShardId
from covey.storage._events_contract import EventStore
from covey.storage._inspection_contract import InspectionStore
from covey.storage._message import Message, MessageRecord
from covey.storage._model import Fence, Reply, RunnerInfo, SaveResult, StorageInfo, Versioned
from covey.storage._streams_contract import StreamStore
from covey.storage._unit_contract import UnitOfWork


@runtime_checkable
class RunnerStorage(Protocol):
    """Runner membership and shard ownership with fencing epochs."""

    async def register(
        self, address: RunnerAddress, *, groups: Sequence[str] = ("default",), weight: int = 1
    ) -> int:
        """Register (or re-register) a runner; returns its machine id.

        Machine ids (0..:data:`~covey.core.MAX_MACHINE_ID`) are unique among
        registered runners, so snowflakes never collide. A re-registration
        keeps its id. Registrations whose heartbeat is older than
        :data:`~covey.storage._model.MACHINE_ID_EXPIRY` (300 s) are deleted
        first, so their ids are free again.

        Raises:
            StorageError: every machine id is taken (``details["limit"]``).
        """
        ...

    async def heartbeat(self, address: RunnerAddress) -> bool:
        """Mark the runner alive now. ``False`` if it is not registered (any more)."""
        ...

    async def live_runners(self, max_age: float) -> list[RunnerInfo]:
        """Runners whose last heartbeat is at most ``max_age`` seconds old, by address."""
        ...

    async def unregister(self, address: RunnerAddress) -> None:
        """Remove the runner; its shards stay locked until released."""
        ...

    async def expire(self, address: RunnerAddress) -> None:
        """Remove a runner the caller found dead (heartbeat older than its TTL).

        Frees the shards it holds by lease (SQLite, memory) so they can be taken at
        once; advisory locks (PostgreSQL) are left to the dead session. Fencing
        makes this safe if the runner was only paused: its later completion writes
        are refused.
        """
        ...

    async def acquire(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> dict[ShardId, int]:
        """Try to take ``shards``; returns the ones this runner now holds, with epochs.

        A shard newly taken gets a new epoch (greater than every earlier one); a
        shard this runner already holds keeps its epoch. A shard held by another
        live owner is left out. Bounded by the lock timeout.
        """
        ...

    async def refresh(
        self, address: RunnerAddress, shards: Collection[ShardId]
    ) -> set[ShardId]:
        """Extend this runner's hold on ``shards``; returns those it still holds.

        A lost lock connection, a lease that expired or a timeout shows as shards
        missing from the result. Bounded by the lock timeout.
        """
        ...

    async def release(self, address: RunnerAddress, shards: Collection[ShardId]) -> None:
        """Give up ``shards`` so another runner can acquire them at once."""
        ...

    async def release_all(self, address: RunnerAddress) -> None:
        """Give up every shard this runner holds (and drop its lock connection)."""
        ...


@runtime_checkable
class MessageStorage(Protocol):
    """Persisted requests and their replies."""

    async def save_request(self, message: Message) -> SaveResult:
        """Store ``message`` unless its dedupe key exists (then :class:`Duplicate`).

        Saving a message whose ``id`` is stored already (a retried save) is also a
        :class:`Duplicate` of that id.
        """
        ...

    async def save_requests(self, messages: Sequence[Message]) -> list[SaveResult]:
        """Store many messages in one transaction; results in the same order."""
        ...

    def unit(self, fence: Fence, request_id: int) -> UnitOfWork:
        """A :class:`UnitOfWork` for one run of stored request ``request_id``,
        fenced by ``fence``; nothing is opened until it is used.

        Cheap enough for every run: one small object, no I/O. The arguments are
        checked here (``fence``, ``request_id``); whether the message exists, is
        in the fenced shard or has a reply is found out by :meth:`UnitOfWork.commit`.
        """
        ...

    async def save_reply(self, reply: Reply, fence: Fence) -> None:
        """Store the reply and mark the request processed, in one transaction.

        Checked in this order (the first that applies is raised; nothing
        is written):

        Raises:
            MessageNotFound: no request has ``reply.request_id``.
            FencedOut: the request lives in another shard than ``fence.shard``,
                or ``fence.epoch`` is not the shard's current epoch.
            AlreadyProcessed: the request has a reply already.
        """
        ...

    async def unprocessed(self, shards: Collection[ShardId], *, limit: int) -> list[Message]:
        """Lease up to ``limit`` due, unprocessed, unleased messages of ``shards``.

        Ordered by priority (highest first), then id. Each returned message is
        leased for the message lease, so a second read does not return it again
        until the lease ends or :meth:`reset_shards` clears it; its ``attempts``
        count is incremented.
        """
        ...

    async def unprocessed_of(self, address: EntityAddress, *, limit: int) -> list[Message]:
        """Up to ``limit`` unprocessed messages of one entity (its type and id), oldest
        (lowest id) first, leased or not, due or not.

        Only reads: no lease is taken and ``attempts`` is unchanged (the events
        runtime reads a key's backlog when it activates, to keep per-key order).
        """
        ...

    async def reschedule(
        self, request_id: int, *, deliver_at: float, error: str, fence: Fence
    ) -> int:
        """Put an unprocessed message back for a later attempt (a retry).

        Sets ``deliver_at``, clears the read lease, increments ``failures`` and
        records ``error`` as ``last_error``, in one write fenced like
        :meth:`save_reply`. Returns the new ``failures``.

        Raises:
            FencedOut, MessageNotFound, AlreadyProcessed: as :meth:`save_reply`.
        """
        ...

    async def mark_started(self, request_ids: Collection[int]) -> None:
        """Record that runs of these unprocessed messages began: ``starts + 1``.

        No lease is taken (a retry rescheduled meanwhile must stay due). Processed
        or unknown ids are ignored.
        """
        ...

    async def inspect(self, request_ids: Collection[int]) -> dict[int, MessageRecord]:
        """The stored records of those requests that exist."""
        ...

    async def list_messages(
        self,
        entity_type: str,
        *,
        state: Literal["unprocessed", "processed", "error"] | None = None,
        tag: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[MessageRecord]:
        """Records of one entity type, newest first (operators' listings).

        ``state``: ``unprocessed``; ``processed`` (any reply); ``error`` (an error
        reply). ``before_id`` pages: only ids lower than it.
        """
        ...

    async def count_messages(
        self, entity_type: str, *, with_processed: bool = True
    ) -> list[tuple[str, int, str, int]]:
        """How many messages of one entity type, grouped for metrics.

        Returns ``(tag, priority, state, count)`` rows where state is
        ``unprocessed``, ``processed`` or ``error``, ordered by tag, priority,
        state. ``with_processed=False`` leaves out ``processed`` (successful
        replies): the one count that reads every completed row of the type, so
        gauges sampled often skip it.
        """
        ...

    async def delete(self, request_ids: Collection[int]) -> int:
        """Delete these messages whatever their state; returns how many."""
        ...

    async def next_due(self, shards: Collection[ShardId]) -> float | None:
        """The earliest future ``deliver_at`` among unprocessed messages of ``shards``.

        A new owner uses it to set its delivery timer for delayed messages it has
        not seen pushed (``None``: nothing is waiting for a later time).
        """
        ...

    async def find(self, address: EntityAddress, tag: str, primary_key: str) -> int | None:
        """The id of the stored request with this address, tag and primary key (the
        one :meth:`save_request` deduplicates on), or ``None``."""
        ...

    async def get(self, request_id: int) -> Message | None:
        """The stored request, processed or not."""
        ...

    async def replies_for(self, request_ids: Collection[int]) -> dict[int, Reply]:
        """The replies of those requests that have one."""
        ...

    async def reset_shards(self, shards: Collection[ShardId]) -> None:
        """Clear the read leases of ``shards``' messages (a new owner takes over)."""
        ...

    async def reset_request(self, request_id: int) -> None:
        """Delete the request's reply and mark it unprocessed and unleased again.

        Its ``attempts``, ``starts``, ``failures`` and ``last_error`` are cleared
        too (a dead-letter retry starts afresh).

        Raises:
            MessageNotFound: no request has that id.
        """
        ...

    async def clear_address(self, address: EntityAddress) -> int:
        """Delete the unprocessed messages of one entity; returns how many."""
        ...

    async def purge(
        self, before: float, *, limit: int = 1000, keep_errors_of: Collection[str] = ()
    ) -> int:
        """Delete up to ``limit`` processed messages completed before ``before``.

        Returns how many were deleted; call again until it returns less than
        ``limit`` (each call is one short transaction, so a large backlog never
        holds locks for long). Unprocessed messages are never deleted, however old,
        leased or delayed. Error replies of the entity types in ``keep_errors_of``
        (dead-lettered jobs) are kept for an operator. A purged message's dedupe
        key is free again: the same primary key is stored as a new request.

        Raises:
            ClusterError: reason ``invalid_argument`` for a ``before`` that is not
                a finite time >= 0, a ``limit`` that is not an int >= 1, or a
                ``keep_errors_of`` that is not a collection of strings.
        """
        ...


@runtime_checkable
class StateStore(Protocol):
    """Small values by key with versioned compare-and-set."""

    async def get(self, key: str) -> Versioned | None:
        """The value and its version, or ``None``."""
        ...

    async def set(
        self, key: str, value: bytes, *, expected_version: int | None, fence: Fence | None = None,
        sync: bool = True,
    ) -> int:
        """Write ``value`` if the stored version is ``expected_version``.

        ``expected_version=None`` means the key must not exist yet. With a
        ``fence``, the write is also refused unless the fence is current.
        Returns the new version.

        ``sync=False`` (a fenced write only): the write may return before the
        database made it durable. It is visible at once and survives the writer's
        own crash; only a crash of the database server shortly after may lose it,
        and then also nothing committed after it (PostgreSQL commits it without
        waiting for its WAL flush; a later synchronous commit flushes it too).

        Raises:
            FencedOut: the fence is stale (checked first); nothing was written.
            VersionConflict: the stored version differs; nothing was written.
        """
        ...

    async def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Delete the key (if at ``expected_version`` when given); ``True`` if deleted."""
        ...


@runtime_checkable
class Storage(Protocol):
    """One backend: its stores plus their lifecycle.

    ``start()`` connects, applies pending migrations (safe when several processes
    start at once) and records or checks the shard count. Use as
    ``async with storage:``.
    """

    @property
    def backend(self) -> str:
        """``"memory"``, ``"sqlite"`` or ``"postgres"``."""
        ...

    @property
    def runners(self) -> RunnerStorage:
        """Runner membership and shard ownership."""
        ...

    @property
    def messages(self) -> MessageStorage:
        """Persisted requests and replies."""
        ...

    @property
    def state(self) -> StateStore:
        """Versioned values."""
        ...

    @property
    def events(self) -> EventStore:
        """The event log and its subscriber groups."""
        ...

    @property
    def streams(self) -> StreamStore:
        """Stream items, routes and mailboxes (``covey.realtime``)."""
        ...

    @property
    def inspection(self) -> InspectionStore:
        """Bounded reads for operators: shards, counts and pages by tag (the dashboard)."""
        ...

    async def start(self) -> None:
        """Connect and migrate. Raises ShardCountMismatch on a shard-count change."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def info(self) -> StorageInfo:
        """A summary for humans."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class TransactionalMessages(Protocol):
    """Optional: store requests inside the application's own database transaction.

    The messages exist only if that transaction commits; the owners are woken at
    commit (PostgreSQL ``NOTIFY``). Only the PostgreSQL backend offers this.
    """

    async def save_requests_in(
        self, connection: Any, messages: Sequence[Message]
    ) -> list[SaveResult]:
        """Store ``messages`` using ``connection`` (an asyncpg connection in a transaction)."""
        ...


@runtime_checkable
class WakeupSource(Protocol):
    """Optional: tells a runner when messages were stored by another process's commit.

    The source keeps its connection up by itself. Wake-ups sent while it was down
    are lost, so once it is back it calls ``callback(None)``: read every shard.
    """

    async def listen(self, callback: Callable[[ShardId | None], None]) -> None:
        """Call ``callback(shard)`` for each commit that stored messages for ``shard``,
        and ``callback(None)`` after a lost connection was reopened."""
        ...

    @property
    def wakeups_connected(self) -> bool:
        """Whether wake-ups arrive now (for health checks)."""
        ...
