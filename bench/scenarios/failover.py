"""Failover: how long a runner's entities are unavailable after it is SIGKILLed.

Two runner processes (default settings, 300 shards) and a client-only caller.
Each round picks the victim (alternately the first and second runner), finds
``HELD`` entity ids the victim owns, and sends each a persisted ``Bench.hold``
that stays pending on the victim. Then the victim is killed, and the clock runs
from the signal until BOTH

* every shard is re-owned by the survivor (polled: the scratch database's
  granted advisory locks are ``shards`` locks held by a single backend), and
* the first of the pending calls returns to the caller (re-run on the survivor).

``median_s`` is the median of those samples over ``kills`` rounds (5; 2 with
``--quick``). Also reported per round: ``owned_s``, ``first_call_s``,
``new_call_s`` (a persisted call to another victim entity issued right after the
signal) and, from the survivor's INFO log, when it saw the membership change and
when it acquired the shards. A replacement runner is started between rounds and
the shards are balanced again before the next kill.

``handoff`` is the same with SIGTERM (graceful stop): the held handlers return
on the victim when it starts shutting down, as in-flight work should.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from dataclasses import dataclass
from typing import Any

import asyncpg

import covey
from covey.core.runtime import shard_for

from ._runners import (
    SHARDS,
    Bench,
    Runner,
    bench_app,
    cluster_of_two,
    log,
    scratch_database,
    server_settings,
    shard_locks,
    start_runner,
    wait_balanced,
    wait_until,
)

HELD = 8
CALL_TIMEOUT = 60.0
PENDING_SQL = "SELECT count(*) FROM covey.messages WHERE NOT processed AND tag = 'hold'"
REPLIED_SQL = (  # when the first held message of a round got its reply stored (epoch s)
    "SELECT min(processed_at) FROM covey.messages WHERE tag = 'hold' AND entity_id LIKE $1"
)


@dataclass
class Round:
    caller: covey.Cluster
    conn: asyncpg.Connection
    runners: list[Runner]
    number: int


def victim_entities(caller: covey.Cluster, victim: str, prefix: str, count: int) -> list[str]:
    """``count`` entity ids whose shard the caller's assignment gives ``victim``."""
    ids: list[str] = []
    n = 0
    while len(ids) < count:
        entity_id = f"{prefix}{n}"
        shard = shard_for(entity_id, caller.config.shards)
        if str(caller.sharding.assignment[shard]) == victim:
            ids.append(entity_id)
        n += 1
    return ids


async def timed(call: Any) -> tuple[float, Any]:
    result = await call
    return time.monotonic(), result


def hold(caller: covey.Cluster, entity_id: str, victim: str) -> asyncio.Task[tuple[float, Any]]:
    client = caller.client(Bench, entity_id, timeout=CALL_TIMEOUT)
    return asyncio.create_task(timed(client.hold(bench_app.Hold(block_on=victim))))


async def wait_owned_by_one(conn: asyncpg.Connection, shards: int) -> float:
    """Poll until ``shards`` advisory locks are held by one backend; monotonic time."""
    while True:
        locks = await shard_locks(conn)
        if len(locks) == 1 and sum(locks.values()) == shards:
            return time.monotonic()
        await asyncio.sleep(0.01)


async def one_round(r: Round, sig: int) -> dict[str, Any]:
    victim, survivor = r.runners[r.number % 2], r.runners[1 - r.number % 2]
    held = victim_entities(r.caller, victim.address, f"h{r.number}-", HELD)
    calls = [hold(r.caller, entity_id, victim.address) for entity_id in held]

    async def stored() -> bool:
        return bool(await r.conn.fetchval(PENDING_SQL) >= HELD)

    await wait_until(stored, 10)
    await asyncio.sleep(0.3)  # stored; give the pushes a moment to reach the victim
    fresh = victim_entities(r.caller, victim.address, f"n{r.number}-", 1)[0]
    wall, started = time.time(), time.monotonic()
    victim.signal(sig)
    new_call = hold(r.caller, fresh, victim.address)
    owned_at = await asyncio.wait_for(wait_owned_by_one(r.conn, r.caller.config.shards),
                                      CALL_TIMEOUT)
    results = await asyncio.wait_for(asyncio.gather(*calls, new_call), CALL_TIMEOUT)
    first = min(t for t, _ in results[:-1])
    sample = {
        "sample_s": round(max(owned_at, first) - started, 3),
        "owned_s": round(owned_at - started, 3),
        "first_call_s": round(first - started, 3),
        "new_call_s": round(results[-1][0] - started, 3),
        "first_reply_stored_s": round(
            float(await r.conn.fetchval(REPLIED_SQL, f"h{r.number}-%")) - wall, 3),
        "ran_on_victim": sum(1 for _, where in results if where == victim.address),
    }
    sample.update(survivor_log(survivor, wall))
    for who, runner in (("victim", victim), ("survivor", survivor)):
        for stamp, line in runner.log_after(wall - 0.5):  # incl. the holds starting
            log(f"    {who} +{stamp - wall:.3f}s {line[24:]}")
    return sample


def survivor_log(survivor: Runner, wall: float) -> dict[str, Any]:
    """Seconds from the signal to the survivor's membership and acquire log lines."""
    out: dict[str, Any] = {}
    for stamp, line in survivor.log_after(wall - 0.002):  # log stamps are ms-truncated
        if "membership:" in line and "log_membership_s" not in out:
            out["log_membership_s"] = round(stamp - wall, 3)
        elif "acquired" in line and "log_membership_s" in out:
            out["log_acquired_s"] = round(stamp - wall, 3)
            break
    return out


async def replace_victim(r: Round, url: str) -> float:
    """Reap the victim, start a replacement, wait until balanced; seconds taken."""
    index = r.number % 2
    victim = r.runners[index]
    await victim.wait(60)
    if victim.pump is not None:
        await asyncio.wait_for(victim.pump, 10)
    r.runners[index] = await start_runner(url)
    return await wait_balanced(r.conn, r.caller, r.runners)


async def rounds(url: str, sig: int, kills: int) -> list[dict[str, Any]]:
    samples = []
    async with cluster_of_two(url) as (runners, caller):
        conn = await asyncpg.connect(url)
        try:
            for number in range(kills):
                r = Round(caller, conn, runners, number)
                sample = await one_round(r, sig)
                log(f"  round {number + 1}/{kills}: {sample}")
                sample["rebalance_s"] = round(await replace_victim(r, url), 3)
                samples.append(sample)
        finally:
            await conn.close()
    return samples


async def measure(name: str, sig: int, quick: bool) -> dict[str, Any]:
    kills = 2 if quick else 5
    settings = await server_settings()
    log(f"{name}: {kills} rounds of {signal.Signals(sig).name}...")
    async with scratch_database() as url:
        samples = await rounds(url, sig, kills)
    return {
        "scenario": name,
        "quick": quick,
        "signal": signal.Signals(sig).name,
        "kills": kills,
        "median_s": round(statistics.median(s["sample_s"] for s in samples), 3),
        "median_owned_s": round(statistics.median(s["owned_s"] for s in samples), 3),
        "median_first_call_s": round(statistics.median(s["first_call_s"] for s in samples), 3),
        "median_new_call_s": round(statistics.median(s["new_call_s"] for s in samples), 3),
        "samples": samples,
        "held_per_round": HELD,
        "shards": SHARDS,
        "cpus": os.cpu_count(),
        "postgres": settings,
    }


async def run(quick: bool) -> dict[str, Any]:
    return await measure("failover", signal.SIGKILL, quick)
