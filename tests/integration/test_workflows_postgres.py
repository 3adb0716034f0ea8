"""Workflows on PostgreSQL: transactional steps and compensations write the
application's rows exactly once with their journal entries, a start inside the
application's transaction happens only if it commits, and an execution whose
runner crashed mid-step finishes on another runner without repeating what was
journaled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import covey
from covey.core import CoveyConfig, Reason, RunnerAddress, ShardingOptions, StorageOptions
from covey.sharding import LocalNetwork, LocalTransport
from tests.unit._waiting import until

pytestmark = pytest.mark.postgres

OPTIONS = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                          lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=2.0,
                          call_timeout=15.0)


class Order(BaseModel):
    id: str
    fail_at: int = 0     # the step that fails (0: none)
    block_at: int = 0    # the step whose first run blocks until the test kills its runner


TABLE: list[str] = []
RUNS: list[tuple[str, int]] = []
BLOCKED = asyncio.Event()


async def effect(tx: Any, order: Order, step: int) -> int:
    RUNS.append((order.id, step))
    await tx.execute(f"INSERT INTO {TABLE[0]} (wid, step, kind) VALUES ($1, $2, 'do')",
                     order.id, step)
    if step == order.fail_at:
        raise RuntimeError(f"step {step} refused")
    if step == order.block_at and RUNS.count((order.id, step)) == 1:
        BLOCKED.set()
        await asyncio.Event().wait()  # its runner dies here
    return step


async def undo(tx: Any, order: Order, step: int) -> None:
    await tx.execute(f"INSERT INTO {TABLE[0]} (wid, step, kind) VALUES ($1, $2, 'undo')",
                     order.id, step)


async def final(tx: Any, order: Order) -> None:
    await tx.execute(f"INSERT INTO {TABLE[0]} (wid, step, kind) VALUES ($1, 0, 'final')",
                     order.id)


def declare(member: covey.Cluster) -> None:
    @member.workflow("pg.saga")
    async def saga(ctx: covey.WorkflowContext, order: Order) -> int:
        ctx.finalizer(final, order, transaction=True)
        total = 0
        for step in range(1, 5):
            total += await ctx.step(effect, order, step, compensate=undo, transaction=True)
        return total


class Members:
    def __init__(self, url: str, schema: str) -> None:
        self.config = CoveyConfig(database_url=url, shards=4, cluster_secret="s",
                                  sharding=OPTIONS, storage=StorageOptions(schema=schema))
        self.network = LocalNetwork()
        self.started: list[covey.Cluster] = []
        self._port = 0

    async def start(self) -> covey.Cluster:
        self._port += 1
        member = covey.Cluster(self.config, transport=LocalTransport(
            self.network, RunnerAddress("runner", self._port)))
        declare(member)
        await member.start()
        self.started.append(member)
        return member

    async def crash(self, member: covey.Cluster) -> None:
        assert member.address is not None
        self.network.kill(member.address)
        await member.abort()
        self.started.remove(member)


@pytest.fixture
async def setup(pg_database: str) -> AsyncIterator[tuple[Members, str]]:
    TABLE[:] = [f"wf_effects_{uuid.uuid4().hex[:12]}"]
    RUNS.clear()
    BLOCKED.clear()
    conn = await asyncpg.connect(pg_database)
    try:  # no unique constraint: a duplicate effect would show
        await conn.execute(f"CREATE TABLE {TABLE[0]} (id bigserial, wid text, step int, "
                           "kind text)")
    finally:
        await conn.close()
    members = Members(pg_database, f"wf_{uuid.uuid4().hex[:12]}")
    try:
        yield members, pg_database
    finally:
        for member in reversed(members.started):
            await member.stop()


async def _rows(url: str, wid: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"SELECT step, kind FROM {TABLE[0]} WHERE wid = $1 ORDER BY id",
                                wid)
        return [(r["step"], r["kind"]) for r in rows]
    finally:
        await conn.close()


async def test_steps_compensations_and_finalizer_write_once(setup: tuple[Members, str]) -> None:
    members, url = setup
    runner = await members.start()
    ok = await runner.start("pg.saga", Order(id="ok"), workflow_id="ok")
    assert await ok.result(timeout=20) == 10
    bad = await runner.start("pg.saga", Order(id="bad", fail_at=3), workflow_id="bad")
    with pytest.raises(covey.WorkflowError) as failed:
        await bad.result(timeout=20)
    assert failed.value.reason is Reason.WORKFLOW_FAILED
    assert failed.value.details["error_type"] == "RuntimeError"
    assert (await bad.status()).state == "compensated"
    assert await _rows(url, "ok") == [(1, "do"), (2, "do"), (3, "do"), (4, "do"), (0, "final")]
    # step 3's own write was rolled back with it; its compensation still runs (it may
    # have acted elsewhere), newest first; the finalizer once
    assert await _rows(url, "bad") == [(1, "do"), (2, "do"), (3, "undo"), (2, "undo"),
                                       (1, "undo"), (0, "final")]


async def test_a_start_inside_the_applications_transaction(setup: tuple[Members, str]) -> None:
    members, url = setup
    runner = await members.start()
    conn = await asyncpg.connect(url)
    try:
        tx = conn.transaction()
        await tx.start()
        await runner.start("pg.saga", Order(id="rolled"), workflow_id="rolled", transaction=conn)
        await tx.rollback()
        async with conn.transaction():
            handle = await runner.start("pg.saga", Order(id="kept"), workflow_id="kept",
                                        transaction=conn)
    finally:
        await conn.close()
    assert await handle.result(timeout=20) == 10
    with pytest.raises(covey.WorkflowError) as missing:
        await runner.workflows.status("rolled")
    assert missing.value.reason is Reason.WORKFLOW_NOT_FOUND
    assert await _rows(url, "rolled") == []


async def test_a_crash_mid_step_finishes_elsewhere_without_repeats(
        setup: tuple[Members, str]) -> None:
    members, url = setup
    first = await members.start()
    second = await members.start()
    await until(lambda: all(len(m.sharding.owned) == 2 for m in (first, second)))
    # a workflow id owned by the first runner
    wid = next(w for w in (f"crash-{i}" for i in range(100))
               if any(s.id == covey.core.runtime.shard_for(w, 4).id for s in first.sharding.owned))
    await second.start("pg.saga", Order(id=wid, block_at=3), workflow_id=wid)
    await asyncio.wait_for(BLOCKED.wait(), 20)
    await members.crash(first)
    assert await second.workflows.handle(wid).result(timeout=30) == 10
    # steps 1 and 2 were journaled: they ran once; step 3 ran twice, wrote once
    assert RUNS.count((wid, 1)) == RUNS.count((wid, 2)) == 1
    assert RUNS.count((wid, 3)) == 2
    assert await _rows(url, wid) == [(1, "do"), (2, "do"), (3, "do"), (4, "do"), (0, "final")]
