"""The application the acceptance tests run in real runner processes.

``covey run tests.acceptance.app:cluster`` with ``COVEY_DATABASE_URL`` pointing at
the test database. ``Ledger.apply`` records its effect in the application's own
table under a unique constraint (so a re-run cannot apply it twice) and counts
every run, so tests can tell effects from re-deliveries.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import covey

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS app_effects (key text PRIMARY KEY, runner text NOT NULL);
CREATE TABLE IF NOT EXISTS app_runs (id bigserial PRIMARY KEY, key text NOT NULL,
                                     runner text NOT NULL);
"""


app_pool = AppPool(max_size=4, schema=SCHEMA, lock_key=42)


class Apply(BaseModel):
    key: str
    amount: int = 1


class Ledger(covey.Entity, type="Ledger"):
    total: int = 0

    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.key)
    async def apply(self, cmd: Apply) -> int:
        pool = await app_pool()
        runner = str(self.ctx.runner)
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO app_runs (key, runner) VALUES ($1, $2)",
                               cmd.key, runner)
            await conn.execute(
                "INSERT INTO app_effects (key, runner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                cmd.key, runner,
            )
        self.total += cmd.amount
        return self.total

    @covey.rpc
    async def where(self) -> str:
        return str(self.ctx.runner)

    @covey.rpc
    async def forward(self, target: str) -> list[str]:
        """Call another entity from inside this runner: [this runner, its runner]."""
        assert _cluster is not None
        other = await _cluster.client(Ledger, target).where()
        return [str(self.ctx.runner), other]

    @covey.rpc
    async def echo(self, text: str) -> str:
        return text

    @covey.rpc
    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return str(self.ctx.runner)


_cluster: covey.Cluster | None = None


def make_cluster() -> covey.Cluster:
    global _cluster
    _cluster = covey.Cluster.from_env()
    _cluster.register(Ledger)
    return _cluster


cluster = make_cluster
