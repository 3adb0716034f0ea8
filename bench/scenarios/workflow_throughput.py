"""Workflow throughput: 2,000 three-step no-op workflows through two runner processes.

Two runners of ``bench.apps.workflow_bench_app`` on a scratch PostgreSQL
database (300 shards, library defaults); the bench process is a client-only
cluster member that starts the workflows and waits for their results.

``bench.noop3`` runs three journaled steps (async no-ops returning a small
int). After 100 warm-up workflows, 2,000 (500 with ``--quick``) are started,
``IN_FLIGHT`` ``cluster.start`` calls at a time, each with its own
``workflow_id``; every handle's ``result()`` is awaited as soon as its start
returned (so results and starts overlap, as they would in an application).

* ``wf_per_s`` = completed workflows / (first ``start`` call -> last result).
* ``seconds``: that window; ``start_s``: first start call -> last start
  returned (``started_per_s`` the rate of that phase alone).
* ``errors``: start or result calls that raised, plus results that are not
  the payload + 3.
* ``bench_cpu_s``: CPU seconds the bench process itself used in the window
  (it shares the 2 cores with the runners and PostgreSQL).
* ``completed_rows``: processed ``covey.Workflow`` executions in
  ``covey.messages`` after the run, counting the warm-up (a cross-check: one
  execution per workflow id, none lost, none doubled).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

import covey

from ._runners import (
    Runner,
    caller_config,
    log,
    scratch_database,
    server_settings,
    start_runner,
    stop_runners,
    wait_balanced,
)

APP = "bench.apps.workflow_bench_app:cluster"
IN_FLIGHT = 200
WARMUP = 100
RESULT_TIMEOUT = 120.0
DONE_SQL = ("SELECT count(*) FROM covey.messages WHERE entity_type = 'covey.Workflow'"
            " AND processed")


def workflow_bench_app() -> Any:
    return importlib.import_module("bench.apps.workflow_bench_app")


@contextlib.asynccontextmanager
async def workflow_cluster(
    url: str,
) -> AsyncIterator[tuple[list[Runner], covey.Cluster, dict[str, covey.Workflow]]]:
    """Two runners of the workflow app and a client-only caller that declares
    the same workflows, balanced; torn down on exit."""
    app = workflow_bench_app()
    runners: list[Runner] = []
    try:
        runners.append(await start_runner(url, app=APP))  # the first one migrates the schema
        runners.append(await start_runner(url, app=APP))
        caller = covey.Cluster(caller_config(url), client_only=True)
        workflows: dict[str, covey.Workflow] = app.declare(caller)
        async with caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
            finally:
                await conn.close()
            yield runners, caller, workflows
    finally:
        await stop_runners(runners)


async def run_batch(caller: covey.Cluster, workflow: covey.Workflow, prefix: str,
                    count: int) -> tuple[int, int, float, float, float]:
    """Start ``count`` workflows (``IN_FLIGHT`` start calls at a time) and wait
    for each result; (completed, errors, seconds, start phase seconds, CPU
    seconds of this process)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    completed = errors = 0
    last_started = 0.0

    async def one(n: int) -> None:
        nonlocal completed, errors, last_started
        try:
            async with gate:
                handle = await caller.start(workflow, n, workflow_id=f"{prefix}-{n}")
            last_started = time.monotonic()
            value = await handle.result(timeout=RESULT_TIMEOUT)
        except Exception as exc:  # counted and reported, the run goes on
            errors += 1
            if errors <= 3:
                log(f"  {prefix}-{n}: {type(exc).__name__}: {exc}")
            return
        if value == n + 3:
            completed += 1
        else:
            errors += 1

    started, cpu = time.monotonic(), time.process_time()
    await asyncio.gather(*(one(n) for n in range(count)))
    return (completed, errors, time.monotonic() - started, max(0.0, last_started - started),
            time.process_time() - cpu)


async def measure(url: str, total: int) -> dict[str, Any]:
    async with workflow_cluster(url) as (_, caller, workflows):
        noop3 = workflows["noop3"]
        log(f"{WARMUP} warm-up workflows...")
        _, errors, _, _, _ = await run_batch(caller, noop3, "warm", WARMUP)
        if errors:
            raise RuntimeError(f"{errors} of {WARMUP} warm-up workflows failed")
        log(f"{total} workflows, {IN_FLIGHT} start calls in flight...")
        completed, errors, seconds, start_s, cpu_s = await run_batch(caller, noop3, "wf",
                                                                     total)
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetchval(DONE_SQL)
        finally:
            await conn.close()
    log(f"  {completed} workflows in {seconds:.2f} s ({errors} errors)")
    return {
        "workflows": total, "completed": completed, "errors": errors,
        "seconds": round(seconds, 3), "wf_per_s": round(completed / seconds, 1),
        "start_s": round(start_s, 3),
        "started_per_s": round(total / start_s, 1) if start_s else None,
        "bench_cpu_s": round(cpu_s, 3), "steps_per_workflow": 3, "in_flight": IN_FLIGHT,
        "warmup": WARMUP,
        "completed_rows": rows, "expected_rows": total + WARMUP,
    }


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url, 500 if quick else 2_000)
    result.update(scenario="workflow-throughput", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets={"wf_per_s": 1000})
    return result
