"""The unit of work on PostgreSQL: the application's writes and covey's in one transaction.

:meth:`~PostgresUnitOfWork.transaction` takes a pooled connection and begins
the transaction the application writes in; :meth:`~PostgresUnitOfWork.commit`
finishes it on the same connection (or on a fresh one if the application never
asked for it):

1. the fenced completion of the reply — :attr:`Statements.FENCED_COMPLETE`,
   the statement group commit uses, refused by the same rule
   (:func:`~covey.storage._errors.completion_refused`: the message exists,
   lives in the fenced shard, the epoch is current, it has no reply yet). Its
   ``FOR SHARE`` lock on the shard row is held until ``COMMIT``, so a new
   owner's epoch bump waits for this transaction: it commits under the epoch it
   checked, or is refused;
2. the state compare-and-sets;
3. the outgoing messages (the dedupe rules of ``save_requests``) and a
   ``pg_notify`` per shard of theirs, delivered at commit;
4. ``COMMIT``.

Any refusal rolls the whole transaction back, the application's writes with
it. The connection goes back to the pool in every path; one that cannot be
rolled back is closed instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import asyncpg

from covey.core import Clock
from covey.storage._errors import app_write_failed
from covey.storage._message import Message
from covey.storage._model import Fence, Reply
from covey.storage._unit import CheckedUnitOfWork, PlainCompletion, StateWrite
from covey.storage.postgres._errors import translated
from covey.storage.postgres._queries import Statements
from covey.storage.postgres._writer import CompleteOp, SaveOp, StateOp, Writer, write_state


@dataclass(frozen=True, slots=True)
class UnitHost:
    """What every unit of one storage shares (one per storage, not per unit).

    Attributes:
        pool: the storage's asyncpg pool.
        sql: its statements.
        writer: the group-commit flush (its fenced completion and save run in
            the unit's transaction too).
        channel: the NOTIFY channel that wakes the owners of outgoing messages.
        clock: the source of the completion time.
        acquire_timeout: the bound on waiting for a pooled connection.
    """

    pool: Any
    sql: Statements
    writer: Writer
    channel: str
    clock: Clock
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

    __slots__ = ("_conn", "_host", "_tx")

    def __init__(self, host: UnitHost, fence: Fence, request_id: int,
                 plain: PlainCompletion) -> None:
        super().__init__(fence, request_id, plain)
        self._host = host
        self._conn: Any = None
        self._tx: Any = None

    def _lost(self) -> bool:
        if self._conn is None:
            return False
        try:
            # asyncpg marks a connection closed once the server or network dropped it
            return bool(self._conn.is_closed())
        except asyncpg.InterfaceError:
            return True  # and may already have handed the dropped one back to its pool

    async def _transaction(self) -> Any:
        if self._conn is None:
            conn, tx = await self._begin()
            if self._conn is not None:  # a concurrent first call won
                await _release(self._host.pool, conn, tx)
            else:
                self._conn, self._tx = conn, tx
        return self._conn

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

    async def _commit(self, reply: Reply, states: list[StateWrite],
                      sent: list[Message]) -> None:
        try:
            if self._conn is None:
                self._conn, self._tx = await self._begin()
            with translated("committing a unit of work"):
                try:
                    await self._write(self._conn, reply, states, sent)
                except asyncpg.InFailedSQLTransactionError as exc:
                    raise app_write_failed(None, "a statement of the application failed "
                                           "earlier; the transaction is aborted") from exc
                tx, self._tx = self._tx, None
                await tx.commit()
        finally:
            await self._discard()

    async def _write(self, conn: Any, reply: Reply, states: list[StateWrite],
                     sent: list[Message]) -> None:
        if not conn.is_in_transaction():
            # COMMIT or ROLLBACK sent on ctx.transaction: covey's writes would
            # run outside any transaction, so none of them may run.
            raise app_write_failed(None, "the application ended covey's transaction")
        host = self._host
        out: list[object] = [None]
        await host.writer.complete(
            conn, [(0, CompleteOp(reply.request_id, self.fence, reply=reply))], out)
        _raise(out[0])
        for write in states:
            _raise(await write_state(conn, host.sql, StateOp(
                write.key, write.value, write.expected_version, self.fence)))
        if sent:
            await host.writer.save(conn, [(0, SaveOp(sent))], out)
            _raise(out[0])
            shards = sorted({str(m.address.shard) for m in sent})
            await conn.execute(host.sql.NOTIFY, host.channel, shards)

    async def _discard(self) -> None:
        conn, tx = self._conn, self._tx
        self._conn = self._tx = None
        if conn is not None:
            await _release(self._host.pool, conn, tx)
