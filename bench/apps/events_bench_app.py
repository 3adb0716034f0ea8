"""The events application of the ``events-latency`` and ``events-throughput`` benchmarks.

``python -m covey run bench.apps.events_bench_app:cluster`` (cwd = repo root, the
repo root on ``PYTHONPATH``), configured by ``COVEY_*`` variables. The bench
process (client-only) publishes with its own cluster.

* ``Stamped`` (topic ``bench.latency``), group ``stamp``: the handler takes
  ``time.time()`` first thing and stores it with the event number through
  ``ctx.transaction`` (so it lands once, with the delivery's commit); the
  publisher compares it with its own ``time.time()``: same machine, same clock.
* ``Tick`` (topic ``bench.ticks``), groups ``a`` and ``b``: handlers that do
  nothing (throughput: deliveries completed per second).
"""

from __future__ import annotations

import time

import covey

STARTS_TABLE = ("CREATE TABLE IF NOT EXISTS bench_event_starts"
                " (n int NOT NULL, started float8 NOT NULL)")


class Stamped(covey.Event, topic="bench.latency", key="k"):
    n: int
    k: str


class Tick(covey.Event, topic="bench.ticks", key="k"):
    n: int
    k: str


def declare(cluster: covey.Cluster) -> None:
    @cluster.subscribe(Stamped, group="stamp")
    async def stamp(event: Stamped, ctx: covey.EventContext) -> None:
        started = time.time()
        tx = await ctx.transaction()
        await tx.execute("INSERT INTO bench_event_starts (n, started) VALUES ($1, $2)",
                         event.n, started)

    @cluster.subscribe(Tick, group="a")
    async def tick_a(event: Tick, ctx: covey.EventContext) -> None:
        return None

    @cluster.subscribe(Tick, group="b")
    async def tick_b(event: Tick, ctx: covey.EventContext) -> None:
        return None


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster.from_env()
    declare(cluster)
    return cluster


cluster = make_cluster
