"""Workflow latency on idle runners: start call -> result of a three-step workflow.

Two runners of ``bench.apps.workflow_bench_app`` on a scratch PostgreSQL
database (300 shards, library defaults); the bench process is a client-only
cluster member. ``bench.noop3`` (three journaled async no-op steps) is started
300 times (100 with ``--quick``) one at a time, each after the previous one's
result, so the runners are idle at every start; 30 warm-up workflows go first
and are not counted. Every workflow has its own ``workflow_id``, so the
executions land on both runners.

* ``p50_ms`` / ``p99_ms`` / ``max_ms``: ``time.perf_counter()`` before
  ``cluster.start`` -> ``await handle.result()`` returned (the whole round trip:
  store the execution, run it on its owner with three journaled steps, store
  the outcome, deliver the reply to the bench process).
* ``start_p50_ms`` / ``start_p99_ms``: the ``start`` call alone.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ._runners import caller_config, log, percentile, scratch_database, server_settings
from .workflow_throughput import workflow_cluster

WARMUP = 30
TARGETS = {"p50_ms": 5.0, "p99_ms": 15.0}


def ms(samples: list[float], q: float) -> float:
    return round(percentile(samples, q) * 1000, 2)


async def measure(url: str, count: int) -> dict[str, Any]:
    totals: list[float] = []
    starts: list[float] = []
    async with workflow_cluster(url) as (_, caller, workflows):
        noop3 = workflows["noop3"]
        log(f"{WARMUP} warm-up workflows, then {count} one at a time...")
        for n in range(-WARMUP, count):
            before = time.perf_counter()
            handle = await caller.start(noop3, n, workflow_id=f"lat{n}")
            started = time.perf_counter()
            value = await handle.result(timeout=30.0)
            done = time.perf_counter()
            if value != n + 3:
                raise RuntimeError(f"workflow lat{n} returned {value!r}, not {n + 3}")
            if n >= 0:
                totals.append(done - before)
                starts.append(started - before)
    result = {
        "count": count, "warmup": WARMUP,
        "p50_ms": ms(totals, 0.5), "p99_ms": ms(totals, 0.99), "max_ms": ms(totals, 1.0),
        "start_p50_ms": ms(starts, 0.5), "start_p99_ms": ms(starts, 0.99),
    }
    log(f"  {result}")
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url, 100 if quick else 300)
    result.update(scenario="workflow-latency", quick=quick, runners=2,
                  shards=caller_config("x").shards, cpus=os.cpu_count(), postgres=settings,
                  targets=TARGETS)
    return result
