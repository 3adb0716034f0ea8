"""Cron accuracy: how late a 1-second cluster cron runs, and exactly-once.

Two runner processes (default settings, 300 shards) serving
``bench.apps.sched_bench_app``, whose cron ``every-second`` (``* * * * * *``)
records per scheduled instant the runner and ``time.time()`` on entry; a second
run of an instant counts as a duplicate. Once the runners are balanced the
window runs for 60 s (30 s with ``--quick``), then 2 s more for the last ticks
to land.

Over the instants of the window (whole seconds within it): ``late_p50_ms`` /
``late_p99_ms`` / ``late_max_ms`` (start time minus scheduled instant),
``ticks`` (instants that ran), ``missed`` (instants with no run, the first and
last second excluded), ``duplicates`` (extra runs, over the whole run).
``covey_late_*`` is the same from covey's own ``tick.lateness``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import asyncpg

import covey

from ._runners import (
    SHARDS,
    Runner,
    caller_config,
    log,
    percentile,
    scratch_database,
    server_settings,
    stop_runners,
    wait_balanced,
)
from .singleton_failover import create_tables, start_sched_runner

RUNNERS = 2
SETTLE_S = 2.0


async def window(url: str, seconds: float) -> tuple[float, float, list[asyncpg.Record], int]:
    await create_tables(url)
    runners: list[Runner] = []
    try:
        for _ in range(RUNNERS):
            runners.append(await start_sched_runner(url))
        async with covey.Cluster(caller_config(url), client_only=True) as caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
                start = time.time()
                log(f"  balanced; measuring {seconds:.0f} s...")
                await asyncio.sleep(seconds)
                end = time.time()
                await asyncio.sleep(SETTLE_S)
                rows = await conn.fetch(
                    "SELECT instant, runner, started, lateness FROM cron_runs"
                    " WHERE instant >= $1 AND instant <= $2 ORDER BY instant",
                    float(math.ceil(start)), float(math.floor(end)))
                dupes = await conn.fetchval("SELECT coalesce(sum(dupes), 0) FROM cron_runs")
            finally:
                await conn.close()
    finally:
        await stop_runners(runners)
    for runner in runners:
        for _, line in runner.lines:
            if "WARNING" in line or "ERROR" in line or "cron" in line:
                log(f"    {runner.address}: {line.rstrip()}")
    return start, end, rows, int(dupes)


async def run(quick: bool) -> dict[str, Any]:
    seconds = 30.0 if quick else 60.0
    settings = await server_settings()
    log(f"cron-accuracy: {RUNNERS} runners, {seconds:.0f} s of a 1-second cron...")
    async with scratch_database() as url:
        start, end, rows, dupes = await window(url, seconds)
    first, last = math.ceil(start), math.floor(end)
    ran = {round(r["instant"]) for r in rows}
    missed = [s for s in range(first + 1, last) if s not in ran]
    late = [(r["started"] - r["instant"]) * 1000 for r in rows]
    covey_late = [r["lateness"] * 1000 for r in rows]
    per_runner: dict[str, int] = {}
    for r in rows:
        per_runner[r["runner"]] = per_runner.get(r["runner"], 0) + 1
    return {
        "scenario": "cron-accuracy",
        "quick": quick,
        "window_s": seconds,
        "ticks": len(rows),
        "missed": len(missed),
        "duplicates": dupes,
        "late_p50_ms": round(percentile(late, 0.5), 2) if late else None,
        "late_p99_ms": round(percentile(late, 0.99), 2) if late else None,
        "late_max_ms": round(max(late), 2) if late else None,
        "late_min_ms": round(min(late), 2) if late else None,
        "covey_late_p50_ms": round(percentile(covey_late, 0.5), 2) if late else None,
        "covey_late_p99_ms": round(percentile(covey_late, 0.99), 2) if late else None,
        "runs_per_runner": sorted(per_runner.values()),
        "runners": RUNNERS,
        "shards": SHARDS,
        "cpus": os.cpu_count(),
        "postgres": settings,
    }
