"""Dashboard: every view's server time on a store of 1,000,000 job rows.

On a scratch PostgreSQL database (300 shards):

1. *Templates.* A pod of ``bench.apps.dashboard_bench_app`` with a runner, and
   a client-only member in this process, make real rows through the public API:
   jobs done and dead (``report``, ``doomed``), workflows done and waiting for a
   signal, events handled and dead-lettered by the group ``mailer``, webhook
   deliveries delivered (endpoint ``sink``) and dead (``broken``), cron ticks and
   a singleton's beat. The pod is then stopped.
2. *Bulk.* ``ROWS`` job rows are copied from the template rows in SQL (``INSERT
   ... SELECT`` over arrays of ids and shards; payloads, replies and error
   histories are the templates' bytes, encoded by covey), in the mix of
   :data:`MIX`, over 20 job names, with ids above every template row: the
   workflows, events and webhooks are older than the million jobs (the worst
   case for a listing of one of them). Then ``VACUUM ANALYZE`` (autovacuum's work
   on a real store).
3. *Views.* A client-only pod serves the dashboard (nothing runs, so the store
   stays as seeded); each view is requested ``N`` times in turn (after one
   warm-up request each), one request at a time, and its ``Server-Timing:
   app;dur=`` (request received to body rendered, measured by the app) is kept.

Output: per view ``p50_ms`` / ``p95_ms`` / ``bytes`` (of the page), ``p95_ms`` =
the worst view's p95 (target <= 200), the seeded ``rows`` by state and the
seconds each phase took. ``--quick`` seeds the same 1,000,000 rows (about 20 s
here) and requests each view 10 times instead of 40 (about 35 s in all); on a
slower machine ``BENCH_DASHBOARD_QUICK_ROWS`` seeds fewer, and ``rows_seeded``
in the output says how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import covey
from covey.core import CoveyConfig
from covey.core.runtime import shard_for

from ._realtime import Pod, free_port, wait_ready
from ._runners import ROOT, SECRET, log, percentile, scratch_database, server_settings

APP = "bench.apps.dashboard_bench_app:make_app"
SHARDS = 300
ROWS = 1_000_000
#: what ``--quick`` seeds when ``BENCH_DASHBOARD_QUICK_ROWS`` says so (default: ROWS)
QUICK_ROWS = int(os.environ.get("BENCH_DASHBOARD_QUICK_ROWS", ROWS))
CHUNK = 200_000
JOB_NAMES = [f"{area}.{verb}" for area in ("email", "report", "invoice", "image", "sync")
             for verb in ("send", "build", "render", "fetch")]
#: the seeded job rows by state, as fractions (the newest rows are the queue)
MIX = {"queued": 0.03, "running": 0.0005, "delayed": 0.02, "dead": 0.005, "done": None}
DEADLINE = 60.0


def app_module() -> Any:
    import importlib

    return importlib.import_module("bench.apps.dashboard_bench_app")


def pod_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({
        "COVEY_DATABASE_URL": url, "COVEY_SHARDS": str(SHARDS),
        "COVEY_CLUSTER_SECRET": SECRET, "COVEY_RUNNER_HOST": "127.0.0.1",
        "COVEY_RUNNER_PORT": "0", "COVEY_WEBHOOKS_ALLOW_PRIVATE": "true",
        "COVEY_DRAIN_DELAY": "0.2", "COVEY_SHARDING_SHUTDOWN_GRACE": "2",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **extra,
    })
    return env


def start_pod(name: str, url: str, workdir: Path, **extra: str) -> Pod:
    """Start a uvicorn pod of the app (not waiting for it)."""
    port = free_port()
    path = workdir / f"{name}.log"
    with path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", APP, "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--http", "httptools", "--log-level", "warning",
             "--no-access-log"],
            cwd=ROOT, env=pod_env(url, **extra), stdout=out, stderr=subprocess.STDOUT)
    return Pod(name, port, process, path)


@contextlib.asynccontextmanager
async def pod(name: str, url: str, workdir: Path, **extra: str) -> AsyncIterator[Pod]:
    """A uvicorn pod of the app, ready; SIGKILLed on exit."""
    started = start_pod(name, url, workdir, **extra)
    try:
        await wait_ready(started, timeout=DEADLINE)
        yield started
    finally:
        started.kill()


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    give_up = time.monotonic() + DEADLINE
    while not await check():
        if time.monotonic() > give_up:
            raise TimeoutError(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.1)


async def make_templates(url: str, pod_url: str) -> dict[str, Any]:
    """Real rows of every kind, through the public API (phase 1)."""
    app = app_module()
    client = covey.Cluster(CoveyConfig.from_env(pod_env(url)), client_only=True)
    order = app.declare(client)
    async with client:
        jobs = client.jobs
        done = [await jobs.submit("report", app.Work(key=f"r{n}")) for n in range(3)]
        for handle in done:
            await handle.result(timeout=DEADLINE)
        dead = [await jobs.submit("doomed", app.Work(key=f"d{n}")) for n in range(2)]
        await jobs.submit("report", app.Work(key="later"), delay=3600)
        workflows = [f"order-{n}" for n in range(8)]
        for n, workflow_id in enumerate(workflows):
            await client.start(order, app.Order(order=f"o{n}"), workflow_id=workflow_id)
        for workflow_id in workflows[:5]:  # the other three wait for their signal
            await client.send(workflow_id, "approve", "yes")
        for n in range(20):
            await client.publish(app.OrderPlaced(key=f"k{n}", poison=n % 7 == 3))
        webhooks = client.webhooks
        sink = await webhooks.add_endpoint(f"{pod_url}/hooks/sink", types="invoice.*",
                                           description="sink", allow_private=True)
        broken = await webhooks.add_endpoint(f"{pod_url}/hooks/broken", types="invoice.*",
                                             description="broken", allow_private=True,
                                             schedule=[0.1])
        for n in range(5):
            await webhooks.send("invoice.paid", {"invoice": f"in_{n}", "amount": 42})

        async def jobs_dead() -> bool:
            return all([(await jobs.status(h.id)).state == "dead" for h in dead])

        async def workflows_settled() -> bool:
            states = [(await client.workflows.status(w)).state for w in workflows]
            return states[:5] == ["completed"] * 5 and states[5:] == ["waiting"] * 3

        async def events_settled() -> bool:
            stats = (await client.events.lag("mailer")).get("mailer")
            return stats is not None and stats.lag == 0 and stats.dead_letters == 3

        async def webhooks_settled() -> bool:
            delivered = [d.state for d in await webhooks.deliveries(endpoint=sink.id)]
            dead_ones = await webhooks.dead_letters(endpoint=broken.id)
            return delivered == ["delivered"] * 5 and len(dead_ones) == 5

        await until("jobs doomed dead", jobs_dead)
        await until("workflows completed or waiting", workflows_settled)
        await until("mailer caught up with 3 dead", events_settled)
        await until("webhooks delivered and dead", webhooks_settled)
    return {"job": done[0].id, "dead_job": dead[0].id, "workflow": workflows[-1],
            "endpoint": broken.id, "group": "mailer"}


#: one chunk of job rows copied from the templates: $1 ids, $2 shards, $3 the
#: first row's number, $4 rows in all, $5 now, $6 the done template, $7 the dead
#: one, $8 the names; the state of row i follows MIX (the newest rows are the queue)
BULK_INSERT = """
WITH done AS (SELECT payload, headers, reply, starts, attempts FROM covey.messages
              WHERE id = $6),
     dead AS (SELECT reply, last_error, failures, starts, attempts FROM covey.messages
              WHERE id = $7),
     g AS (SELECT t.id, t.shard, $3::int8 + t.n - 1 AS i,
            CASE WHEN $3::int8 + t.n - 1 > $4::int8 * (1 - $9::float8) THEN 'queued'
              WHEN $3::int8 + t.n - 1 > $4::int8 * (1 - $9::float8 - $10::float8)
                THEN 'running'
              WHEN ((t.id % 1000003) * 7919) % 10000 < $11::float8 * 10000 THEN 'dead'
              WHEN ((t.id % 1000003) * 7919) % 10000 >= 10000 - $12::float8 * 10000
                THEN 'delayed'
              ELSE 'done' END AS state
           FROM unnest($1::int8[], $2::int4[]) WITH ORDINALITY AS t(id, shard, n))
