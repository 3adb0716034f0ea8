"""The bank the demo's runner processes host: one ``Account`` entity per account id.

Each runner runs ``python -m covey run bank:cluster`` (with ``examples/`` on the
path and ``COVEY_*`` plus ``BANK_RUNS`` in the environment; ``demo.py`` sets
them up).

covey runs a persisted request *at least once*: a runner killed after the
handler ran but before its reply committed makes the new owner run it again.
The account needs no coordination code for that:

* its balance is **durable state** (``state=AccountState``): covey loads it when
  the account starts, wherever that is, and stores the change with the reply;
* the deposit is recorded in the bank's own ``deposits`` table through
  ``self.ctx.transaction()``: on SQLite the statement is staged and runs inside
  covey's commit transaction, in the same file. State, row and reply commit
  together exactly once, or not at all, so a re-run adds nothing twice.

The ``deposits`` table has **no unique constraint**: a deposit applied twice
would show as two rows. Every run of the handler is also logged, outside the
transaction, in a file of its own (``BANK_RUNS``), so the demo can show the
handler ran more often than effects were applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3

import aiosqlite
from pydantic import BaseModel

import covey

#: The bank's own table, in covey's SQLite file. No unique constraint on purpose.
DEPOSITS = """
CREATE TABLE IF NOT EXISTS deposits (
    txn_id  TEXT NOT NULL,
    account TEXT NOT NULL,
    amount  INTEGER NOT NULL,
    runner  TEXT NOT NULL
)"""
RUNS = "CREATE TABLE IF NOT EXISTS runs (txn_id TEXT NOT NULL, runner TEXT NOT NULL)"


def create_tables(store: str, runs: str) -> None:
    """Create ``deposits`` in covey's store file and the run log, before the runners start."""
    for path, schema in ((store, DEPOSITS), (runs, RUNS)):
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(schema)


class RunLog:
    """Every run of a deposit handler, one autocommit SQLite connection per runner.

    This is instrumentation, not bank logic: it is written *outside* covey's
    transaction, so a run whose commit never happened (its runner died) is
    counted too.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def record(self, txn_id: str, runner: str) -> None:
        async with self._lock:
            if self._conn is None:
                self._conn = await aiosqlite.connect(self.path, isolation_level=None)
                await self._conn.execute("PRAGMA busy_timeout = 10000")
        async with self._conn.execute("INSERT INTO runs VALUES (?, ?)", (txn_id, runner)):
            pass

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()  # its thread would keep the process alive
                self._conn = None


run_log = RunLog(os.environ.get("BANK_RUNS", "bank-runs.db"))


class Deposit(BaseModel):
    txn_id: str
    amount: int


class AccountState(BaseModel):
    balance: int = 0


class Account(covey.Entity, type="Account", state=AccountState, max_idle=300):
    @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
    async def deposit(self, cmd: Deposit) -> int:
        runner = str(self.ctx.runner)
        await run_log.record(cmd.txn_id, runner)
        self.state.balance += cmd.amount
        tx = await self.ctx.transaction()  # staged; runs in covey's commit transaction
        await tx.execute(
            "INSERT INTO deposits (txn_id, account, amount, runner) VALUES (?, ?, ?, ?)",
            cmd.txn_id, self.ctx.entity_id, cmd.amount, runner,
        )
        return self.state.balance

    @covey.rpc
    async def balance(self) -> int:
        return self.state.balance

    @covey.rpc
    async def where(self) -> str:
        """The runner hosting this account right now."""
        return str(self.ctx.runner)


class BankCluster(covey.Cluster):
    """A cluster that also closes the run log when the runner leaves."""

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await run_log.close()


def cluster() -> covey.Cluster:
    """What ``covey run bank:cluster`` serves."""
    app = BankCluster.from_env()
    app.register(Account)
    return app
