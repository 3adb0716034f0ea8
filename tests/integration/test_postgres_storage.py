"""PostgreSQL-only behaviour: advisory-lock loss, lock timeouts, group commit,
concurrent migrations, the keepalive settings and names of covey's sessions, the
wake-up listener's reconnect and the removal of crashed runners."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

import covey
from covey.core import (
    CoveyConfig,
    EntityAddress,
    FencedOut,
    RunnerAddress,
    ShardId,
    ShardingOptions,
    StorageOptions,
    TestClock,
)
from covey.sharding import LocalNetwork, LocalTransport
from covey.storage import Fence, Message, Reply, Saved
from covey.storage._base import migrations
from covey.storage.postgres import PostgresStorage
from tests.conftest import drop_schema

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
def clock() -> TestClock:
    return TestClock()


@pytest.fixture
async def make(pg_url: str, schema: str, clock: TestClock) -> AsyncIterator[Make]:
    opened: list[PostgresStorage] = []

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
    await drop_schema(pg_url, schema)


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
    versions = [v for v, _, _ in migrations("covey.storage.postgres")]
    assert len(versions) >= 4
    assert [r[0] for r in rows] == versions  # each applied once
    infos = [await s.info() for s in stores]
    assert {i.schema_version for i in infos} == {versions[-1]}


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


async def _wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    """Wait (real time: connections are involved) until ``predicate()`` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


async def _terminate(pg_url: str, where: str, *args: object) -> int:
    """pg_terminate_backend every session of this database matching ``where``."""
    admin = await asyncpg.connect(pg_url)
    try:
        return int(await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}",
            *args))
    finally:
        await admin.close()


def _listener_up() -> float | None:
    return REGISTRY.get_sample_value("covey_wakeup_listener_up")