INSERT INTO covey.messages (id, entity_type, entity_id, shard_group, shard, tag, payload,
    headers, deliver_at, attempts, lease_until, created_at, processed, processed_at, reply,
    reply_is_error, failures, last_error, starts)
SELECT g.id, 'covey.Job', g.id::text, 'default', g.shard,
    ($8::text[])[1 + (g.i / 7) % array_length($8::text[], 1)],
    done.payload, done.headers,
    CASE WHEN g.state = 'delayed' THEN $5 + 600 + (g.i % 48) * 3600 END,
    CASE g.state WHEN 'done' THEN done.attempts WHEN 'dead' THEN dead.attempts
      WHEN 'running' THEN 1 ELSE 0 END,
    CASE WHEN g.state = 'running' THEN $5 + 86400 END,
    $5 - ($4 - g.i) * 0.6,
    g.state IN ('done', 'dead'),
    CASE WHEN g.state IN ('done', 'dead') THEN $5 - ($4 - g.i) * 0.6 + 0.2 END,
    CASE g.state WHEN 'done' THEN done.reply WHEN 'dead' THEN dead.reply END,
    g.state = 'dead',
    CASE WHEN g.state = 'dead' THEN dead.failures ELSE 0 END,
    CASE WHEN g.state = 'dead' THEN dead.last_error END,
    CASE g.state WHEN 'done' THEN done.starts WHEN 'dead' THEN dead.starts
      WHEN 'running' THEN 1 ELSE 0 END
