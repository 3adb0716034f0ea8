"""Storage throughput: persisted round trips through covey vs. plain transactions.

* ``persisted_roundtrip_per_s``: 64 producers each ``save_request`` a message and
  wait for its reply; one consumer loop (like a runner's storage loop) leases
  ``unprocessed`` messages and completes each with a fenced ``save_reply``
  (concurrently, so group commit batches them).
* ``raw_txn_per_s``: the same three statements (insert, lease, complete) as one
  plain asyncpg transaction per message, 64 concurrent tasks, same pool size,
  same table shape.
* ``save_request_p50_ms`` / ``_p99_ms``: sequential ``save_request`` calls.

Runs against ``COVEY_TEST_DATABASE_URL`` in a scratch database dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import time
import uuid
from typing import Any

import asyncpg

from covey.core import EntityAddress, RunnerAddress, ShardId, StorageOptions, SystemClock
from covey.storage import Fence, Message, Reply
from covey.storage.postgres import PostgresStorage

SERVER = os.environ.get("COVEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = 64
SHARDS = 16
POOL_SIZE = 8
RUNNER = RunnerAddress("127.0.0.1", 9000)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{base}/{name}{query}"


def message(n: int) -> Message:
    shard = ShardId("default", n % SHARDS + 1)
    return Message(
        id=n,
        address=EntityAddress("Counter", f"c{n % 1000}", shard),
        tag="Increment",
        payload=b'{"by":1}',
    )


async def persisted(url: str, warmup: float, window: float) -> dict[str, Any]:
    storage = PostgresStorage(
        url, shards=SHARDS, options=StorageOptions(schema="bench", pool_size=POOL_SIZE),
        clock=SystemClock(),
    )
    async with storage:
        shards = [ShardId("default", n) for n in range(1, SHARDS + 1)]
        epochs = await storage.runners.acquire(RUNNER, shards)
        waiting: dict[int, asyncio.Future[None]] = {}
        wake = asyncio.Event()
        ids = itertools.count(1)
        completed = 0
        measuring = False
        stop = False

        async def producer() -> None:
            nonlocal completed
            loop = asyncio.get_running_loop()
            while not stop:
                m = message(next(ids))
                done = waiting[m.id] = loop.create_future()
                await storage.messages.save_request(m)
                wake.set()  # the sender's push to the owner
                await done
                if measuring:
                    completed += 1

        async def complete(m: Message) -> None:
            shard = m.address.shard
            await storage.messages.save_reply(Reply(m.id, b"ok"), Fence(shard, epochs[shard]))
            future = waiting.pop(m.id)
            if not future.done():
                future.set_result(None)

        async def consumer() -> None:
            inflight: set[asyncio.Task[None]] = set()
            while not stop:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 0.05)
                wake.clear()
                for m in await storage.messages.unprocessed(shards, limit=256):
                    task = asyncio.create_task(complete(m))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
            await asyncio.gather(*inflight, return_exceptions=True)

        tasks = [asyncio.create_task(producer()) for _ in range(CONCURRENCY)]
        tasks.append(asyncio.create_task(consumer()))
        await asyncio.sleep(warmup)
        assert storage.batcher is not None
        batches0, ops0 = storage.batcher.batches, storage.batcher.ops
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(window)
        measuring = False
        elapsed = time.perf_counter() - started
        batches = storage.batcher.batches - batches0
        ops = storage.batcher.ops - ops0
        stop = True
        for future in waiting.values():
            if not future.done():
                future.set_result(None)
        wake.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        return {
            "persisted_roundtrip_per_s": round(completed / elapsed, 1),
            "persisted_roundtrips": completed,
            "group_commit_batches": batches,
            "group_commit_ops": ops,
        }


async def raw(url: str, warmup: float, window: float) -> dict[str, Any]:
    # Same table shape: a covey schema of its own, written with plain SQL.
    storage = PostgresStorage(
        url, shards=SHARDS, options=StorageOptions(schema="bench_raw", pool_size=1),
        clock=SystemClock(),
    )
    async with storage:
        pass
    pool = await asyncpg.create_pool(url, min_size=POOL_SIZE, max_size=POOL_SIZE)
    insert = (
        "INSERT INTO bench_raw.messages (id, entity_type, entity_id, shard_group, shard, tag,"
        " payload, headers, primary_key, dedupe_key, deliver_at, priority, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
    lease = (
        "UPDATE bench_raw.messages SET lease_until = $2, attempts = attempts + 1"
        " WHERE id = (SELECT id FROM bench_raw.messages WHERE id = $1 AND NOT processed"
        " FOR UPDATE) RETURNING id, payload"
    )
    finish = (
        "UPDATE bench_raw.messages SET processed = true, processed_at = $2, reply = $3,"
        " reply_is_error = false, lease_until = NULL WHERE id = $1"
    )
    ids = itertools.count(1)
    completed = 0
    measuring = False
    stop = False

    async def worker() -> None:
        nonlocal completed
        while not stop:
            m = message(next(ids))
            now = time.time()
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    insert, m.id, m.address.entity_type, m.address.entity_id,
                    m.address.shard.group, m.address.shard.id, m.tag, m.payload, "{}", None,
                    None, None, 0, now,
                )
                await conn.fetchrow(lease, m.id, now + 30)
                await conn.execute(finish, m.id, now, b"ok")
            if measuring:
                completed += 1

    try:
        tasks = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(window)
        measuring = False
        elapsed = time.perf_counter() - started
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await pool.close()
    return {"raw_txn_per_s": round(completed / elapsed, 1), "raw_txns": completed}


async def latency(url: str, count: int) -> dict[str, Any]:
    storage = PostgresStorage(
        url, shards=SHARDS, options=StorageOptions(schema="bench_latency", pool_size=POOL_SIZE),
        clock=SystemClock(),
    )
    samples: list[float] = []
    async with storage:
        for n in range(1, 51):  # warm the connections and statement caches
            await storage.messages.save_request(message(10_000_000 + n))
        for n in range(1, count + 1):
            started = time.perf_counter()
            await storage.messages.save_request(message(n))
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "save_request_p50_ms": round(samples[len(samples) // 2], 3),
        "save_request_p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "save_request_samples": count,
    }


async def run(quick: bool) -> dict[str, Any]:
    warmup, window, count = (1.0, 3.0, 500) if quick else (3.0, 15.0, 2000)
    name = f"covey_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(SERVER)
    try:
        settings = {
            s: await admin.fetchval(f"SHOW {s}")
            for s in ("server_version", "synchronous_commit", "fsync")
        }
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(SERVER, name)
    try:
        log(f"persisted round trips ({window}s window)...")
        result = await persisted(url, warmup, window)
        log(f"  {result}\nraw transactions ({window}s window)...")
        result.update(await raw(url, warmup, window))
        log(f"  raw {result['raw_txn_per_s']}/s\nsave_request latency ({count} calls)...")
        result.update(await latency(url, count))
    finally:
        admin = await asyncpg.connect(SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    result["ratio"] = round(result["persisted_roundtrip_per_s"] / result["raw_txn_per_s"], 2)
    result.update(
        scenario="storage", quick=quick, concurrency=CONCURRENCY, pool_size=POOL_SIZE,
        shards=SHARDS, warmup_s=warmup, window_s=window, cpus=os.cpu_count(),
        postgres=settings,
    )
    return result