async def test_sessions_are_named_after_their_runner(make: Make, pg_url: str) -> None:
    storage = await make()
    await storage.listen(lambda shard: None)  # a runner listens before it registers
    await storage.runners.register(A)
    await storage.runners.acquire(A, {ShardId("default", 1)})
    await storage.info()  # the pool serves a statement after registration
    wanted = {f"covey-pool:{A}", f"covey-lock:{A}", f"covey-listen:{A}"}
    admin = await asyncpg.connect(pg_url)
    names: set[str] = set()
    try:
        deadline = time.monotonic() + 15
        while not wanted <= names and time.monotonic() < deadline:
            names = {r[0] for r in await admin.fetch(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE datname = current_database()")}
            await asyncio.sleep(0.02)
    finally:
        await admin.close()
    assert wanted <= names, names
    # the liveness check matches the lock session by its name: A is still live
    assert [r.address for r in await storage.runners.live_runners(60)] == [A]


async def test_long_runner_names_fit_postgres_limit(make: Make, pg_url: str) -> None:
    storage = await make()
    long = RunnerAddress("pod-" + "x" * 80 + ".example.internal", 7001)
    await storage.runners.register(long)
    await storage.runners.acquire(long, {ShardId("default", 2)})
    await storage.info()
    admin = await asyncpg.connect(pg_url)
    try:
        names = {r[0] for r in await admin.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name LIKE 'covey-%'")}
    finally:
        await admin.close()
    assert f"covey-pool:{long}"[:63] in names and f"covey-lock:{long}"[:63] in names, names
    assert [r.address for r in await storage.runners.live_runners(60)] == [long]


async def test_wakeup_listener_reconnects_and_rereads_after_its_session_dies(
    make: Make, pg_url: str
) -> None:
    storage = await make()
    await storage.runners.register(A)
    woken: list[ShardId | None] = []
    await storage.listen(woken.append)
    assert storage.wakeups_connected and _listener_up() == 1.0
    listener = "application_name LIKE 'covey-listen%'"
    assert await _terminate(pg_url, listener) == 1
    # back by itself, and it asks for a full read: wake-ups were missed meanwhile
    await _wait_for(lambda: None in woken)
    assert storage.wakeups_connected and _listener_up() == 1.0
    woken.clear()
    writer = await asyncpg.connect(pg_url)
    try:
        async with writer.transaction():
            await storage.messages.save_requests_in(writer, [_message(77, shard=3)])
    finally:
        await writer.close()
    await _wait_for(lambda: ShardId("default", 3) in woken)
    await storage.close()
    assert not storage.wakeups_connected and _listener_up() == 0.0


async def test_listen_connection_has_keepalives(make: Make) -> None:
    storage = await make()
    await storage.listen(lambda shard: None)  # (its health check waits on the test clock)
    conn = storage._wakeups._conn
    assert await conn.fetchval("SHOW tcp_keepalives_idle") == "5"
    assert await conn.fetchval("SHOW tcp_keepalives_interval") == "2"
    assert await conn.fetchval("SHOW tcp_keepalives_count") == "3"
    assert await conn.fetchval("SHOW tcp_user_timeout") == "10000"
    sock = conn._transport.get_extra_info("socket")
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


async def _registered(storage: PostgresStorage) -> int:
    return (await storage.info()).runners


async def test_crashed_runner_is_removed_once_its_heartbeat_expires(
    make: Make, pg_url: str, clock: TestClock
) -> None:
    crashed, survivor, paused = await make(), await make(), await make()
    C = RunnerAddress("10.0.0.3", 7001)
    ids = {}
    for storage, address, shard in ((crashed, A, 1), (survivor, B, 2), (paused, C, 3)):
        ids[address] = await storage.runners.register(address)
        await storage.runners.acquire(address, {ShardId("default", shard)})
    # A crashes (SIGKILL: its sessions end, it never beats again); C only loses its
    # lock session (killed by an operator) but keeps running and beating
    assert await _terminate(pg_url, "application_name IN ($1, $2)",
                            f"covey-lock:{A}", f"covey-lock:{C}") == 2
    live = [r.address for r in await survivor.runners.live_runners(120)]
    assert live == [B]  # both gone from the live set at once (fast failover)
    assert await _registered(survivor) == 3  # rows (and machine ids) kept for now
    await clock.advance(7.0)  # past the runner TTL (6 s)
    assert await survivor.runners.heartbeat(B) and await paused.runners.heartbeat(C)
    assert [r.address for r in await survivor.runners.live_runners(120)] == [B]
    assert await _registered(survivor) == 2  # A is gone from `covey status` too
    # C was alive: it kept its row and machine id and comes back with its session
    assert await paused.runners.register(C) == ids[C]
    await paused.runners.acquire(C, [])
    assert [r.address for r in await survivor.runners.live_runners(120)] == [B, C]
    # A's machine id is free again; A itself, if it was only cut off, re-registers
    assert await crashed.runners.heartbeat(A) is False
    assert await crashed.runners.register(A) == ids[A]


async def test_runners_silent_through_a_database_outage_are_kept(
    make: Make, pg_url: str, clock: TestClock
) -> None:
    # A restart ends every session and nobody beats while the server is down; the
    # first runner back must not remove the others (and free their machine ids)
    # before they had the chance to beat again.
    first, other = await make(), await make()
    ids = {A: await first.runners.register(A), B: await other.runners.register(B)}
    await first.runners.acquire(A, [])
    await other.runners.acquire(B, [])
    assert await _terminate(pg_url, "application_name LIKE 'covey-lock:%'") == 2
    await clock.advance(10.0)  # the outage: longer than the runner TTL
    # back: A reads membership first, B beats a second later (its lock session
    # not reopened yet), then both every half second
    for step in range(16):
        assert await first.runners.heartbeat(A)
        await first.runners.live_runners(120)
        if step >= 2:
            assert await other.runners.heartbeat(B)
        await clock.advance(0.5)
    assert await _registered(first) == 2
    assert await other.runners.register(B) == ids[B]


PLACED: list[int] = []


class Order(covey.Entity, type="Order"):
    @covey.rpc(persisted=True)
    async def place(self, n: int) -> int:
        PLACED.append(n)
        return n


async def test_a_send_committed_while_the_listener_was_down_runs_once_it_is_back(
    pg_url: str, schema: str
) -> None:
    # the safety poll is far away: only the read after the reconnect can deliver
    config = CoveyConfig(database_url=pg_url, shards=4,
                         storage=StorageOptions(schema=schema, pool_size=4),
                         sharding=ShardingOptions(poll_interval=120.0))
    cluster = covey.Cluster(config, transport=LocalTransport(
        LocalNetwork(), RunnerAddress("local", 1)))
    cluster.register(Order)
    PLACED.clear()
    try:
        async with cluster:
            storage = cluster.storage
            assert isinstance(storage, PostgresStorage) and storage.wakeups_connected
            wakeups = storage._wakeups
            down = asyncio.Event()
            down.set()
            real_open = wakeups._open

            async def refused_while_down(name: str) -> Any:
                if down.is_set():
                    raise ConnectionRefusedError("the server is down")
                return await real_open(name)

            wakeups._open = refused_while_down  # type: ignore[method-assign]
            assert await _terminate(pg_url, "application_name LIKE 'covey-listen%'") == 1
            await _wait_for(lambda: not storage.wakeups_connected)
            writer = await asyncpg.connect(pg_url)
            try:
                async with writer.transaction():  # its NOTIFY reaches nobody
                    await cluster.client(Order, "o-1", transaction=writer).place(1)
            finally:
                await writer.close()
            down.clear()  # the listener gets through again
            await _wait_for(lambda: PLACED == [1], timeout=30)
            assert storage.wakeups_connected
    finally:
        await drop_schema(pg_url, schema)