FROM g, done, dead
"""
COUNT_STATES = """
SELECT CASE WHEN processed AND reply_is_error THEN 'dead' WHEN processed THEN 'done'
         WHEN lease_until > $1 THEN 'running' WHEN deliver_at > $1 THEN 'delayed'
         ELSE 'queued' END, count(*)
FROM covey.messages WHERE entity_type = 'covey.Job' GROUP BY 1 ORDER BY 1
"""


async def bulk(url: str, rows: int, templates: dict[str, Any]) -> dict[str, int]:
    """``rows`` job rows copied from the templates (phase 2); the job rows by state."""
    conn = await asyncpg.connect(url)
    try:
        first = int(await conn.fetchval("SELECT max(id) FROM covey.messages")) + 1
        now = time.time()
        for start in range(0, rows, CHUNK):
            ids = list(range(first + start, first + min(start + CHUNK, rows)))
            shards = [shard_for(str(i), SHARDS).id for i in ids]
            await conn.execute(
                BULK_INSERT, ids, shards, start + 1, rows, now, templates["job"],
                templates["dead_job"], JOB_NAMES, MIX["queued"], MIX["running"], MIX["dead"],
                MIX["delayed"], timeout=600)
            log(f"  {start + len(ids):,} job rows")
        await conn.execute("VACUUM ANALYZE covey.messages", timeout=600)
        counts = {r[0]: int(r[1]) for r in await conn.fetch(COUNT_STATES, time.time())}
    finally:
        await conn.close()
    return counts


def views(templates: dict[str, Any]) -> dict[str, str]:
    """Every view's path under the mount (the jobs list also filtered)."""
    return {
        "runners": "/runners", "shards": "/shards", "entities": "/entities",
        "jobs": "/jobs", "jobs_dead_by_name": f"/jobs?name={JOB_NAMES[3]}&state=dead",
        "jobs_queued": "/jobs?state=queued", "job": f"/jobs/{templates['dead_job']}",
        "workflows": "/workflows", "workflow": f"/workflows/{templates['workflow']}",
        "events": "/events", "event_group": f"/events/{templates['group']}",
        "webhooks": "/webhooks", "webhook_endpoint": f"/webhooks/{templates['endpoint']}",
        "schedules": "/schedules", "health": "/health",
    }


def server_ms(response: httpx.Response) -> float:
    for part in response.headers.get("server-timing", "").split(","):
        name, _, rest = part.strip().partition(";")
        if name == "app" and rest.startswith("dur="):
            return float(rest[4:])
    raise RuntimeError(f"{response.request.url}: no Server-Timing app;dur= header")


async def measure(base: str, paths: dict[str, str], repeat: int) -> dict[str, Any]:
    """Each view ``repeat`` times in turn (phase 3); per view p50/p95 of server time."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    sizes: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for name, path in paths.items():  # warm-up: templates compiled, connections open
            response = await http.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"{name} {path}: {response.status_code}\n"
                                   f"{response.text[:2000]}")
            sizes[name] = len(response.content)
        for _ in range(repeat):
            for name, path in paths.items():
                samples[name].append(server_ms(await http.get(path)))
    return {name: {"p50_ms": round(percentile(s, 0.5), 2), "p95_ms": round(percentile(s, 0.95), 2),
                   "max_ms": round(max(s), 2), "bytes": sizes[name]}
            for name, s in samples.items()}


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    rows = QUICK_ROWS if quick else ROWS
    repeat = 10 if quick else 40
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="covey-dash-bench-") as workdir:
        async with scratch_database() as url:
            log("templates: real rows through the API...")
            async with pod("template", url, Path(workdir)) as runner:
                templates = await make_templates(url, runner.http)
            templates_s = time.monotonic() - started
            log(f"bulk: {rows:,} job rows...")
            counts = await bulk(url, rows, templates)
            seed_s = time.monotonic() - started - templates_s
            log(f"  {counts} in {seed_s:.1f} s; measuring the views ({repeat} times each)...")
            async with pod("dashboard", url, Path(workdir), BENCH_CLIENT_ONLY="1") as server:
                results = await measure(server.http + "/dash", views(templates), repeat)
    worst = max(results, key=lambda name: results[name]["p95_ms"])
    return {
        "scenario": "dashboard", "quick": quick, "rows_seeded": rows,
        "rows": counts, "mix": {k: v for k, v in MIX.items() if v is not None},
        "job_names": len(JOB_NAMES), "views": results, "requests_per_view": repeat,
        "p95_ms": results[worst]["p95_ms"], "worst_view": worst, "target_p95_ms": 200,
        "templates_s": round(templates_s, 1), "seed_s": round(seed_s, 1),
        "total_s": round(time.monotonic() - started, 1), "shards": SHARDS,
        "server": "one client-only uvicorn pod (nothing runs: the store stays as seeded)",
        "cpus": os.cpu_count(), "postgres": settings,
    }
