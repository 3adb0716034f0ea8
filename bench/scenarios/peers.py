"""covey and its peers in the same run, on the same PostgreSQL, same workload.

Jobs: covey vs procrastinate and pgqueuer (PostgreSQL queues) vs Celery (Redis
broker). Workflows: covey vs DBOS Transact (PostgreSQL). Temporal is not
measured: its server is a separate binary that this machine cannot download;
its fields are null and ``missing`` says why.

Every system gets a scratch store of its own, created and dropped: a scratch
PostgreSQL database (``COVEY_TEST_DATABASE_URL``'s server) for covey,
procrastinate, pgqueuer and DBOS; for Celery, a queue of its own on Redis DB 15
(``COVEY_BENCH_REDIS_URL``), its keys deleted afterwards. Processes are killed
(process group) at the end of each system's turn. Systems run one after the
other, never at once.

The peers are not covey's dependencies: ``pip install -e '.[peers]'`` installs
procrastinate, Celery (with redis) and DBOS; pgqueuer goes in with
``pip install --no-deps pgqueuer`` (its hard dependency uvloop would make uvicorn
switch every other benchmark's event loop). A peer that is not installed is
listed in ``missing`` and covey still runs.

What is measured (the covey side runs the code of ``jobs-throughput``,
``jobs-latency``, ``workflow-throughput`` and ``workflow-latency`` with the same
definitions; only the counts and the shared set-up differ):

* ``jobs_per_s_*``: a no-op job; 200 warm-up jobs (50 with ``--quick``), then N (20,000; 1,000 with
  ``--quick``) enqueued as batches of 500, 4 enqueue calls in flight; jobs / (first
  enqueue call -> last completion seen). Completion: polled every 50 ms, covey
  ``processed`` rows in ``covey.messages``, procrastinate ``succeeded`` rows,
  pgqueuer rows gone from its queue table (it deletes a finished job's row);
  Celery has no durable record of a finished task without a result backend, so
  its no-op sends a UDP datagram that the bench counts (a ``sendto``, ~µs).
* ``job_p50_ms_*`` / ``job_p99_ms_*``: enqueue -> handler start, one job at a time
  on idle workers (after 50 warm-up jobs, then 500; 10 and 40 with ``--quick``).
  ``time.time()`` before the enqueue call -> ``time.time()`` first thing in the
  handler (covey returns it as the job's result; the peers send it by UDP).
  covey waits for each job's result before the next; the peers wait for the stamp.
* ``wf_per_s_*``: a three-step workflow (three journaled async no-op steps); 100
  warm-up (50 with ``--quick``), then 2,000 (200 with ``--quick``), 200 start calls in flight, each
  result awaited; completed / (first start -> last result); ``wf_errors_*``
  start or result calls that failed (0 expected).
* ``wf_p50_ms_*`` / ``wf_p99_ms_*``: start -> result, one at a time on idle
  workers, 30 warm-up, then 300 (10 and 30 with ``--quick``).

``--quick`` measures the same things with fewer items (about 40 s here): a smoke
run, its throughput windows are too short to quote.

Configuration (each per its own docs, no tuning beyond what is stated):

* covey: 2 runner processes + a client-only caller, 300 shards, library defaults
  (job concurrency 100 per runner), exactly as its own scenarios.
* procrastinate: 2 ``run_worker_async`` processes, ``concurrency=10`` each
  (its default is 1; 10 measured faster than 1 and 50 here), LISTEN/NOTIFY on
  (default), psycopg pool of ``concurrency + 2``; enqueue with
  ``batch_defer_async`` (one INSERT per batch).
* pgqueuer: 2 ``PgQueuer.run()`` processes, its default ``batch_size=10`` dequeues,
  ``max_concurrent_tasks=20`` (its default is no cap; 20 is the least it accepts
  with batches of 10, the others run 10 at a time), asyncpg driver, stdlib asyncio event loop (as
  covey: pgqueuer's CLI would use uvloop, not installed here); enqueue with the
  list form of ``Queries.enqueue`` (one INSERT per batch).
* Celery: 2 workers, ``--pool=threads --concurrency=10`` (prefork with its
  default concurrency, 2, measured ~250 jobs/s here, less than threads),
  ``task_ignore_result``, ``--without-gossip --without-mingle
  --without-heartbeat``, prefetch and acks at their defaults (early ack). Celery
  has no batch enqueue: each batch is one ``send_task`` per job through one
  producer connection, in a thread.
* DBOS: one process that starts and runs the workflows in-process
  (``DBOS.start_workflow_async`` + ``get_result``), DBOS's defaults, its system
  database on the scratch database (``bench.apps.peer_dbos``).

A peer whose package is not installed gets null fields and a ``missing`` entry;
covey always runs. The machine is shared and noisy when these runs are made:
compare systems within one run, not across runs.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from typing import Any

import asyncpg

import covey

from . import _peer_queues as queues
from ._runners import (
    ROOT,
    caller_config,
    log,
    percentile,
    scratch_database,
    server_settings,
    start_runner,
    stop_runners,
    wait_balanced,
)
from .jobs_throughput import APP as JOBS_APP
from .jobs_throughput import DONE_SQL, jobs_bench_app
from .workflow_throughput import run_batch, workflow_cluster

JOB_PEERS = ("procrastinate", "pgqueuer", "celery")
WF_PEERS = ("dbos",)
TEMPORAL = "temporal: its server binary cannot be downloaded on this machine (no internet)"


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"jobs": 1_000, "job_latency": 40, "job_warmup": 10, "workflows": 200,
                "wf_latency": 30, "wf_warmup": 10, "warm_jobs": 50, "warm_workflows": 50}
    return {"jobs": 20_000, "job_latency": 500, "job_warmup": 50, "workflows": 2_000,
            "wf_latency": 300, "wf_warmup": 30, "warm_jobs": 200, "warm_workflows": 100}


def version(package: str) -> str | None:
    if importlib.util.find_spec(package) is None:
        return None
    return importlib.metadata.version(package)


async def covey_jobs(url: str, total: int, count: int, warmup: int,
                     warm: int) -> dict[str, Any]:
    """``jobs-throughput`` then ``jobs-latency`` on one pair of runners."""
    app = jobs_bench_app()
    runners = []
    try:
        runners.append(await start_runner(url, app=JOBS_APP))
        runners.append(await start_runner(url, app=JOBS_APP))
        caller = covey.Cluster(caller_config(url), client_only=True)
        defs = app.declare(caller)
        async with caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
                handles = await defs["noop"].submit([app.Task(n=-i) for i in range(warm)])
                await asyncio.gather(*(h.result(timeout=30) for h in handles))
                base = await conn.fetchval(DONE_SQL)
                batches = [[app.Task(n=n) for n in range(i, min(i + queues.BATCH, total))]
                           for i in range(0, total, queues.BATCH)]
                log(f"covey: {total} jobs, then {count} one at a time...")
                started = time.monotonic()

                async def submitter() -> None:
                    while batches:
                        await defs["noop"].submit(batches.pop())

                await asyncio.gather(*(submitter() for _ in range(queues.IN_FLIGHT)))
                submit_s = time.monotonic() - started
                while await conn.fetchval(DONE_SQL) - base < total:
                    if time.monotonic() - started > 300:
                        raise TimeoutError("covey jobs not done in 300 s")
                    await asyncio.sleep(queues.POLL)
                elapsed = time.monotonic() - started
            finally:
                await conn.close()
            starts: list[float] = []
            for n in range(-warmup, count):
                before = time.time()
                handle = await defs["stamp"].submit(app.Task(n=n))
                entered = await handle.result(timeout=30)
                if n >= 0:
                    starts.append(entered - before)
    finally:
        await stop_runners(runners)
    return {"jobs_per_s": round(total / elapsed), "elapsed_s": round(elapsed, 3),
            "submit_jobs_per_s": round(total / submit_s),
            "start_p50_ms": round(percentile(starts, 0.5) * 1000, 2),
            "start_p99_ms": round(percentile(starts, 0.99) * 1000, 2),
            "start_max_ms": round(max(starts) * 1000, 2)}


async def covey_workflows(url: str, total: int, count: int, warmup: int,
                          warm: int) -> dict[str, Any]:
    """``workflow-throughput`` then ``workflow-latency`` on one pair of runners."""
    totals: list[float] = []
    async with workflow_cluster(url) as (_, caller, workflows):
        noop3 = workflows["noop3"]
        await run_batch(caller, noop3, "warm", warm)
        log(f"covey: {total} workflows, then {count} one at a time...")
        completed, errors, seconds, _, _ = await run_batch(caller, noop3, "wf", total)
        for n in range(-warmup, count):
            before = time.perf_counter()
            handle = await caller.start(noop3, n, workflow_id=f"lat{n}")
            if await handle.result(timeout=30.0) != n + 3:
                raise RuntimeError(f"workflow lat{n}: wrong result")
            if n >= 0:
                totals.append(time.perf_counter() - before)
    return {"wf_per_s": round(completed / seconds, 1), "errors": errors,
            "p50_ms": round(percentile(totals, 0.5) * 1000, 2),
            "p99_ms": round(percentile(totals, 0.99) * 1000, 2)}


async def dbos_workflows(url: str, total: int, count: int, warmup: int,
                         warm: int) -> dict[str, Any]:
    log(f"dbos: {total} workflows, then {count} one at a time...")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.apps.peer_dbos", url, str(total), str(count), str(warmup),
        str(warm),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 300)
    finally:
        await queues.stop_workers([process])
    if process.returncode != 0:
        raise RuntimeError(f"bench.apps.peer_dbos exited with {process.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    log(f"  dbos: {result}")
    return result


def record(result: dict[str, Any], system: str, jobs: dict[str, Any] | None = None,
           workflows: dict[str, Any] | None = None) -> None:
    if system in JOB_PEERS or system == "covey":
        j = jobs or {}
        result[f"jobs_per_s_{system}"] = j.get("jobs_per_s")
        result[f"submit_jobs_per_s_{system}"] = j.get("submit_jobs_per_s")
        result[f"job_p50_ms_{system}"] = j.get("start_p50_ms")
        result[f"job_p99_ms_{system}"] = j.get("start_p99_ms")
    if system in WF_PEERS or system == "covey":
        w = workflows or {}
        result[f"wf_per_s_{system}"] = w.get("wf_per_s")
        result[f"wf_p50_ms_{system}"] = w.get("p50_ms")
        result[f"wf_p99_ms_{system}"] = w.get("p99_ms")
        result[f"wf_errors_{system}"] = w.get("errors")


async def run(quick: bool) -> dict[str, Any]:
    size = sizes(quick)
    started = time.monotonic()
    result: dict[str, Any] = {"scenario": "peers", "quick": quick, "cpus": os.cpu_count(),
                              "postgres": await server_settings(), "sizes": size}
    versions: dict[str, str | None] = {"covey": importlib.metadata.version("covey")}
    missing = [TEMPORAL]
    for name in (*JOB_PEERS, *WF_PEERS):
        versions[name] = version(queues.MODULES.get(name, name))
        if versions[name] is None:
            missing.append(f"{name}: not installed (pip install {name})")
            record(result, name)
    async with scratch_database() as url:
        jobs = await covey_jobs(url, size["jobs"], size["job_latency"], size["job_warmup"],
                                size["warm_jobs"])
    async with scratch_database() as url:
        wfs = await covey_workflows(url, size["workflows"], size["wf_latency"],
                                    size["wf_warmup"], size["warm_workflows"])
    record(result, "covey", jobs, wfs)
    for name in JOB_PEERS:
        if versions[name] is None:
            continue
        args = (size["jobs"], size["job_latency"], size["job_warmup"], size["warm_jobs"])
        if name == "celery":
            record(result, name, await queues.measure_peer(name, queues.REDIS_URL, *args))
            continue
        async with scratch_database() as url:
            record(result, name, await queues.measure_peer(name, url, *args))
    if versions["dbos"] is not None:
        async with scratch_database() as url:
            record(result, "dbos", workflows=await dbos_workflows(
                url, size["workflows"], size["wf_latency"], size["wf_warmup"],
                size["warm_workflows"]))
    result.update(
        versions=versions, missing=missing, seconds=round(time.monotonic() - started, 1),
        settings={
            "workers": "2 processes per system (DBOS: 1 process starting and running)",
            "covey": "300 shards, library defaults (job concurrency 100 per runner)",
            "procrastinate": "concurrency=10 per worker, listen_notify, batch_defer_async",
            "pgqueuer": "PgQueuer.run(batch_size=10, max_concurrent_tasks=20), asyncpg, "
                        "no uvloop",
            "celery": "--pool=threads --concurrency=10, Redis broker, ignore_result, "
                      "send_task per job on one producer",
            "dbos": "in-process start_workflow_async, defaults",
            "jobs": f"batches of {queues.BATCH}, {queues.IN_FLIGHT} enqueue calls in flight",
            "workflows": "200 start calls in flight, 3 async no-op steps",
        })
    return result
