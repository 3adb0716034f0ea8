"""Quickstart: one bank-account entity, called through a single embedded runner.

Runs on the embedded SQLite default (``covey.db`` in the current folder, or
``COVEY_DATABASE_URL``). Start more copies of a runner with ``covey run`` on a
shared PostgreSQL database and the same code spreads accounts across them.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import covey


class Deposit(BaseModel):
    txn_id: str
    amount: int


class Account(covey.Entity, type="Account"):
    """One live instance per account id, cluster-wide."""

    balance: int = 0

    @covey.rpc(persisted=True, primary_key=lambda d: d.txn_id)
    async def deposit(self, cmd: Deposit) -> int:
        """Durable and deduplicated: a retried txn_id returns the first reply."""
        self.balance += cmd.amount
        return self.balance

    @covey.rpc
    async def balance_of(self) -> int:
        """Volatile: fast, not stored."""
        return self.balance


async def main() -> None:
    cluster = covey.Cluster.from_env()
    cluster.register(Account)
    async with cluster:
        account = cluster.client(Account, "acct-1")
        print("after t1:", await account.deposit(Deposit(txn_id="t1", amount=5)))
        print("after t2:", await account.deposit(Deposit(txn_id="t2", amount=7)))
        print("t1 again:", await account.deposit(Deposit(txn_id="t1", amount=5)), "(deduplicated)")
        print("balance :", await account.balance_of())
        try:
            await account.deposit({"txn_id": "t3", "amount": "lots"})
        except covey.SerializationError as exc:
            print("bad input:", exc.reason.value, exc.details["fields"])


if __name__ == "__main__":
    asyncio.run(main())
