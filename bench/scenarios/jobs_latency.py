"""Job latency on idle runners: submit -> handler start, submit -> result.

Two runners of ``bench.apps.jobs_bench_app`` on a scratch PostgreSQL database
(300 shards, library defaults), the bench process a client-only submitter.
500 jobs (200 with ``--quick``) are submitted one at a time, each after the
previous one's result, so the runners are idle at every submit.

* ``start_*_ms``: ``time.time()`` before the ``submit`` call -> ``time.time()``
  the ``stamp`` handler takes on entry (its return value); same machine, same clock.
* ``done_*_ms``: ``time.time()`` before the ``submit`` call -> ``await
  handle.result()`` returned.
* ``submit_*_ms``: the ``submit`` call alone (store + push).
"""

from __future__ import annotations

import os
import time
from typing import Any

import asyncpg

import covey

from ._runners import (
    caller_config,
    log,
    percentile,
    scratch_database,
    server_settings,
    start_runner,
    stop_runners,
    wait_balanced,
)
from .jobs_throughput import APP, jobs_bench_app

WARMUP = 50


def summary(prefix: str, samples: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(percentile(samples, 0.5) * 1000, 2),
            f"{prefix}_p99_ms": round(percentile(samples, 0.99) * 1000, 2),
            f"{prefix}_max_ms": round(max(samples) * 1000, 2)}


async def measure(url: str, count: int) -> dict[str, Any]:
    app = jobs_bench_app()
    runners = []
    try:
        runners.append(await start_runner(url, app=APP))
        runners.append(await start_runner(url, app=APP))
        caller = covey.Cluster(caller_config(url), client_only=True)
        stamp = app.declare(caller)["stamp"]
        async with caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
            finally:
                await conn.close()
            starts: list[float] = []
            dones: list[float] = []
            submits: list[float] = []
            log(f"{WARMUP} warm-up jobs, then {count} jobs one at a time...")
            for n in range(WARMUP + count):
                before = time.time()
                handle = await stamp.submit(app.Task(n=n))
                submitted = time.time()
                entered = await handle.result(timeout=30)
                done = time.time()
                if n >= WARMUP:
                    starts.append(entered - before)
                    dones.append(done - before)
                    submits.append(submitted - before)
    finally:
        await stop_runners(runners)
    result: dict[str, Any] = {"jobs": count, "warmup": WARMUP}
    result.update(summary("start", starts))
    result.update(summary("done", dones))
    result.update(summary("submit", submits))
    log(f"  {result}")
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url, 200 if quick else 500)
    result.update(scenario="jobs-latency", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets={"start_p50_ms": 2.0, "start_p99_ms": 6, "done_p50_ms": 4})
    return result
