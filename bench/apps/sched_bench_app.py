"""The singleton and cron application of the ``singleton-failover`` and
``cron-accuracy`` benchmarks (runs in runner processes).

``python -m covey run bench.apps.sched_bench_app:cluster`` (cwd = repo root, the
repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. The scenario
creates the tables (``SCHEMA``) before it starts the runners.

* ``leader`` (singleton, 50 ms beat): one ``singleton_lives`` row per life, with
  ``started`` = ``time.time()`` on entry (before anything else, so the pool's
  first connect is not counted) and ``last_seen`` updated every ~50 ms.
* ``every-second`` (cron ``* * * * * *``): one ``cron_runs`` row per scheduled
  instant with ``started`` = ``time.time()`` on entry and covey's own
  ``tick.lateness``; a second run of the same instant increments ``dupes``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time

import asyncpg
from pydantic import BaseModel

import covey

SCHEMA = """
CREATE TABLE IF NOT EXISTS cron_runs (
    instant double precision PRIMARY KEY, runner text NOT NULL,
    started double precision NOT NULL, lateness double precision NOT NULL,
    dupes integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS singleton_lives (
    id bigserial PRIMARY KEY, runner text NOT NULL, started double precision NOT NULL,
    last_seen double precision NOT NULL, start_count integer NOT NULL);
"""
BEAT = 0.05

_pool: asyncpg.Pool | None = None
_lock = asyncio.Lock()


async def pool() -> asyncpg.Pool:
    global _pool
    async with _lock:
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["COVEY_DATABASE_URL"],
                                              min_size=1, max_size=3)
        return _pool


class Counter(BaseModel):
    count: int = 0


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()

    @cluster.cron("* * * * * *", name="every-second",
                  skip_if_older_than=dt.timedelta(seconds=300))
    async def every_second(tick: covey.CronTick) -> None:
        started = time.time()
        runner = str(covey.current_context().cluster.runner_id)
        async with (await pool()).acquire() as conn:
            await conn.execute(
                "INSERT INTO cron_runs (instant, runner, started, lateness)"
                " VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (instant) DO UPDATE SET dupes = cron_runs.dupes + 1",
                tick.scheduled.timestamp(), runner, started, tick.lateness)

    @cluster.singleton("leader", state=Counter, expected_interval=1.0)
    async def leader(ctx: covey.SingletonContext[Counter]) -> None:
        started = time.time()
        runner = str(covey.current_context().cluster.runner_id)
        async with (await pool()).acquire() as conn:
            life = await conn.fetchval(
                "INSERT INTO singleton_lives (runner, started, last_seen, start_count)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                runner, started, time.time(), ctx.state.count)
            while True:
                ctx.state.count += 1
                await ctx.save_state()
                ctx.beat()
                await conn.execute("UPDATE singleton_lives SET last_seen = $2 WHERE id = $1",
                                   life, time.time())
                await asyncio.sleep(BEAT)

    return cluster


cluster = make_cluster
