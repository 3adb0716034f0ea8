"""Persisted RPC with durable state and an app write vs. the same work by hand.

Two runner processes serve ``bench.apps.state_bench_app`` (300 shards on a
scratch PostgreSQL database); this process is a client-only caller. The call is
``Wallet.add`` over 1000 entity ids: a keyed persisted RPC that changes typed
durable state and inserts one row into the application's table through
``ctx.transaction`` (state, row and reply commit in one fenced transaction).

* ``p50_ms`` / ``p99_ms``: sequential calls (concurrency 1) after a warm-up that
  activates every entity.
* ``calls_per_s``: 64 concurrent callers over a fixed window.
* ``raw_txn_per_s``: the same work hand-written as one plain asyncpg transaction
  per call (UPDATE the entity's state row, INSERT the app row and an
  idempotency-ledger row), 64 concurrent tasks over a pool of covey's default
  size (10), same window, measured in the same run. ``ratio`` =
  ``calls_per_s / raw_txn_per_s``.
* ``effects_rows`` / ``calls_total``: every call covey answered left exactly one
  app row (a check, not a speed).
"""

from __future__ import annotations

import importlib
import itertools
import os
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


async def raw(url: str, warmup: float, window: float) -> dict[str, Any]:
    """UPDATE state + INSERT app row + INSERT ledger row per transaction."""
    pool = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    keys = itertools.count()

    async def call(n: int) -> None:
        entity, key = f"w{n % ENTITIES}", f"k{next(keys)}"
        async with pool.acquire() as conn, conn.transaction():
            balance = await conn.fetchval(RAW_STATE, entity, 1, key)
            await conn.execute(RAW_EFFECT, entity, key, 1)
            await conn.execute(RAW_LEDGER, key, entity, balance)

    try:
        await pool.execute(RAW_TABLES)
        await pool.executemany("INSERT INTO raw_state VALUES ($1, 0, '', 0)",
                               [(f"w{n}",) for n in range(ENTITIES)])
        result = await throughput(call, warmup, window)
    finally:
        await pool.close()
    return {"raw_txn_per_s": result["calls_per_s"], "raw_txns": result["calls"]}


async def measure(caller: covey.Cluster, url: str, quick: bool) -> dict[str, Any]:
    count, warmup, window = shape(quick)
    answered = [0]
    call = add_call(caller, answered)
    log(f"entity-state latency ({count} sequential calls)...")
    result = await latency(call, count, warmup=ENTITIES + 200)
    log(f"  {result}\nentity-state throughput ({window}s window, {CONCURRENCY} callers)...")
    result.update(await throughput(call, warmup, window))
    log(f"  {result['calls_per_s']} calls/s\nraw transactions ({window}s window)...")
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM bench_effects")
    finally:
        await conn.close()
    result.update(effects_rows=int(rows), calls_total=answered[0])
    result.update(await raw(url, warmup, window))
    log(f"  {result['raw_txn_per_s']} txn/s")
    result["ratio"] = round(result["calls_per_s"] / result["raw_txn_per_s"], 2)
    result.update(warmup_s=warmup, window_s=window)
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
