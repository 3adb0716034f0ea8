"""Job throughput: 20,000 no-op jobs through two runner processes.

Two runners of ``bench.apps.jobs_bench_app`` on a scratch PostgreSQL database
(300 shards, library defaults), the bench process a client-only submitter.
Jobs go in as batches of ``BATCH`` (one ``submit`` call each, one round trip),
``IN_FLIGHT`` submit calls at a time.

``jobs_per_s`` = jobs / (first submit call start -> last completion seen).
Completion is detected by polling ``SELECT count(*) FROM covey.messages WHERE
entity_type = 'covey.Job' AND processed`` every 50 ms on one connection of the
bench process (one cheap query per 50 ms; awaiting 20,000 handles would add a
reply wait per job to the bench process, which competes for the same 2 cores).
The poll adds at most 50 ms to the window. ``submit_s`` is the time to store
and push every batch; ``submit_jobs_per_s`` the rate of that phase alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

import covey

from ._runners import (
    caller_config,
    log,
    scratch_database,
    server_settings,
    shard_locks,
    start_runner,
    stop_runners,
    wait_balanced,
)

APP = "bench.apps.jobs_bench_app:cluster"
BATCH = 500
IN_FLIGHT = 4
POLL = 0.05
DONE_SQL = ("SELECT count(*) FROM covey.messages WHERE entity_type = 'covey.Job'"
            " AND processed")


def jobs_bench_app() -> Any:
    import importlib

    return importlib.import_module("bench.apps.jobs_bench_app")


async def measure(url: str, total: int) -> dict[str, Any]:
    app = jobs_bench_app()
    runners = []
    try:
        runners.append(await start_runner(url, app=APP))  # the first one migrates the schema
        runners.append(await start_runner(url, app=APP))
        caller = covey.Cluster(caller_config(url), client_only=True)
        defs = app.declare(caller)
        noop = defs["noop"]
        async with caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
                log(f"locks per runner: {sorted((await shard_locks(conn)).values())}")
                # warm-up: a few jobs, so connections and code paths are hot
                warm = await noop.submit([app.Task(n=-i) for i in range(200)])
                await asyncio.gather(*(h.result(timeout=30) for h in warm))
                base = await conn.fetchval(DONE_SQL)
                batches = [[app.Task(n=n) for n in range(i, min(i + BATCH, total))]
                           for i in range(0, total, BATCH)]
                log(f"submitting {total} jobs ({len(batches)} batches of {BATCH}, "
                    f"{IN_FLIGHT} in flight)...")
                started = time.monotonic()
                submitted = 0

                async def submitter() -> None:
                    nonlocal submitted
                    while batches:
                        handles = await noop.submit(batches.pop())
                        submitted += len(handles)

                await asyncio.gather(*(submitter() for _ in range(IN_FLIGHT)))
                submit_s = time.monotonic() - started
                done = 0
                while done < total:
                    done = await conn.fetchval(DONE_SQL) - base
                    if time.monotonic() - started > 300:
                        raise TimeoutError(f"only {done} of {total} jobs done in 300 s")
                    if done < total:
                        await asyncio.sleep(POLL)
                elapsed = time.monotonic() - started
                errors = await conn.fetchval(
                    "SELECT count(*) FROM covey.messages WHERE entity_type = 'covey.Job'"
                    " AND reply_is_error")
            finally:
                await conn.close()
    finally:
        await stop_runners(runners)
    assert submitted == total
    log(f"  {total} jobs in {elapsed:.2f} s (submitted in {submit_s:.2f} s)")
    return {
        "jobs": total, "elapsed_s": round(elapsed, 3), "jobs_per_s": round(total / elapsed),
        "submit_s": round(submit_s, 3), "submit_jobs_per_s": round(total / submit_s),
        "errors": errors, "batch": BATCH, "in_flight": IN_FLIGHT, "poll_s": POLL,
        "completion": "polled count(*) of processed covey.Job rows every 50 ms",
    }


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    total = 5_000 if quick else 20_000
    async with scratch_database() as url:
        result = await measure(url, total)
    result.update(scenario="jobs-throughput", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  target_jobs_per_s=6000)
    return result
