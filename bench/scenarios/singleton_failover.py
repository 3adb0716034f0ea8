"""Singleton failover: how long a singleton is down after its runner is SIGKILLed.

Three runner processes (default settings, 300 shards) serving
``bench.apps.sched_bench_app``, whose singleton ``leader`` records one row per
life (runner, ``started``) and updates its ``last_seen`` every ~50 ms. Each round

1. waits until the cluster is stable: a client-only caller sees exactly the
   three runners, their shard locks are balanced, and the singleton's latest
   life has been the same (and beating) for ``STABLE_S`` seconds;
2. SIGKILLs the runner of the latest life (``time.time()`` taken right before
   the signal);
3. polls until a new life appears; the sample is its ``started`` minus the kill
   time (runner and benchmark share one clock).

Then the victim is reaped and a replacement started. ``median_s`` is the median
over ``kills`` rounds (5; 2 with ``--quick``). ``overlaps`` counts consecutive
lives (all of them, including graceful moves when a replacement joins) where the
next started before the previous one's last ``last_seen``: must be 0.

Per round, from the new host's INFO log: when it saw the membership change
(``log_membership_s``), acquired shards (``log_acquired_s``) and started the
singleton (``log_started_s``), all relative to the kill.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import time
from typing import Any

import asyncpg

import covey

from ._runners import (
    SHARDS,
    Runner,
    caller_config,
    log,
    scratch_database,
    server_settings,
    start_runner,
    stop_runners,
    wait_balanced,
    wait_until,
)

APP = "bench.apps.sched_bench_app:cluster"
RUNNERS = 3
STABLE_S = 2.0
FAILOVER_TIMEOUT = 60.0
LATEST_SQL = "SELECT id, runner, started, last_seen FROM singleton_lives ORDER BY id DESC LIMIT 1"


async def start_sched_runner(url: str, timeout: float = 30) -> Runner:
    """A runner of the scheduling app (INFO logging), once it is ready."""
    return await start_runner(url, timeout, app=APP)


async def create_tables(url: str) -> None:
    from bench.apps.sched_bench_app import SCHEMA

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()


async def wait_stable(conn: asyncpg.Connection, caller: covey.Cluster,
                      runners: list[Runner], timeout: float = 60) -> float:
    """Balanced, then the same singleton life beating on a live runner for STABLE_S."""
    started = time.monotonic()
    await wait_balanced(conn, caller, runners, timeout)
    addresses = {r.address for r in runners}
    since: float | None = None
    life_id = None
    while time.monotonic() - started < timeout:
        row = await conn.fetchrow(LATEST_SQL)
        fresh = (row is not None and row["runner"] in addresses
                 and time.time() - row["last_seen"] < 0.5)
        if not fresh or row["id"] != life_id:
            life_id = row["id"] if fresh else None
            since = time.monotonic() if fresh else None
        elif since is not None and time.monotonic() - since >= STABLE_S:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError("singleton not stable in time")


def host_log(runner: Runner, wall: float) -> dict[str, Any]:
    """Seconds from the kill to the new host's membership, acquire and start lines."""
    out: dict[str, Any] = {}
    for stamp, line in runner.log_after(wall - 0.002):  # log stamps are ms-truncated
        if "membership:" in line and "log_membership_s" not in out:
            out["log_membership_s"] = round(stamp - wall, 3)
        elif "acquired" in line and "log_acquired_s" not in out:
            out["log_acquired_s"] = round(stamp - wall, 3)
        elif "singleton leader starts" in line and "log_started_s" not in out:
            out["log_started_s"] = round(stamp - wall, 3)
    return out


async def one_round(conn: asyncpg.Connection, runners: list[Runner],
                    number: int) -> tuple[dict[str, Any], int, float, int]:
    life = await conn.fetchrow(LATEST_SQL)
    index = next(i for i, r in enumerate(runners) if r.address == life["runner"])
    victim = runners[index]
    wall = time.time()
    victim.signal(signal.SIGKILL)

    async def new_life() -> asyncpg.Record | None:
        return await conn.fetchrow(
            "SELECT id, runner, started FROM singleton_lives WHERE id > $1 ORDER BY id LIMIT 1",
            life["id"])

    await wait_until(new_life, FAILOVER_TIMEOUT, interval=0.01)
    seen = time.time()
    new = await new_life()
    assert new is not None
    last_seen = await conn.fetchval("SELECT last_seen FROM singleton_lives WHERE id = $1",
                                    life["id"])
    host = next((r for r in runners if r.address == new["runner"]), None)
    sample: dict[str, Any] = {
        "sample_s": round(new["started"] - wall, 3),
        "observed_s": round(seen - wall, 3),
        "victim_last_seen_s": round(last_seen - wall, 3),  # its last beat, relative to the kill
        "new_host_is_victim": new["runner"] == victim.address,
    }
    if host is not None:
        sample.update(host_log(host, wall))
    return sample, index, wall, life["id"]


