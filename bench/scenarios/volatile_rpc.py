"""Volatile entity RPC through real runner processes.

Two ``covey run`` runner processes serve ``bench.apps.bench_app`` (300 shards on
a scratch PostgreSQL database); this process is a client-only caller. The call
is ``Bench.echo("ping")`` (small payload, the handler returns at once) over
1000 entity ids, so both runners serve calls.

* ``p50_ms`` / ``p99_ms``: sequential calls (concurrency 1) after a warm-up that
  activates every entity and opens the connections.
* ``calls_per_s``: 64 concurrent callers over a fixed window.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import covey

from ._runners import Bench, cluster_of_two, log, percentile, scratch_database, server_settings

ENTITIES = 1000
CONCURRENCY = 64

Call = Callable[[int], Awaitable[Any]]


def echo_call(caller: covey.Cluster) -> Call:
    clients = [caller.client(Bench, f"e{n}") for n in range(ENTITIES)]

    async def call(n: int) -> Any:
        return await clients[n % ENTITIES].echo("ping")

    return call


async def latency(call: Call, count: int, warmup: int) -> dict[str, Any]:
    """Sequential calls: warm-up (untimed), then ``count`` timed ones."""
    for n in range(warmup):
        await call(n)
    samples = []
    for n in range(count):
        started = time.perf_counter()
        await call(n)
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(percentile(samples, 0.5), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "latency_samples": count,
    }


async def throughput(call: Call, warmup: float, window: float,
                     concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """``concurrency`` callers in a loop; calls completed inside the window."""
    completed = 0
    measuring = False
    stop = False
    counter = iter(range(10**12))

    async def worker() -> None:
        nonlocal completed
        while not stop:
            await call(next(counter))
            if measuring:
                completed += 1

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    started = time.perf_counter()
    await asyncio.sleep(window)
    measuring = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return {"calls_per_s": round(completed / elapsed, 1), "calls": completed}


def shape(quick: bool) -> tuple[int, float, float]:
    """(latency calls, throughput warm-up s, throughput window s)."""
    return (500, 1.0, 3.0) if quick else (2000, 2.0, 10.0)


async def run(quick: bool) -> dict[str, Any]:
    count, warmup, window = shape(quick)
    settings = await server_settings()
    async with scratch_database() as url, cluster_of_two(url) as (runners, caller):
        call = echo_call(caller)
        log(f"volatile latency ({count} sequential calls)...")
        result = await latency(call, count, warmup=ENTITIES + 200)
        log(f"  {result}\nvolatile throughput ({window}s window, {CONCURRENCY} callers)...")
        result.update(await throughput(call, warmup, window))
        log(f"  {result['calls_per_s']} calls/s")
    result.update(
        scenario="volatile-rpc", quick=quick, concurrency=CONCURRENCY, entities=ENTITIES,
        runners=len(runners), shards=caller.config.shards, warmup_s=warmup, window_s=window,
        cpus=os.cpu_count(), postgres=settings,
    )
    return result
