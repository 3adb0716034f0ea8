"""Singleton and cron application for the acceptance tests (runs in runner processes).

Every cron run and singleton life is recorded in the application's own tables so
the test can check exactly-once and no-overlap from outside.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

from pydantic import BaseModel

import covey

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS cron_runs (
    instant double precision PRIMARY KEY, runner text NOT NULL,
    started double precision NOT NULL, dupes integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS singleton_lives (
    id bigserial PRIMARY KEY, runner text NOT NULL, started double precision NOT NULL,
    last_seen double precision NOT NULL, start_count integer NOT NULL);
"""

pool = AppPool(max_size=3, schema=SCHEMA, lock_key=43)


class Counter(BaseModel):
    count: int = 0


class Probe(covey.Entity, type="Probe"):
    @covey.rpc
    async def seen(self) -> dict[str, str | None]:
        ctx = covey.current_context()
        return {"tenant": ctx.tenant_id, "request": ctx.request_id,
                "runner": ctx.cluster.runner_id}


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()
    cluster.register(Probe)
    skip = float(os.environ.get("APP_CRON_SKIP", "300"))

    @cluster.cron("* * * * * *", name="every-second",
                  skip_if_older_than=dt.timedelta(seconds=skip))
    async def every_second(tick: covey.CronTick) -> None:
        runner = str(covey.current_context().cluster.runner_id)
        async with (await pool()).acquire() as conn:
            await conn.execute(
                "INSERT INTO cron_runs (instant, runner, started) VALUES ($1, $2, $3) "
                "ON CONFLICT (instant) DO UPDATE SET dupes = cron_runs.dupes + 1",
                tick.scheduled.timestamp(), runner,
                tick.scheduled.timestamp() + tick.lateness)

    @cluster.singleton("leader", state=Counter, expected_interval=1.0)
    async def leader(ctx: covey.SingletonContext[Counter]) -> None:
        runner = str(covey.current_context().cluster.runner_id)
        async with (await pool()).acquire() as conn:
            life = await conn.fetchval(
                "INSERT INTO singleton_lives (runner, started, last_seen, start_count) "
                "VALUES ($1, $2, $2, $3) RETURNING id", runner, time.time(), ctx.state.count)
            while True:
                ctx.state.count += 1
                await ctx.save_state()
                ctx.beat()
                await conn.execute("UPDATE singleton_lives SET last_seen = $2 WHERE id = $1",
                                   life, time.time())
                await asyncio.sleep(0.05)

    return cluster


cluster = make_cluster
