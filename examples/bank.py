"""The bank the demo's runner processes host: one ``Account`` entity per account id.

Each runner runs ``python -m covey run bank:cluster`` (with ``examples/`` on the
path and ``COVEY_*`` plus ``BANK_LEDGER`` in the environment; ``demo.py`` sets
them up).

covey runs a persisted request *at least once* (a runner killed after the
handler's effect but before its reply commits makes the new owner run it again)
and answers a repeated ``primary_key`` with the first reply. So the handler makes
its own effect idempotent: it records the deposit in the bank's ledger, a small
SQLite table of its own keyed by transaction id (``INSERT OR IGNORE``), and adds
to the in-memory balance only when that row is new. The in-memory balance dies
with its runner; ``on_start`` rebuilds it from the ledger wherever the account
comes back to life.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3

import aiosqlite
from pydantic import BaseModel

import covey

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    txn_id  TEXT PRIMARY KEY,   -- the effect: at most one row per transaction
    account TEXT NOT NULL,
    amount  INTEGER NOT NULL,
    runner  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (  -- every handler execution, for the demo's report
    txn_id TEXT NOT NULL,
    runner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_account ON ledger (account);
"""


class Ledger:
    """The bank's durable record, one SQLite connection per runner process.

    The connection is in autocommit mode, so each statement is its own
    transaction; ``INSERT OR IGNORE`` on the primary key is what makes a second
    run of the same deposit a no-op.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> aiosqlite.Connection:
        async with self._lock:
            if self._conn is None:
                conn = await aiosqlite.connect(self.path, isolation_level=None)
                await conn.executescript("PRAGMA busy_timeout = 10000;" + SCHEMA)
                self._conn = conn
            return self._conn

    async def apply(self, txn_id: str, account: str, amount: int, runner: str) -> bool:
        """Record one run of a deposit; ``True`` if this run applied it (first time)."""
        conn = await self.connection()
        async with conn.execute("INSERT INTO runs (txn_id, runner) VALUES (?, ?)",
                                (txn_id, runner)):
            pass
        async with conn.execute(
            "INSERT OR IGNORE INTO ledger (txn_id, account, amount, runner) VALUES (?, ?, ?, ?)",
            (txn_id, account, amount, runner),
        ) as cursor:
            return cursor.rowcount == 1

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()  # its thread would keep the process alive
                self._conn = None

    async def balance(self, account: str) -> int:
        conn = await self.connection()
        # One job on the connection's thread: execute and read to the end. A SELECT
        # left open holds a read snapshot, and a write from another coroutine on
        # this connection would then fail at once with "database is locked".
        rows = await conn.execute_fetchall(
            "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE account = ?", (account,)
        )
        row = next(iter(rows), None)
        return int(row[0]) if row else 0


def create_ledger(path: str) -> None:
    """Create the ledger file in WAL mode (once, before the runners open it)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.executescript(SCHEMA)


ledger = Ledger(os.environ.get("BANK_LEDGER", "bank-ledger.db"))


class Deposit(BaseModel):
    txn_id: str
    amount: int


class Account(covey.Entity, type="Account", max_idle=300):
    funds: int = 0  # in-memory: lost with the runner, rebuilt from the ledger

    async def on_start(self) -> None:
        self.funds = await ledger.balance(self.ctx.entity_id)

    @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
    async def deposit(self, cmd: Deposit) -> int:
        runner = str(self.ctx.runner)
        if await ledger.apply(cmd.txn_id, self.ctx.entity_id, cmd.amount, runner):
            self.funds += cmd.amount
        return self.funds

    @covey.rpc
    async def balance(self) -> int:
        return self.funds

    @covey.rpc
    async def where(self) -> str:
        """The runner hosting this account right now."""
        return str(self.ctx.runner)


class BankCluster(covey.Cluster):
    """A cluster that also closes the bank's ledger when the runner leaves."""

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await ledger.close()


def cluster() -> covey.Cluster:
    """What ``covey run bank:cluster`` serves."""
    app = BankCluster.from_env()
    app.register(Account)
    return app
