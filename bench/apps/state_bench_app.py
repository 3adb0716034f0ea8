"""The entity application the ``entity-state`` benchmark runners serve.

``python -m covey run bench.apps.state_bench_app:cluster`` (cwd = repo root, the
repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. The scenario
creates ``bench_effects`` (``TABLE``) before it starts the runners.

``Wallet.add`` is the work measured: a persisted, keyed RPC that changes typed
durable state and inserts one row into the application's table through
``ctx.transaction``; covey commits both with the reply in one fenced
transaction.
"""

from __future__ import annotations

from pydantic import BaseModel

import covey

TABLE = """
CREATE TABLE bench_effects (entity text NOT NULL, key text NOT NULL, amount int NOT NULL)
"""


class Add(BaseModel):
    key: str
    amount: int = 1


class WalletState(BaseModel):
    balance: int = 0
    last_key: str = ""


class Wallet(covey.Entity, type="Wallet", state=WalletState):
    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.key)
    async def add(self, cmd: Add) -> int:
        self.state.balance += cmd.amount
        self.state.last_key = cmd.key
        tx = await self.ctx.transaction()
        await tx.execute("INSERT INTO bench_effects (entity, key, amount) VALUES ($1, $2, $3)",
                         self.ctx.entity_id, cmd.key, cmd.amount)
        return self.state.balance


def cluster() -> covey.Cluster:
    app = covey.Cluster.from_env()
    app.register(Wallet)
    return app
