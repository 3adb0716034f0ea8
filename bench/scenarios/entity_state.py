"""Persisted RPC with durable state and an app write vs. the same work by hand.

Two runner processes serve ``bench.apps.state_bench_app`` (300 shards on a
scratch PostgreSQL database); this process is a client-only caller. The call is
``Wallet.add`` over 1000 entity ids: a keyed persisted RPC that changes typed
durable state and inserts one row into the application's table through
``ctx.transaction`` (state, row and reply commit in one fenced transaction).

* ``p50_ms`` / ``p99_ms``: sequential calls (concurrency 1) after a warm-up that
  activates every entity.
* ``calls_per_s``: 64 concurrent callers over a fixed window (median of the
  windows).
* ``raw_txn_per_s``: the same work hand-written as one plain asyncpg transaction
  per call (UPDATE the entity's state row, INSERT the app row and an
  idempotency-ledger row), 64 concurrent tasks over a pool of covey's default
  size (10), same window length (median of the windows).
* covey's and the raw windows alternate (covey, raw, raw, covey, ...) in the
  same run, so a drift of the shared machine hits both sides; ``ratio`` is the
  median over the pairs of neighbouring windows of ``covey / raw``
  (``ratios``, ``windows_covey`` and ``windows_raw`` show every window).
* ``effects_rows`` / ``calls_total``: every call covey answered left exactly one
  app row (a check, not a speed).
"""

from __future__ import annotations

import importlib
import itertools
import os
import statistics
from typing import Any

import asyncpg

import covey

from ._runners import (
    cluster_of_two,
    log,
    scratch_database,
    server_settings,
)
from .volatile_rpc import CONCURRENCY, ENTITIES, Call, latency, shape, throughput

APP = "bench.apps.state_bench_app:cluster"
state_app: Any = importlib.import_module("bench.apps.state_bench_app")
POOL_SIZE = 10  # covey's default StorageOptions.pool_size
TARGETS = {"ratio": 1.0, "p50_ms": 5.0}
RAW_TABLES = """
CREATE TABLE raw_state (entity text PRIMARY KEY, balance int NOT NULL,
                        last_key text NOT NULL, version int NOT NULL);
CREATE TABLE raw_effects (entity text NOT NULL, key text NOT NULL, amount int NOT NULL);
CREATE TABLE raw_ledger (key text PRIMARY KEY, entity text NOT NULL, reply int NOT NULL);
"""
RAW_STATE = ("UPDATE raw_state SET balance = balance + $2, last_key = $3, version = version + 1"
             " WHERE entity = $1 RETURNING balance")
RAW_EFFECT = "INSERT INTO raw_effects (entity, key, amount) VALUES ($1, $2, $3)"
RAW_LEDGER = "INSERT INTO raw_ledger (key, entity, reply) VALUES ($1, $2, $3)"


def add_call(caller: covey.Cluster, answered: list[int]) -> Call:
    clients = [caller.client(state_app.Wallet, f"w{n}") for n in range(ENTITIES)]
    keys = itertools.count()

    async def call(n: int) -> Any:
        balance = await clients[n % ENTITIES].add(state_app.Add(key=f"k{next(keys)}"))
        answered[0] += 1
        return balance

    return call


class Raw:
    """The hand-written baseline: UPDATE state + INSERT app row + INSERT ledger row
    per transaction, on a pool of covey's default size."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: asyncpg.Pool | None = None
        self.keys = itertools.count()

    async def __aenter__(self) -> Raw:
        self.pool = await asyncpg.create_pool(self.url, min_size=POOL_SIZE, max_size=POOL_SIZE)
        await self.pool.execute(RAW_TABLES)
        await self.pool.executemany("INSERT INTO raw_state VALUES ($1, 0, '', 0)",
                                    [(f"w{n}",) for n in range(ENTITIES)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def call(self, n: int) -> None:
        assert self.pool is not None
        entity, key = f"w{n % ENTITIES}", f"k{next(self.keys)}"
        async with self.pool.acquire() as conn, conn.transaction():
            balance = await conn.fetchval(RAW_STATE, entity, 1, key)
            await conn.execute(RAW_EFFECT, entity, key, 1)
            await conn.execute(RAW_LEDGER, key, entity, balance)


def windows(quick: bool) -> tuple[int, float, float]:
    """(pairs of throughput windows, warm-up s, window s)."""
    return (2, 1.0, 3.0) if quick else (4, 1.0, 5.0)


async def measure(caller: covey.Cluster, url: str, quick: bool) -> dict[str, Any]:
    count = shape(quick)[0]
    pairs, warmup, window = windows(quick)
    answered = [0]
    call = add_call(caller, answered)
    log(f"entity-state latency ({count} sequential calls)...")
    result = await latency(call, count, warmup=ENTITIES + 200)
    log(f"  {result}\nthroughput: {pairs} pairs of {window}s windows, covey and raw "
        f"alternating, {CONCURRENCY} callers each...")
    covey_runs: list[dict[str, Any]] = []
    raw_runs: list[dict[str, Any]] = []
    async with Raw(url) as raw:
        for pair in range(pairs):
            # which side goes first alternates: a drift of the machine favours neither
            for side in ("covey", "raw") if pair % 2 == 0 else ("raw", "covey"):
                if side == "covey":
                    covey_runs.append(await throughput(call, warmup, window))
                else:
                    raw_runs.append(await throughput(raw.call, warmup, window))
            log(f"  pair {pair}: covey {covey_runs[-1]['calls_per_s']} calls/s, "
                f"raw {raw_runs[-1]['calls_per_s']} txn/s")
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM bench_effects")
    finally:
        await conn.close()
    ratios = [c["calls_per_s"] / r["calls_per_s"]
              for c, r in zip(covey_runs, raw_runs, strict=True)]
    result.update(
        effects_rows=int(rows), calls_total=answered[0],
        calls_per_s=statistics.median(c["calls_per_s"] for c in covey_runs),
        calls=sum(c["calls"] for c in covey_runs),
        raw_txn_per_s=statistics.median(r["calls_per_s"] for r in raw_runs),
        raw_txns=sum(r["calls"] for r in raw_runs),
        ratio=round(statistics.median(ratios), 2),
        ratios=[round(x, 2) for x in ratios],
        windows_covey=[c["calls_per_s"] for c in covey_runs],
        windows_raw=[r["calls_per_s"] for r in raw_runs],
        warmup_s=warmup, window_s=window, window_pairs=pairs,
    )
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(state_app.TABLE)
        finally:
            await conn.close()
        async with cluster_of_two(url, app=APP) as (runners, caller):
            result = await measure(caller, url, quick)
    result.update(
        scenario="entity-state", quick=quick, concurrency=CONCURRENCY, entities=ENTITIES,
        runners=len(runners), shards=caller.config.shards, raw_pool_size=POOL_SIZE,
        targets=TARGETS, cpus=os.cpu_count(), postgres=settings,
    )
    return result
