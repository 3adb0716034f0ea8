"""PostgreSQL-only behaviour: advisory-lock loss, lock timeouts, group commit,
concurrent migrations and the lock connection's keepalive settings."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from covey.core import (
    EntityAddress,
    FencedOut,
    RunnerAddress,
    ShardId,
    StorageOptions,
    TestClock,
)
from covey.storage import Fence, Message, Reply, Saved
from covey.storage.postgres import PostgresStorage

pytestmark = pytest.mark.postgres

Make = Callable[..., Awaitable[PostgresStorage]]
A = RunnerAddress("10.0.0.1", 7001)
B = RunnerAddress("10.0.0.2", 7001)


@pytest.fixture
def pg_url(pg_database: str) -> str:
    # A sync fixture: pg_database uses asyncio.run() and must be set up outside
    # the test's event loop.
    return pg_database


@pytest.fixture
def schema() -> str:
    return f"it_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make(pg_url: str, schema: str) -> AsyncIterator[Make]:
    opened: list[PostgresStorage] = []
    clock = TestClock()

    async def make(start: bool = True, **options: Any) -> PostgresStorage:
        storage = PostgresStorage(
            pg_url,
            shards=16,
            options=StorageOptions(schema=schema, pool_size=4, **options),
            clock=clock,
        )
        opened.append(storage)
        if start:
            await storage.start()
        return storage

    yield make
    for storage in reversed(opened):
        await storage.close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _message(n: int, shard: int = 1) -> Message:
    return Message(
        id=n, address=EntityAddress("Counter", f"c{n}", ShardId("default", shard)),
        tag="Increment", payload=b"x",
    )


async def test_lost_lock_connection_loses_the_shards(make: Make, pg_url: str) -> None:
    a, b = await make(), await make()
    shards = {ShardId("default", 1), ShardId("default", 2)}
    held = await a.runners.acquire(A, shards)
    assert set(held) == shards
    assert await b.runners.acquire(B, shards) == {}  # held by A's session
    await a.messages.save_request(_message(1))

    admin = await asyncpg.connect(pg_url)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = $1",
            f"covey-lock:{A}",
        )
    finally:
        await admin.close()
    assert killed == 1

    assert await a.runners.refresh(A, shards) == set()
    taken = await b.runners.acquire(B, shards)
    assert set(taken) == shards
    assert all(taken[s] > held[s] for s in shards)
    with pytest.raises(FencedOut):
        await a.messages.save_reply(Reply(1, b"late"), Fence(ShardId("default", 1), held[
            ShardId("default", 1)]))
    # A re-acquires on a fresh connection only what B does not hold.
    assert await a.runners.acquire(A, shards | {ShardId("default", 3)}) == {
        ShardId("default", 3): 1
    }


async def test_hung_lock_operation_is_bounded_by_lock_timeout(
    make: Make, pg_url: str, schema: str
) -> None:
    storage = await make(lock_timeout=0.5)
    shard = ShardId("default", 5)
    blocker = await asyncpg.connect(pg_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # The epoch bump of acquire must wait for this lock: the operation hangs.
        await blocker.execute(f'LOCK TABLE "{schema}".shards IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        assert await storage.runners.acquire(A, {shard}) == {}
        assert time.monotonic() - started < 3.0
        assert await storage.runners.refresh(A, {shard}) == set()
        await tx.rollback()
    finally:
        await blocker.close()
    # The next acquire opens a fresh connection. The abandoned backend may hold the
    # try-lock until it notices its client is gone, so allow it a moment.
    deadline = time.monotonic() + 10
    held: dict[ShardId, int] = {}
    while not held and time.monotonic() < deadline:
        held = await storage.runners.acquire(A, {shard})
        if not held:
            await asyncio.sleep(0.1)
    assert shard in held


async def test_group_commit_batches_concurrent_writes(make: Make) -> None:
    storage = await make()
    assert storage.batcher is not None
    before_batches, before_ops = storage.batcher.batches, storage.batcher.ops
    results = await asyncio.gather(
        *(storage.messages.save_request(_message(n, shard=n % 16 + 1)) for n in range(1, 401))
    )
    assert all(isinstance(r, Saved) for r in results)
    ops = storage.batcher.ops - before_ops
    batches = storage.batcher.batches - before_batches
    assert ops == 400
    assert batches < ops / 4, (batches, ops)


async def test_concurrent_starts_migrate_once(make: Make, pg_url: str, schema: str) -> None:
    stores = [await make(start=False) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(f'SELECT version FROM "{schema}".covey_migrations ORDER BY 1')
    finally:
        await conn.close()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    infos = [await s.info() for s in stores]
    assert {i.schema_version for i in infos} == {4}


async def test_lock_connection_has_keepalives(make: Make) -> None:
    storage = await make()
    await storage.runners.acquire(A, {ShardId("default", 1)})
    conn = storage._runners._sessions[A].conn
    assert await conn.fetchval("SHOW tcp_keepalives_idle") == "5"
    assert await conn.fetchval("SHOW tcp_keepalives_interval") == "2"
    assert await conn.fetchval("SHOW tcp_keepalives_count") == "3"
    assert await conn.fetchval("SHOW tcp_user_timeout") == "10000"
    assert await conn.fetchval("SHOW application_name") == f"covey-lock:{A}"
    sock = conn._transport.get_extra_info("socket")
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    await storage.runners.release_all(A)
    assert conn.is_closed()
