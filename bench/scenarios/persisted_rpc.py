"""Persisted entity RPC through real runner processes vs. plain transactions.

Same set-up as ``volatile-rpc`` (two runner processes, client-only caller,
1000 entity ids, 300 shards, scratch PostgreSQL database). A persisted call is
stored by the caller (group commit), pushed to the owning runner, run, and
completed there with a fenced reply write before the caller gets the reply.

* ``p50_ms`` / ``p99_ms`` / ``calls_per_s``: ``Bench.put`` (``persisted=True``),
  sequential after a warm-up, and 64 concurrent callers over a fixed window.
* ``keyed_*``: the same for ``Bench.put_keyed`` (with a ``primary_key``; every
  call uses a fresh key, so no call is a duplicate).
* ``raw_txn_per_s``: one plain asyncpg transaction per message (INSERT the
  message, UPDATE it processed with a reply) on a table of similar shape, 64
  concurrent tasks over a pool of covey's default size (10), same window,
  measured in the same run. ``ratio`` = ``calls_per_s / raw_txn_per_s``.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import asyncpg

import covey

from ._runners import Bench, bench_app, cluster_of_two, log, scratch_database, server_settings
from .volatile_rpc import CONCURRENCY, ENTITIES, Call, latency, shape, throughput

POOL_SIZE = 10  # covey's default StorageOptions.pool_size
RAW_TABLE = """
CREATE TABLE raw_messages (
    id bigint PRIMARY KEY, entity_type text NOT NULL, entity_id text NOT NULL,
    shard int NOT NULL, tag text NOT NULL, payload bytea NOT NULL,
    created_at double precision NOT NULL, processed bool NOT NULL DEFAULT false,
    processed_at double precision, reply bytea
);
CREATE INDEX raw_messages_unprocessed ON raw_messages (shard, id) WHERE NOT processed;
"""
RAW_INSERT = (
    "INSERT INTO raw_messages (id, entity_type, entity_id, shard, tag, payload, created_at)"
    " VALUES ($1, 'Bench', $2, $3, 'put', $4, $5)"
)
RAW_COMPLETE = (
    "UPDATE raw_messages SET processed = true, processed_at = $2, reply = $3 WHERE id = $1"
)


def put_call(caller: covey.Cluster, keyed: bool) -> Call:
    clients = [caller.client(Bench, f"p{n}") for n in range(ENTITIES)]
    keys = itertools.count()

    async def call(n: int) -> Any:
        client = clients[n % ENTITIES]
        cmd = bench_app.Put(key=f"k{next(keys)}")
        return await (client.put_keyed(cmd) if keyed else client.put(cmd))

    return call


async def raw(url: str, warmup: float, window: float) -> dict[str, Any]:
    """INSERT + UPDATE per transaction, ``CONCURRENCY`` tasks, ``POOL_SIZE`` connections."""
    pool = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    ids = itertools.count(1)

    async def call(n: int) -> None:
        message_id, now = next(ids), time.time()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(RAW_INSERT, message_id, f"p{n % ENTITIES}", n % 300,
                               b"\x81\xa3key\xa4k123", now)
            await conn.execute(RAW_COMPLETE, message_id, now, b"\x01")

    try:
        await pool.execute(RAW_TABLE)
        result = await throughput(call, warmup, window)
    finally:
        await pool.close()
    return {"raw_txn_per_s": result["calls_per_s"], "raw_txns": result["calls"]}


async def measure(caller: covey.Cluster, url: str, quick: bool) -> dict[str, Any]:
    count, warmup, window = shape(quick)
    result: dict[str, Any] = {}
    for prefix, keyed in (("", False), ("keyed_", True)):
        call = put_call(caller, keyed)
        log(f"persisted {prefix or 'plain '}latency ({count} sequential calls)...")
        part = await latency(call, count, warmup=ENTITIES + 200)
        log(f"  {part}\npersisted {prefix}throughput ({window}s window)...")
        part.update(await throughput(call, warmup, window))
        log(f"  {part['calls_per_s']} calls/s")
        result.update({prefix + k: v for k, v in part.items()})
    log(f"raw transactions ({window}s window)...")
    result.update(await raw(url, warmup, window))
    log(f"  {result['raw_txn_per_s']} txn/s")
    result["ratio"] = round(result["calls_per_s"] / result["raw_txn_per_s"], 2)
    result.update(warmup_s=warmup, window_s=window)
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url, cluster_of_two(url) as (runners, caller):
        result = await measure(caller, url, quick)
    result.update(
        scenario="persisted-rpc", quick=quick, concurrency=CONCURRENCY, entities=ENTITIES,
        runners=len(runners), shards=caller.config.shards, raw_pool_size=POOL_SIZE,
        cpus=os.cpu_count(), postgres=settings,
    )
    return result
