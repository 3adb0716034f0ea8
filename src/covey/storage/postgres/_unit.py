"""The unit of work on PostgreSQL: the application's writes and covey's in one transaction.

The application's handle (:class:`~covey.storage.postgres._transaction.PostgresTransaction`)
stages its writes; a unit that never turned it live holds no connection and
commits through group commit (:class:`~covey.storage.postgres._writer.UnitOp`):
the units that finish together share one transaction, which runs

1. the fenced completion of every reply — :attr:`Statements.FENCED_COMPLETE`,
   refused by the same rule as group commit's
   (:func:`~covey.storage._errors.completion_refused`: the message exists,
   lives in the fenced shard, the epoch is current, it has no reply yet). Its
   ``FOR SHARE`` lock on the shard rows is held until ``COMMIT``, so a new
   owner's epoch bump waits for this transaction: it commits under the epoch it
   checked, or is refused. A refused unit writes nothing of the rest;
2. the staged statements of the units that passed (the k-th statements of
   every unit together, one pipelined ``executemany`` per distinct SQL);
3. the state compare-and-sets, in one statement;
4. the outgoing messages (the dedupe rules of ``save_requests``) and a
   ``pg_notify`` per shard of theirs, delivered at commit, then the published
   events (a stored id is kept; positions are given later by the sequencer);
5. the stream items of every unit, in one append (the rules of
   ``StreamStore.append``: heads locked in key order, in a savepoint), last
   because a head stays locked until ``COMMIT`` and its other appenders wait;
6. ``COMMIT``.

If anything of one unit fails after others wrote (a statement, a state
conflict, a deadlock), that transaction is rolled back and each unit commits in
one of its own, so only the unit at fault fails. A unit whose handle went live
(a read, or ``tx.connection()``) commits the same steps on its own connection.
The connection goes back to the pool in every path; one that cannot be rolled
back is closed instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from covey.storage._errors import app_write_failed
from covey.storage._events_contract import EventRecord
from covey.storage._group_commit import GroupCommit
from covey.storage._message import Message
from covey.storage._model import Fence, Reply
from covey.storage._streams_contract import StreamEntry
from covey.storage._unit import CheckedUnitOfWork, PlainCompletion, StateWrite
from covey.storage.postgres._errors import translated
from covey.storage.postgres._transaction import PostgresTransaction, StatementFailed, run_staged
from covey.storage.postgres._writer import Op, UnitOp, Writer


@dataclass(frozen=True, slots=True)
class UnitHost:
    """What every unit of one storage shares (one per storage, not per unit).

    Attributes:
        pool: the storage's asyncpg pool.
        sql: its statements.
        writer: the group-commit flush (a live unit writes with it on its own
            connection).
        batcher: the group commit units without a connection commit through.
        acquire_timeout: the bound on waiting for a pooled connection.
    """

    pool: Any
    writer: Writer
    batcher: GroupCommit[Op, object]
    acquire_timeout: float


def _raise(outcome: object) -> None:
    if isinstance(outcome, BaseException):
        raise outcome


async def _release(pool: Any, conn: Any, tx: Any) -> None:
    """Roll ``tx`` back (if open) and give ``conn`` back; never raises an ``Exception``."""
    try:
        if tx is not None:
            await tx.rollback()
    except BaseException as exc:
        # Its state is unknown: never hand it out again. (A connection the server
        # closed is already back in the pool: asyncpg released it.)
        with contextlib.suppress(Exception):
            conn.terminate()
        if not isinstance(exc, Exception):
            raise  # cancelled: the connection is still released below
    finally:
        with contextlib.suppress(Exception):
            await pool.release(conn)


class PostgresUnitOfWork(CheckedUnitOfWork):
    """A unit on PostgreSQL (see the module docstring for its transaction)."""

    __slots__ = ("_conn", "_handle", "_host", "_tx", "connection")

    def __init__(self, host: UnitHost, fence: Fence, request_id: int,
                 plain: PlainCompletion) -> None:
        super().__init__(fence, request_id, plain)
        self._host = host
        self._handle: PostgresTransaction | None = None
        self._tx: Any = None
        #: the live connection, once the handle went live
        self.connection: Any = None

    def _lost(self) -> bool:
        if self.connection is None:
            return False
        try:
            # asyncpg marks a connection closed once the server or network dropped it
            return bool(self.connection.is_closed())
        except asyncpg.InterfaceError:
            return True  # and may already have handed the dropped one back to its pool

    async def _transaction(self) -> Any:
        if self._handle is None:
            self._handle = PostgresTransaction(self)
        return self._handle

    async def go_live(self) -> Any:
        """Take a connection, begin the transaction, run what was staged (once)."""
        if self.connection is None:
            conn, tx = await self._begin()
            if self.connection is not None:  # a concurrent first call won
                await _release(self._host.pool, conn, tx)
                return self.connection
            self.connection, self._tx = conn, tx
            staged = self._handle.staged if self._handle is not None else []
            try:
                await run_staged(conn, staged)
            except StatementFailed as exc:
                raise app_write_failed(exc.sql, exc.error) from exc.error
            finally:
                staged.clear()  # ran, or the transaction is failed: never again
        return self.connection

    async def _begin(self) -> tuple[Any, Any]:
        pool = self._host.pool
        with translated("opening a unit of work"):
            conn = await pool.acquire(timeout=self._host.acquire_timeout)
            try:
                tx = conn.transaction()
                await tx.start()
            except BaseException:
                await _release(pool, conn, None)
                raise
        return conn, tx

    async def _commit(self, reply: Reply, states: list[StateWrite], sent: list[Message],
                      events: list[EventRecord], streams: list[StreamEntry]) -> None:
        handle = self._handle
        staged = list(handle.staged) if handle is not None else []
        if handle is not None:
            handle.close()
        op = UnitOp(reply, self.fence, states, sent, staged, events, streams)
        try:
            if self.connection is None:
                _raise(await self._host.batcher.submit(op))
                return
            with translated("committing a unit of work"):
                try:
                    outcome = await self._host.writer.write_unit(
                        self.connection, op, staged_ran=True)
                except asyncpg.InFailedSQLTransactionError as exc:
                    raise app_write_failed(None, "a statement of the application failed "
                                           "earlier; the transaction is aborted") from exc
                _raise(outcome)
                tx, self._tx = self._tx, None
                await tx.commit()
        finally:
            await self._discard()

    async def _discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        conn, tx = self.connection, self._tx
        self.connection = self._tx = None
        if conn is not None:
            await _release(self._host.pool, conn, tx)
