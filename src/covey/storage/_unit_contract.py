"""The :class:`UnitOfWork` contract: one run's effects, committed with its reply.

:meth:`covey.storage.MessageStorage.unit` makes one; every backend implements it
through :class:`covey.storage._unit.CheckedUnitOfWork`. (The stores' contracts
are in :mod:`covey.storage._contracts`; their error vocabulary applies here too.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from covey.storage._events_contract import EventRecord
from covey.storage._message import Message
from covey.storage._model import Reply
from covey.storage._streams_contract import StreamEntry


@runtime_checkable
class UnitOfWork(Protocol):
    """The effects of one run of a persisted message, committed with its reply.

    The owner of the message's shard opens one per run
    (:meth:`MessageStorage.unit`); opening touches nothing. The handler's layer
    stages effects on it; the owner then either commits it with the reply or
    discards it. :meth:`commit` is **one transaction fenced by the shard's
    epoch**: the state writes, the application's writes made through
    :meth:`transaction`, the outgoing messages, the published events, the stream
    items, the reply and the processed flag are all kept, or none of them. A
    handler that runs twice (its runner died before the commit) therefore has its
    effects applied once.

    A unit nobody used (:attr:`used` is false) is completed the plain way
    (``save_reply``, group-committed); using one costs a transaction of its own.
    """

    @property
    def used(self) -> bool:
        """Whether anything was staged or the transaction opened."""
        ...

    @property
    def sent(self) -> list[Message]:
        """The outgoing messages staged with :meth:`send` (to wake their owners after commit)."""
        ...

    @property
    def lost(self) -> bool:
        """Whether the store lost the unit's open transaction (its connection
        closed): nothing of it can commit, and an error the handler met through
        :meth:`transaction` is the store's failure, not the application's."""
        ...

    async def transaction(self) -> Any:
        """The application's handle inside the unit's transaction, opened on first use.

        PostgreSQL: an asyncpg connection inside covey's transaction (its writes
        commit with the reply, or not at all; a pooled connection held until
        the unit commits or is discarded; never ``COMMIT`` or ``ROLLBACK`` on
        it). SQLite: a :class:`~covey.storage.sqlite.SqliteTransaction` whose
        ``execute`` / ``executemany`` statements are staged and run inside the
        commit transaction (its ``fetch`` reads see committed data only).
        Memory: a :class:`~covey.storage.memory.MemoryTransaction` whose
        ``on_commit`` callables run at commit, atomically with the rest. Once
        the unit is committed or discarded, the handle takes no more writes.
        """
        ...

    def put_state(self, key: str, value: bytes, *, expected_version: int | None) -> None:
        """Stage a state-store write (compare-and-set on ``expected_version``; ``None``:
        the key must not exist), fenced like the reply."""
        ...

    def send(self, messages: Sequence[Message]) -> None:
        """Stage outgoing persisted messages: stored at commit (deduplicated as by
        ``save_requests``), never if the unit is discarded."""
        ...

    def publish(self, events: Sequence[EventRecord]) -> None:
        """Stage events for the event log: stored at commit, in the same fenced
        transaction (an id stored already is kept as it was), never if the unit is
        discarded. Their deliveries are staged with :meth:`send`. Makes the unit
        :attr:`used`."""
        ...

    def append_stream(self, entries: Sequence[StreamEntry]) -> None:
        """Stage stream items: appended at commit, in the same fenced transaction,
        exactly as ``storage.streams.append(entries, now=<commit time>)`` would
        (positions in commit order per stream; an id the stream holds already
        stores nothing; heads created with a new epoch or moved, locked in key
        order on PostgreSQL), never if the unit is discarded or its commit
        refused. Staged in order: the entries of several calls are appended as
        one batch. Makes the unit :attr:`used`. Nothing is pushed to subscribers:
        the caller does that in :meth:`on_commit`.

        Raises:
            ClusterError: ``invalid_argument`` (``details["field"]`` names it, as
                for ``StreamStore.append``) for a malformed entry; nothing of the
                batch is staged.
        """
        ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the unit committed."""
        ...

    def on_discard(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the unit was discarded or its commit failed."""
        ...

    async def commit(self, reply: Reply) -> None:
        """Write everything staged plus ``reply`` (processed) in one fenced transaction.

        Checked in this order, inside the transaction (the first that applies
        is raised; nothing at all is written, the application's writes
        included): the fenced-completion rule of :meth:`MessageStorage.save_reply`
        (not found, another shard, a stale epoch, already processed), the state
        versions, the application's writes; the outgoing messages are then
        stored (a duplicate is no error), the events and stream items appended
        and the reply written. A unit that was
        never used commits as a plain ``save_reply``.

        Raises:
            MessageNotFound: no request has the unit's ``request_id``.
            FencedOut: the message lives in another shard, or the fence is stale.
            AlreadyProcessed: the message has a reply already.
            VersionConflict: a staged state write found another version.
            EntityError: reason ``handler_failed`` (``details["sql"]``: the
                application's statement, ``None`` when unknown; ``["error"]``):
                a write of the application failed — SQLite: a staged statement
                SQLite refused (bad SQL, a constraint, a statement controlling the
                transaction or writing covey's tables); PostgreSQL: the
                application's transaction was aborted by a failed statement, or
                it was ended (``COMMIT``/``ROLLBACK`` on the handle); memory: an
                ``on_commit`` callable raised. This is the handler's error: store
                it as the run's error reply.
            ClusterError: ``invalid_argument`` for a malformed ``reply``, one of
                another message, or a unit committed or discarded already.
            StorageError: the store failed; nothing was written (or, for a lost
                connection during COMMIT, the outcome is unknown: the message
                stays unprocessed unless it committed, and a re-run finds it).
        """
        ...

    async def discard(self) -> None:
        """Roll back and drop everything staged; safe to call twice and after commit."""
        ...
