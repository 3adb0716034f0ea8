"""Jobs through three real runner processes on PostgreSQL.

The runners serve ``tests.acceptance.jobs_app:cluster``; the test process is a
client-only cluster that declares the same jobs (``jobs_app.declare``) and
submits through those definitions. Handlers record their effects and runs in
the application's tables, which the tests read back.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

import covey
from covey.core import JobError, Reason
from covey.jobs import JobDefinition

from . import jobs_app
from ._harness import RunnerProcess, start_runner, wait_until
from .conftest import client_config
from .jobs_app import Work

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.jobs_app:cluster"
Defs = dict[str, JobDefinition[Any]]
LOCKS_SQL = (
    "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " GROUP BY pid"
)


@pytest.fixture
async def db(fresh_pg_database: str) -> AsyncIterator[asyncpg.Connection]:
    await jobs_app.create_schema(fresh_pg_database)
    conn = await asyncpg.connect(fresh_pg_database)
    yield conn
    await conn.close()


@pytest.fixture
async def jobs_client(fresh_pg_database: str, db: asyncpg.Connection,
                      runners: list[RunnerProcess]) -> AsyncIterator[tuple[covey.Cluster, Defs]]:
    """Three runners of the jobs app, and a client-only cluster with the same jobs."""
    loop = asyncio.get_running_loop()
    runners.append(await loop.run_in_executor(None, lambda: start_runner(fresh_pg_database,
                                                                          app=APP)))
    started = await asyncio.gather(*(
        loop.run_in_executor(None, lambda: start_runner(fresh_pg_database, app=APP))
        for _ in range(2)))
    runners.extend(started)
    cluster = covey.Cluster(client_config(fresh_pg_database), client_only=True)
    defs = jobs_app.declare(cluster)
    async with cluster:
        wanted = {r.address for r in runners}

        async def all_live() -> bool:
            await cluster.sharding.refresh_membership()
            return {str(r.address) for r in cluster.sharding.live} == wanted

        async def balanced() -> bool:  # every runner holds its share of the 30 shard locks
            locks = {r["pid"]: r["n"] for r in await db.fetch(LOCKS_SQL)}
            return len(locks) == len(runners) and sum(locks.values()) == 30

        await wait_until(all_live, timeout=30)
        await wait_until(balanced, timeout=30)
        yield cluster, defs


async def _waiting(cluster: covey.Cluster, name: str, runners: int = 3) -> dict[str, int]:
    """Jobs of ``name`` waiting for a slot, per priority, summed over the runners."""
    seen: dict[str, dict[str, int]] = {}
    for i in range(300):  # entity ids until each runner has answered for itself
        answer = await cluster.client(jobs_app.Backlog, f"probe-{i}").waiting(name)
        seen[answer["runner"]] = answer["by_priority"]
        if len(seen) == runners:
            break
    assert len(seen) == runners, seen
    total: collections.Counter[str] = collections.Counter()
    for by_priority in seen.values():
        total.update(by_priority)
    return dict(total)


async def _job_counts(db: asyncpg.Connection, tag: str) -> tuple[int, int]:
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE processed) AS done, count(*) AS total"
        " FROM covey.messages WHERE entity_type = 'covey.Job' AND tag = $1", tag)
    return row["done"], row["total"]


async def test_5000_jobs_survive_a_sigkilled_runner(  # type: ignore[no-untyped-def]
    jobs_client, runners: list[RunnerProcess], db: asyncpg.Connection
) -> None:
    _, defs = jobs_client
    total, batch = 5000, 250
    batches = [[Work(key=f"k{n}") for n in range(i, i + batch)] for i in range(0, total, batch)]
    plan = list(batches)
    handles: list[covey.JobHandle] = []
    by_key: dict[str, covey.JobHandle] = {}
    killed = asyncio.Event()

    async def submitter() -> None:
        while batches:
            if len(batches) <= len(plan) // 2:  # the second half goes in after the kill
                await killed.wait()
            items = batches.pop(0)
            submitted = await defs["effect"].submit(items)
            handles.extend(submitted)
            by_key.update((w.key, h) for w, h in zip(items, submitted, strict=True))

    async def killer() -> None:
        await wait_until(lambda: db.fetchval("SELECT count(*) >= 1500 FROM job_effects"),
                         timeout=30, interval=0.01)
        runners[1].kill()
        killed.set()

    await asyncio.gather(killer(), *(submitter() for _ in range(3)))
    assert killed.is_set() and len({h.id for h in handles}) == total

    async def all_done() -> bool:
        done, stored = await _job_counts(db, "effect")
        return done == stored == total

    await wait_until(all_done, timeout=90, interval=0.1)
    states: collections.Counter[str] = collections.Counter()
    attempts: collections.Counter[int] = collections.Counter()
    for h in handles[::10] + handles[-50:]:  # a sample through the API
        status = await h.status()
        states[status.state] += 1
        attempts[status.attempts] += 1
    assert set(states) == {"succeeded"}, states
    failed = await db.fetchval("SELECT count(*) FROM covey.messages WHERE entity_type ="
                               " 'covey.Job' AND (reply_is_error OR NOT processed)")
    assert failed == 0
    effects = await db.fetchval("SELECT count(*) FROM job_effects")
    runs = await db.fetchval("SELECT count(*) FROM job_runs")
    per_key = collections.Counter(r["n"] for r in await db.fetch(
        "SELECT count(*) AS n FROM job_runs GROUP BY key"))
    max_attempt = await db.fetchval("SELECT max(attempt) FROM job_runs")
    assert effects == total  # every effect exactly once (unique key, ON CONFLICT DO NOTHING)
    assert sum(per_key.values()) == total and runs >= total
    rerun_keys = [r["key"] for r in await db.fetch(
        "SELECT key FROM job_runs GROUP BY key HAVING count(*) > 1")]
    rerun_status = [await by_key[k].status() for k in rerun_keys]
    assert all(s.state == "succeeded" for s in rerun_status)
    # the attempt counts show the re-runs: each start is recorded (batched, right after
    # it begins), so the re-run of a job whose start had landed before the kill is its
    # attempt 2 — status agrees with what the handler saw; a start still in flight at
    # the kill is not counted (documented)
    seen = {r["key"]: r["a"] for r in await db.fetch(
        "SELECT key, max(attempt) AS a FROM job_runs GROUP BY key HAVING count(*) > 1")}
    assert [s.attempts for s in rerun_status] == [seen[k] for k in rerun_keys]
    assert not rerun_status or max(s.attempts for s in rerun_status) >= 2
    print(f"\nSIGKILL: {total} jobs, {runs} runs ({runs - total} re-runs after the kill); "
          f"runs per job {dict(sorted(per_key.items()))}; max JobContext.attempt {max_attempt}; "
          f"sampled status attempts {dict(sorted(attempts.items()))}; status.attempts of the "
          f"re-run jobs {collections.Counter(s.attempts for s in rerun_status)}")


async def test_priority_orders_each_runners_backlog(  # type: ignore[no-untyped-def]
    jobs_client, db: asyncpg.Connection
) -> None:
    cluster, defs = jobs_client
    serial = defs["serial"]
    # blockers spread over shards: each runner (concurrency 1) runs one and queues the
    # rest above everything else (priority 100), so every runner has a backlog
    blockers = await serial.submit([Work(key=f"block{i}") for i in range(30)], priority=100)
    await wait_until(lambda: db.fetchval(
        "SELECT count(DISTINCT runner) = 3 FROM job_starts WHERE key LIKE 'block%'"), timeout=20)
    # low first: FIFO would start them first
    low = await serial.submit([Work(key=f"low{i}") for i in range(20)], priority="low")
    high = await serial.submit([Work(key=f"high{i}") for i in range(20)], priority="high")

    async def queued_behind_the_blockers() -> bool:  # every push reached its runner
        waiting = await _waiting(cluster, "serial")
        return waiting.get("10", 0) == 20 and waiting.get("-10", 0) == 20

    await wait_until(queued_behind_the_blockers, timeout=20)
    assert await db.fetchval(
        "SELECT count(*) FROM job_starts WHERE key NOT LIKE 'block%'") == 0
    await db.execute("INSERT INTO job_flags (name) VALUES ('release')")
    await asyncio.gather(*(h.result(timeout=30) for h in [*blockers, *low, *high]))
    rows = await db.fetch("SELECT key, runner FROM job_starts ORDER BY id")
    order: dict[str, list[str]] = collections.defaultdict(list)
    for r in rows:
        order[r["runner"]].append(r["key"])
    assert len(order) == 3
    for runner, keys in order.items():
        kinds = [k.rstrip("0123456789") for k in keys]
        # on each runner: blockers, then every high, then every low
        assert kinds == sorted(kinds, key=["block", "high", "low"].index), (runner, " ".join(keys))
        print(f"\n{runner}: {kinds.count('block')} blockers, {kinds.count('high')} high, "
              f"then {kinds.count('low')} low")
    assert sum(len(v) for v in order.values()) == 70


async def test_cancel_queued_and_running(jobs_client, db: asyncpg.Connection) -> None:  # type: ignore[no-untyped-def]
    _, defs = jobs_client
    later = await defs["effect"].submit(Work(key="later"), delay=30)
    assert (await later.status()).state == "scheduled"
    final = await later.cancel()
    assert final.state == "cancelled" and final.attempts == 0
    running = await defs["cancellable"].submit(Work(key="busy"))
    await wait_until(lambda: db.fetchval("SELECT count(*) = 1 FROM job_starts WHERE key = 'busy'"),
                     timeout=10)
    assert (await running.status()).state == "running"
    final = await running.cancel()
    assert final.state == "cancelled"
    assert await db.fetchval("SELECT count(*) FROM job_cancelled WHERE key = 'busy'") == 1
    with pytest.raises(JobError) as info:
        await running.result(timeout=5)
    assert info.value.reason is Reason.JOB_CANCELLED
    # a cancelled job's outcome is stored: it is never delivered again, nothing to wait for
    assert (await later.status()).state == "cancelled"
    assert await db.fetchval("SELECT count(*) FROM job_runs WHERE key = 'later'") == 0


async def test_retries_dead_letter_and_retry_from_it(  # type: ignore[no-untyped-def]
    jobs_client, db: asyncpg.Connection
) -> None:
    cluster, defs = jobs_client
    await db.execute("INSERT INTO job_flags (name) VALUES ('fail:down')")
    handle = await defs["flaky"].submit(Work(key="down"))
    with pytest.raises(JobError) as info:
        await handle.result(timeout=20)
    assert info.value.reason is Reason.JOB_DEAD
    status = await handle.status()
    assert status.state == "dead" and status.attempts == 3
    assert "ConnectionError: downstream down for down (attempt 3)" in str(status.last_error)
    attempts = [r["attempt"] for r in await db.fetch(
        "SELECT attempt FROM job_runs WHERE key = 'down' ORDER BY id")]
    assert attempts == [1, 2, 3]
    assert [s.id for s in await cluster.jobs.dead_letters()] == [handle.id]
    await db.execute("DELETE FROM job_flags WHERE name = 'fail:down'")
    again = await cluster.jobs.retry_dead(handle.id)
    assert again.id == handle.id
    assert await again.result(timeout=20) == "done down"
    status = await again.status()
    assert status.state == "succeeded" and status.attempts == 1
    assert await cluster.jobs.dead_letters() == []
    assert await db.fetchval("SELECT count(*) FROM job_runs WHERE key = 'down'") == 4


async def test_dedupe_under_50_concurrent_submits(jobs_client, db: asyncpg.Connection) -> None:  # type: ignore[no-untyped-def]
    _, defs = jobs_client
    handles = await asyncio.gather(*(
        defs["effect"].submit(Work(key="once"), dedupe_key="welcome:42") for _ in range(50)))
    assert len({h.id for h in handles}) == 1
    assert sum(1 for h in handles if not h.duplicate) == 1
    assert await handles[0].result(timeout=10) == "once"
    # one job stored and finished: no second run can come (nothing to wait for)
    assert await db.fetchval("SELECT count(*) FROM job_effects WHERE key = 'once'") == 1
    assert await db.fetchval("SELECT count(*) FROM job_runs WHERE key = 'once'") == 1
    assert await _job_counts(db, "effect") == (1, 1)


class Rollback(Exception):
    pass


async def test_transactional_submit(  # type: ignore[no-untyped-def]
    jobs_client, db: asyncpg.Connection, fresh_pg_database: str
) -> None:
    _, defs = jobs_client
    conn = await asyncpg.connect(fresh_pg_database)
    try:
        submitted: list[covey.JobHandle] = []

        async def rolled_back() -> None:
            async with conn.transaction():
                submitted.append(
                    await defs["effect"].submit(Work(key="rolled-back"), transaction=conn))
                raise Rollback

        with pytest.raises(Rollback):
            await rolled_back()
        dropped = submitted[0]
        async with conn.transaction():
            kept = await defs["effect"].submit(Work(key="committed"), transaction=conn)
    finally:
        await conn.close()
    assert await kept.result(timeout=10) == "committed"
    with pytest.raises(JobError) as info:
        await dropped.status()
    assert info.value.reason is Reason.JOB_NOT_FOUND
    # the rolled-back job was never stored, so no runner can run it (nothing to wait for)
    assert await db.fetchval("SELECT count(*) FROM job_runs WHERE key = 'rolled-back'") == 0
    assert await db.fetchval("SELECT count(*) FROM job_effects WHERE key = 'committed'") == 1
    assert await _job_counts(db, "effect") == (1, 1)