async def round_lives(conn: asyncpg.Connection, life_id: int) -> dict[str, Any]:
    """Lives from the victim's to the latest: their count after the victim's, and
    the gaps between consecutive ones (``down_s``: total time without a beating
    singleton, ``max_gap_s``: the longest gap)."""
    rows = await conn.fetch(
        "SELECT started, last_seen FROM singleton_lives WHERE id >= $1 ORDER BY id", life_id)
    gaps = [nxt["started"] - prev["last_seen"] for prev, nxt in itertools.pairwise(rows)]
    return {"lives_after": len(rows) - 1, "down_s": round(sum(gaps), 3),
            "max_gap_s": round(max(gaps), 3)}


def relisted(survivors: list[Runner], victim: str, wall: float) -> int:
    """Membership lines of the survivors, after the kill, that list the dead victim."""
    return sum(1 for r in survivors for _, line in r.log_after(wall - 0.002)
               if "membership:" in line and victim in line)


async def overlaps(conn: asyncpg.Connection) -> tuple[int, int]:
    rows = await conn.fetch("SELECT started, last_seen FROM singleton_lives ORDER BY id")
    bad = sum(1 for prev, nxt in itertools.pairwise(rows)
              if nxt["started"] < prev["last_seen"])
    return bad, len(rows)


async def rounds(url: str, kills: int) -> tuple[list[dict[str, Any]], int, int]:
    await create_tables(url)
    runners: list[Runner] = []
    samples: list[dict[str, Any]] = []
    try:
        for _ in range(RUNNERS):  # one at a time: the first migrates the schema
            runners.append(await start_sched_runner(url))
        async with covey.Cluster(caller_config(url), client_only=True) as caller:
            conn = await asyncpg.connect(url)
            try:
                log(f"  stable after {await wait_stable(conn, caller, runners):.2f} s")
                for number in range(kills):
                    sample, index, wall, life_id = await one_round(conn, runners, number)
                    victim = runners[index]
                    survivors = [r for r in runners if r is not victim]
                    await victim.wait(30)
                    if victim.pump is not None:
                        await asyncio.wait_for(victim.pump, 10)
                    runners[index] = await start_sched_runner(url)
                    sample["restabilise_s"] = round(await wait_stable(conn, caller, runners), 3)
                    sample.update(await round_lives(conn, life_id))
                    sample["victim_relisted"] = relisted(survivors, victim.address, wall)
                    for runner in survivors:
                        for stamp, line in runner.log_after(wall - 0.002):
                            log(f"    {runner.address} +{stamp - wall:.3f}s {line[24:]}")
                    log(f"  round {number + 1}: {sample}")
                    samples.append(sample)
                bad, lives = await overlaps(conn)
            finally:
                await conn.close()
    finally:
        await stop_runners(runners)
    return samples, bad, lives


def median_of(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if key in s]
    return round(statistics.median(values), 3) if values else None


async def run(quick: bool) -> dict[str, Any]:
    kills = 2 if quick else 5
    settings = await server_settings()
    log(f"singleton-failover: {RUNNERS} runners, {kills} SIGKILLs...")
    async with scratch_database() as url:
        samples, bad, lives = await rounds(url, kills)
    return {
        "scenario": "singleton-failover",
        "quick": quick,
        "kills": kills,
        "median_s": round(statistics.median(s["sample_s"] for s in samples), 3),
        "median_log_membership_s": median_of(samples, "log_membership_s"),
        "median_log_started_s": median_of(samples, "log_started_s"),
        "samples": samples,
        "overlaps": bad,
        "lives": lives,
        "runners": RUNNERS,
        "shards": SHARDS,
        "cpus": os.cpu_count(),
        "postgres": settings,
    }
