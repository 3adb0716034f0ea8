"""The jobs application the jobs acceptance tests run in real runner processes.

``covey run tests.acceptance.jobs_app:cluster`` with ``COVEY_DATABASE_URL``
pointing at the test database. A client-only cluster in the test process calls
:func:`declare` too, so it holds the same job definitions and submits through them.

Every handler records what it did in the application's own tables:

- ``job_runs``: one row per run (key, runner, attempt);
- ``job_effects``: the effect, once per key (``ON CONFLICT DO NOTHING``);
- ``job_starts``: start order of ``serial`` and ``cancellable`` runs (bigserial id);
- ``job_cancelled``: a running handler that saw ``CancelledError``;
- ``job_flags``: switches the test flips (``release``, ``fail:<key>``).

The ``JobsBacklog`` entity answers, on the runner that hosts it, how many jobs
wait there for a slot (the ``covey_jobs_queued`` gauge), so a test can wait for
a backlog to form instead of sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from pydantic import BaseModel

import covey
from covey.core import metrics
from covey.jobs import JobDefinition

from ._app_pool import AppPool

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_effects (key text PRIMARY KEY, runner text NOT NULL);
CREATE TABLE IF NOT EXISTS job_runs (id bigserial PRIMARY KEY, key text NOT NULL,
                                     runner text NOT NULL, attempt int NOT NULL);
CREATE TABLE IF NOT EXISTS job_starts (id bigserial PRIMARY KEY, key text NOT NULL,
                                       runner text NOT NULL);
CREATE TABLE IF NOT EXISTS job_cancelled (key text PRIMARY KEY, runner text NOT NULL);
CREATE TABLE IF NOT EXISTS job_flags (name text PRIMARY KEY);
"""

async def create_schema(url: str) -> None:
    """Create the application's tables (the test does it before it starts runners)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


app_pool = AppPool(max_size=8)  # the test creates the tables before runners start


class Work(BaseModel):
    key: str


class Backlog(covey.Entity, type="JobsBacklog"):
    """Reports the jobs waiting for a slot on the runner that hosts this instance."""

    @covey.rpc
    async def waiting(self, name: str) -> dict[str, Any]:
        by_priority: dict[str, int] = {}
        for family in metrics.JOBS_QUEUED.collect():
            for sample in family.samples:
                if sample.labels.get("name") == name:
                    key = sample.labels["priority"]
                    by_priority[key] = by_priority.get(key, 0) + int(sample.value)
        return {"runner": str(covey.current_context().cluster.runner_id),
                "by_priority": by_priority}


def _runner(job: covey.JobContext) -> str:
    return str(job.context.cluster.runner_id)


async def _flag(name: str) -> bool:
    pool = await app_pool()
    return bool(await pool.fetchval("SELECT true FROM job_flags WHERE name = $1", name))


def declare(cluster: covey.Cluster) -> dict[str, JobDefinition[Any]]:
    """Declare the test jobs on ``cluster``; the definitions, bound to it."""

    @cluster.job("effect")
    async def effect(job: covey.JobContext, work: Work) -> str:
        pool = await app_pool()
        runner = _runner(job)
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO job_runs (key, runner, attempt) VALUES ($1, $2, $3)",
                               work.key, runner, job.attempt)
            await conn.execute(
                "INSERT INTO job_effects (key, runner) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                work.key, runner)
        return work.key

    @cluster.job("serial", concurrency=1)
    async def serial(job: covey.JobContext, work: Work) -> None:
        pool = await app_pool()
        await pool.execute("INSERT INTO job_starts (key, runner) VALUES ($1, $2)",
                           work.key, _runner(job))
        if work.key.startswith("block"):
            while not await _flag("release"):  # noqa: ASYNC110 - the flag is a row
                await asyncio.sleep(0.02)

    @cluster.job("cancellable")
    async def cancellable(job: covey.JobContext, work: Work) -> None:
        pool = await app_pool()
        await pool.execute("INSERT INTO job_starts (key, runner) VALUES ($1, $2)",
                           work.key, _runner(job))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.shield(pool.execute(
                "INSERT INTO job_cancelled (key, runner) VALUES ($1, $2)", work.key, _runner(job)))
            raise

    @cluster.job("flaky", retry=covey.Retry(max_attempts=3, backoff=covey.exponential(0.05, 0.2),
                                            jitter=False))
    async def flaky(job: covey.JobContext, work: Work) -> str:
        pool = await app_pool()
        await pool.execute("INSERT INTO job_runs (key, runner, attempt) VALUES ($1, $2, $3)",
                           work.key, _runner(job), job.attempt)
        if await _flag(f"fail:{work.key}"):
            raise ConnectionError(f"downstream down for {work.key} (attempt {job.attempt})")
        return f"done {work.key}"

    return {"effect": effect, "serial": serial, "cancellable": cancellable, "flaky": flaky}


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()
    cluster.register(Backlog)
    declare(cluster)
    return cluster


cluster = make_cluster
