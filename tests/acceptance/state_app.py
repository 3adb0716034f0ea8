"""The application of the durable-state acceptance tests (``test_entity_state.py``).

``covey run tests.acceptance.state_app:cluster`` with ``COVEY_DATABASE_URL``
pointing at the test database, whose tables the test creates first (``SCHEMA``).

``Account.deposit`` keeps the balance as durable state and inserts one row per
deposit into ``deposits`` through ``ctx.transaction``. Neither table has a
unique constraint, so a deposit applied twice shows as two rows. Every run of
the handler is counted in ``deposit_runs`` on a connection of its own, outside
covey's transaction, so runs that never committed are counted too.
"""

from __future__ import annotations

from pydantic import BaseModel

import covey

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE deposits (deposit_id text NOT NULL, account text NOT NULL,
                       amount int NOT NULL, runner text NOT NULL);
CREATE TABLE deposit_runs (deposit_id text NOT NULL, runner text NOT NULL);
"""

runs_pool = AppPool(max_size=2)  # autocommit: outside covey's transaction


class Deposit(BaseModel):
    deposit_id: str
    amount: int


class AccountState(BaseModel):
    balance: int = 0


class Account(covey.Entity, type="StateAccount", state=AccountState):
    @covey.rpc(persisted=True, primary_key=lambda d: d.deposit_id)
    async def deposit(self, cmd: Deposit) -> int:
        runner = str(self.ctx.runner)
        await (await runs_pool()).execute(
            "INSERT INTO deposit_runs (deposit_id, runner) VALUES ($1, $2)", cmd.deposit_id, runner)
        self.state.balance += cmd.amount
        tx = await self.ctx.transaction()  # staged: runs in covey's commit transaction
        await tx.execute(
            "INSERT INTO deposits (deposit_id, account, amount, runner) VALUES ($1, $2, $3, $4)",
            cmd.deposit_id, self.ctx.entity_id, cmd.amount, runner,
        )
        return self.state.balance


def cluster() -> covey.Cluster:
    app = covey.Cluster.from_env()
    app.register(Account)
    return app
