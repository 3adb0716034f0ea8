"""Event throughput: 20,000 events over 200 keys, delivered to two groups by two runners.

Two runners of ``bench.apps.events_bench_app`` on a scratch PostgreSQL database
(300 shards, library defaults); the bench process is a client-only publisher.
``Tick`` events go to the groups ``a`` and ``b`` (handlers that do nothing), so
each event is two deliveries.

Events go in as batches of ``BATCH`` (one ``publish_many`` call each),
``IN_FLIGHT`` calls at a time. ``handled_per_s`` = deliveries (events x 2) /
(first publish call start -> last delivery completed). Completion is detected
by polling the count of processed ``covey.Event`` messages every 50 ms on one
connection (at most 50 ms added to the window). ``publish_s`` is the time to
store and push every batch; ``published_per_s`` the rate of that phase alone.
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
    start_runner,
    stop_runners,
    wait_balanced,
)
from .events_latency import APP, app_module

BATCH = 500
IN_FLIGHT = 4
KEYS = 200
GROUPS = 2
POLL = 0.05
DONE_SQL = ("SELECT count(*) FROM covey.messages WHERE entity_type = 'covey.Event'"
            " AND processed")


async def measure(url: str, total: int) -> dict[str, Any]:
    app = app_module()
    runners = []
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(app.STARTS_TABLE)
        runners.append(await start_runner(url, app=APP))
        runners.append(await start_runner(url, app=APP))
        async with covey.Cluster(caller_config(url), client_only=True) as caller:
            await wait_balanced(conn, caller, runners)
            # warm-up: connections, code paths and every key's worker are hot
            await caller.publish_many([app.Tick(n=-1 - k, k=f"k{k}") for k in range(KEYS)])
            base = await _wait_done(conn, 0, KEYS * GROUPS, time.monotonic())
            batches = [[app.Tick(n=n, k=f"k{n % KEYS}") for n in range(i, min(i + BATCH, total))]
                       for i in range(0, total, BATCH)]
            batches.reverse()  # popped from the end: published in order
            log(f"publishing {total} events ({len(batches)} batches of {BATCH}, "
                f"{IN_FLIGHT} in flight), {GROUPS} groups...")
            started = time.monotonic()
            published = 0

            async def publisher() -> None:
                nonlocal published
                while batches:
                    ids = await caller.publish_many(batches.pop())
                    published += len(ids)

            await asyncio.gather(*(publisher() for _ in range(IN_FLIGHT)))
            publish_s = time.monotonic() - started
            await _wait_done(conn, base, total * GROUPS, started)
            elapsed = time.monotonic() - started
            errors = await conn.fetchval(
                "SELECT count(*) FROM covey.messages WHERE entity_type = 'covey.Event'"
                " AND reply_is_error")
    finally:
        await conn.close()
        await stop_runners(runners)
    assert published == total
    deliveries = total * GROUPS
    log(f"  {deliveries} deliveries in {elapsed:.2f} s (published in {publish_s:.2f} s)")
    return {
        "events": total, "groups": GROUPS, "keys": KEYS, "deliveries": deliveries,
        "elapsed_s": round(elapsed, 3), "handled_per_s": round(deliveries / elapsed),
        "publish_s": round(publish_s, 3), "published_per_s": round(total / publish_s),
        "errors": errors, "batch": BATCH, "in_flight": IN_FLIGHT, "poll_s": POLL,
        "completion": "polled count(*) of processed covey.Event rows every 50 ms",
    }


async def _wait_done(conn: asyncpg.Connection, base: int, wanted: int,
                     started: float) -> int:
    """Poll until ``wanted`` more deliveries than ``base`` are processed; the count."""
    while True:
        done = await conn.fetchval(DONE_SQL)
        if done - base >= wanted:
            return int(done)
        if time.monotonic() - started > 300:
            raise TimeoutError(f"only {done - base} of {wanted} deliveries done in 300 s")
        await asyncio.sleep(POLL)


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    total = 5_000 if quick else 20_000
    async with scratch_database() as url:
        result = await measure(url, total)
    result.update(scenario="events-throughput", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets={"handled_per_s": 5000})
    return result
