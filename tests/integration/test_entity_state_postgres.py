"""Durable entity state and a handler's effects on PostgreSQL: the state, the
application's rows written through ``ctx.transaction``, outbox calls and jobs
commit once with the reply, and never for a run that failed or was lost."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import covey
from covey.core import (
    CoveyConfig,
    EntityError,
    Reason,
    RunnerAddress,
    ShardingOptions,
    StorageOptions,
)
from covey.jobs import JobDefinition
from covey.sharding import LocalNetwork, LocalTransport
from tests.unit._state_helpers import CrashBeforeCommit, write_audit
from tests.unit._waiting import until

pytestmark = pytest.mark.postgres

OPTIONS = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                          lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=2.0,
                          call_timeout=15.0)


class CartState(BaseModel):
    items: list[str] = []


class Buy(BaseModel):
    id: str
    item: str
    table: str
    fail: bool = False


class Reserve(BaseModel):
    order: str


class Email(BaseModel):
    to: str


RUNS: list[str] = []
RESERVED: list[str] = []
EMAILED: list[str] = []
JOBS: list[JobDefinition[Any]] = []


class PgStock(covey.Entity, type="PgStock"):
    @covey.rpc(persisted=True, primary_key=lambda r: r.order)
    async def reserve(self, r: Reserve) -> None:
        RESERVED.append(r.order)


class PgShop(covey.Entity, type="PgShop", state=CartState):
    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def buy(self, cmd: Buy) -> int:
        RUNS.append(cmd.id)
        self.state.items.append(cmd.item)
        await write_audit(await self.ctx.transaction(), self.ctx.entity_id, cmd.item,
                          table=cmd.table)
        await self.ctx.client(PgStock, cmd.item).reserve(Reserve(order=cmd.id))
        await JOBS[-1].submit(Email(to=cmd.item), transaction=self.ctx)
        if cmd.fail:
            raise ValueError("refused after staging everything")
        return len(self.state.items)


DROPPED: list[str] = []


class PgDropped(covey.Entity, type="PgDropped", state=CartState):
    """Its first run loses the connection under ``ctx.transaction`` mid-handler."""

    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def buy(self, cmd: Buy) -> int:
        DROPPED.append(cmd.id)
        self.state.items.append(cmd.item)
        tx = await self.ctx.transaction()
        conn = await tx.connection()  # live: the handler holds the session
        if len(DROPPED) == 1:  # the server drops this session, as a failover would
            killer = await asyncpg.connect(DROPPED_URL[0])
            try:
                await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            finally:
                await killer.close()
        await write_audit(tx, self.ctx.entity_id, cmd.item, table=cmd.table)
        return len(self.state.items)


DROPPED_URL: list[str] = []


class Members:
    """Cluster members in one process, each with its own PostgreSQL storage."""

    def __init__(self, url: str, schema: str) -> None:
        self.config = CoveyConfig(database_url=url, shards=4, cluster_secret="s",
                                  sharding=OPTIONS, storage=StorageOptions(schema=schema))
        self.network = LocalNetwork()
        self.started: list[covey.Cluster] = []
        self._port = 0

    async def start(self, *, client_only: bool = False) -> covey.Cluster:
        self._port += 1
        member = covey.Cluster(self.config, client_only=client_only, transport=LocalTransport(
            self.network, RunnerAddress("runner", self._port)))
        member.register(PgShop, PgStock, PgDropped)

        @member.job("pg.email")
        async def email(job: covey.JobContext, msg: Email) -> None:
            EMAILED.append(msg.to)

        JOBS.append(email)
        await member.start()
        self.started.append(member)
        return member

    async def crash(self, member: covey.Cluster) -> None:
        assert member.address is not None
        self.network.kill(member.address)
        await member.abort()


@pytest.fixture
async def setup(pg_database: str) -> AsyncIterator[tuple[Members, str, str]]:
    schema = f"state_{uuid.uuid4().hex[:12]}"
    table = f"audit_{uuid.uuid4().hex[:12]}"  # no unique constraint: duplicates show
    conn = await asyncpg.connect(pg_database)
    try:
        await conn.execute(f"CREATE TABLE {table}(cart text, item text)")
    finally:
        await conn.close()
    for effects in (RUNS, RESERVED, EMAILED, JOBS):
        effects.clear()
    members = Members(pg_database, schema)
    try:
        yield members, pg_database, table
    finally:
        for member in reversed(members.started):
            await member.stop()


async def _rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def _stored(url: str, schema: str, entity_type: str) -> int:
    rows = await _rows(url, f"SELECT count(*) FROM {schema}.messages WHERE entity_type = $1",
                       entity_type)
    return int(rows[0][0])


async def test_everything_a_handler_did_commits_once_with_its_reply(
        setup: tuple[Members, str, str]) -> None:
    members, url, table = setup
    runner = await members.start()
    shop = runner.client(PgShop, "s1")
    assert await shop.buy(Buy(id="o1", item="apple", table=table)) == 1
    assert await shop.buy(Buy(id="o1", item="apple", table=table)) == 1  # the stored reply
    assert await shop.buy(Buy(id="o2", item="pear", table=table)) == 2
    with pytest.raises(EntityError) as failed:
        await shop.buy(Buy(id="o3", item="fig", table=table, fail=True))
    assert failed.value.reason is Reason.HANDLER_FAILED
    with pytest.raises(EntityError) as bad_sql:
        await shop.buy(Buy(id="o4", item="kiwi", table="no_such_table"))
    assert bad_sql.value.reason is Reason.HANDLER_FAILED
    assert await shop.buy(Buy(id="o5", item="plum", table=table)) == 3  # not stuck
    schema = members.config.storage.schema
    assert await _rows(url, f"SELECT cart, item FROM {table} ORDER BY item") == [
        ("s1", "apple"), ("s1", "pear"), ("s1", "plum")]
    await until(lambda: sorted(RESERVED) == ["o1", "o2", "o5"] and len(EMAILED) == 3)
    assert await _stored(url, schema, "PgStock") == 3
    assert await _stored(url, schema, "covey.Job") == 3
    assert await runner.state_of(PgShop, "s1") == CartState(items=["apple", "pear", "plum"])


async def test_a_run_lost_before_its_commit_leaves_no_effect_behind(
        setup: tuple[Members, str, str]) -> None:
    members, url, table = setup
    first = await members.start()
    client = await members.start(client_only=True)
    shop = client.client(PgShop, "s1")
    assert await shop.buy(Buy(id="o1", item="apple", table=table)) == 1
    crash = CrashBeforeCommit(first.storage)
    call = asyncio.create_task(shop.buy(Buy(id="o2", item="pear", table=table)))
    await asyncio.wait_for(crash.reached.wait(), 10)  # ran, wrote through tx, not committed
    await members.crash(first)
    second = await members.start()  # takes the shards over and runs the message again
    assert await asyncio.wait_for(call, 20) == 2
    assert RUNS == ["o1", "o2", "o2"]
    assert await _rows(url, f"SELECT item FROM {table} ORDER BY item") == [
        ("apple",), ("pear",)]
    await until(lambda: sorted(RESERVED) == ["o1", "o2"] and len(EMAILED) == 2)
    assert await second.state_of(PgShop, "s1") == CartState(items=["apple", "pear"])


async def test_a_connection_lost_under_the_handler_runs_it_again_not_fails_it(
        setup: tuple[Members, str, str]) -> None:
    # The driver's error of a statement on a lost ctx.transaction is the store's
    # failure: the message runs again (nothing of the first run was kept), it is
    # not answered with the driver's error as the handler's.
    members, url, table = setup
    DROPPED.clear()
    DROPPED_URL[:] = [url]
    runner = await members.start()
    shop = runner.client(PgDropped, "d1")
    assert await shop.buy(Buy(id="o1", item="apple", table=table)) == 1
    assert DROPPED == ["o1", "o1"]
    assert await _rows(url, f"SELECT cart, item FROM {table}") == [("d1", "apple")]
    assert await runner.state_of(PgDropped, "d1") == CartState(items=["apple"])
