"""Event latency: publish call -> handler start on another process, and outbox commit -> start.

Two runners of ``bench.apps.events_bench_app`` on a scratch PostgreSQL database
(300 shards, library defaults); the bench process is a client-only publisher.
``Stamped`` events go to the group ``stamp``, whose handler takes ``time.time()``
on entry and stores it through ``ctx.transaction`` (it lands once).

* ``p50_ms`` / ``p99_ms``: 1,000 events (300 with ``--quick``) published one at a
  time with ``cluster.publish`` (each call awaited, then a 2 ms pause, so the
  runners are idle at each publish), over 50 keys: ``time.time()`` before the
  ``publish`` call -> the handler's stamp.
* ``outbox_p50_ms`` / ``outbox_p99_ms``: 300 events (100 quick) published inside
  the bench's own asyncpg transaction (``transaction=conn``), one per transaction:
  ``time.time()`` right before the COMMIT -> the handler's stamp (the owners are
  woken by ``NOTIFY`` at commit).
* ``publish_p50_ms``: the ``publish`` call alone.
"""

from __future__ import annotations

import asyncio
import importlib
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

APP = "bench.apps.events_bench_app:cluster"
KEYS = 50
WARMUP = 50
PAUSE = 0.002
TARGETS = {"p50_ms": 3.0, "p99_ms": 20.0, "outbox_p50_ms": 15.0}


def app_module() -> Any:
    return importlib.import_module("bench.apps.events_bench_app")


def ms(samples: list[float], q: float) -> float:
    return round(percentile(samples, q) * 1000, 2)


async def wait_stamps(conn: asyncpg.Connection, wanted: set[int],
                      timeout: float = 60) -> dict[int, float]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch("SELECT n, started FROM bench_event_starts WHERE n = ANY($1)",
                                list(wanted))
        stamps = {r["n"]: r["started"] for r in rows}
        if len(stamps) >= len(wanted):
            return stamps
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted) - len(stamps)} of {len(wanted)} events "
                               f"not handled in {timeout} s")
        await asyncio.sleep(0.1)


async def measure(url: str, count: int, outbox: int) -> dict[str, Any]:
    app = app_module()
    runners = []
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(app.STARTS_TABLE)
        runners.append(await start_runner(url, app=APP))
        runners.append(await start_runner(url, app=APP))
        async with covey.Cluster(caller_config(url), client_only=True) as caller:
            await wait_balanced(conn, caller, runners)
            sent: dict[int, float] = {}
            calls: list[float] = []
            log(f"{WARMUP} warm-up events, then {count} events one at a time...")
            for n in range(-WARMUP, count):
                event = app.Stamped(n=n, k=f"k{n % KEYS}")
                before = time.time()
                await caller.publish(event)
                after = time.time()
                if n >= 0:
                    sent[n] = before
                    calls.append(after - before)
                await asyncio.sleep(PAUSE)
            stamps = await wait_stamps(conn, set(sent))
            direct = [stamps[n] - t for n, t in sent.items()]
            log(f"{outbox} events inside the bench's own transactions...")
            committed: dict[int, float] = {}
            for i in range(outbox):
                n = 1_000_000 + i
                async with conn.transaction():
                    await caller.publish(app.Stamped(n=n, k=f"k{n % KEYS}"), transaction=conn)
                    committed[n] = time.time()  # the block's exit is the COMMIT
                await asyncio.sleep(0.01)
            stamps = await wait_stamps(conn, set(committed))
            via_outbox = [stamps[n] - t for n, t in committed.items()]
    finally:
        await conn.close()
        await stop_runners(runners)
    return {
        "events": count, "keys": KEYS, "warmup": WARMUP,
        "p50_ms": ms(direct, 0.5), "p99_ms": ms(direct, 0.99), "max_ms": ms(direct, 1.0),
        "publish_p50_ms": ms(calls, 0.5), "publish_p99_ms": ms(calls, 0.99),
        "outbox_events": outbox, "outbox_p50_ms": ms(via_outbox, 0.5),
        "outbox_p99_ms": ms(via_outbox, 0.99),
    }


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url, 300 if quick else 1000, 100 if quick else 300)
    result.update(scenario="events-latency", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets=TARGETS)
    return result
