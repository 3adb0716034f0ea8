"""A persisted handler's effects on memory and SQLite: ``ctx.transaction`` writes,
outbox calls (``ctx.client``) and jobs (``transaction=self.ctx``) commit once, with
the reply and the state, and never for a run that failed or was lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import covey
from covey.core import EntityError, Reason, ShardingOptions
from covey.jobs import JobDefinition

from ._state_helpers import Backend, CrashBeforeCommit, write_audit
from ._waiting import until


class CartState(BaseModel):
    items: list[str] = []


class Buy(BaseModel):
    id: str
    item: str
    fail: bool = False
    table: str = "audit"


class Reserve(BaseModel):
    order: str


class Email(BaseModel):
    to: str


RUNS: list[str] = []
RESERVED: list[tuple[str, str]] = []
EMAILED: list[str] = []
JOBS: list[JobDefinition[Any]] = []
MEMBERS: list[covey.Cluster] = []


class Inventory(covey.Entity, type="Inventory"):
    @covey.rpc(persisted=True, primary_key=lambda r: r.order)
    async def reserve(self, r: Reserve) -> None:
        RESERVED.append((self.ctx.entity_id, r.order))

    @covey.rpc
    async def count(self) -> int:
        return len(RESERVED)


class Shop(covey.Entity, type="Shop", state=CartState):
    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def buy(self, cmd: Buy) -> int:
        RUNS.append(cmd.id)
        self.state.items.append(cmd.item)
        await write_audit(await self.ctx.transaction(), self.ctx.entity_id, cmd.item,
                          table=cmd.table)
        assert await self.ctx.client(Inventory, cmd.item).reserve(Reserve(order=cmd.id)) is None
        handle = await JOBS[-1].submit(Email(to=cmd.item), transaction=self.ctx)
        assert handle.id > 0
        if cmd.fail:
            raise ValueError("refused after staging everything")
        return len(self.state.items)

    @covey.rpc(persisted=True)
    async def volatile_through_outbox(self) -> None:
        await self.ctx.client(Inventory, "i").count()

    @covey.rpc(persisted=True)
    async def reserve_via_cluster(self, order: str) -> None:
        # cluster.client(..., transaction=self.ctx) is self.ctx.client(...)
        await MEMBERS[-1].client(Inventory, "via", transaction=self.ctx).reserve(
            Reserve(order=order))
        if order == "fail":
            raise ValueError("no")

    @covey.rpc
    async def outbox_in_volatile(self) -> None:
        self.ctx.client(Inventory, "i")

    @covey.rpc
    async def job_in_volatile(self) -> None:
        await JOBS[-1].submit(Email(to="x"), transaction=self.ctx)


class Ledger(covey.Entity, type="Ledger", concurrency=4):
    """No durable state: its app writes commit with the reply all the same."""

    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def record(self, cmd: Buy) -> None:
        RUNS.append(cmd.id)
        await write_audit(await self.ctx.transaction(), self.ctx.entity_id, cmd.item)
        if cmd.fail:
            raise ValueError("no")


def _configure(cluster: covey.Cluster) -> None:
    @cluster.job("email")
    async def email(job: covey.JobContext, msg: Email) -> None:
        EMAILED.append(msg.to)

    JOBS.append(email)
    MEMBERS.append(cluster)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    for effects in (RUNS, RESERVED, EMAILED, JOBS, MEMBERS):
        effects.clear()
    return Backend(request.param, tmp_path)


async def _stored(tc: Any, entity_type: str) -> int:
    """How many messages to ``entity_type`` are stored (sent and kept)."""
    return len(await tc.storage.messages.list_messages(entity_type, limit=100))


#: storage is read only when woken: what a commit sends must wake its owners itself
NO_POLLING = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                             lock_refresh_interval=0.5, poll_interval=3600,
                             shutdown_grace=2.0, call_timeout=10.0)


async def test_writes_outbox_and_jobs_commit_once_with_the_reply(backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=2, configure=_configure,
                               sharding=NO_POLLING) as tc:
        shop = tc.client(Shop, "s1")
        assert await shop.buy(Buy(id="o1", item="apple")) == 1
        assert await shop.buy(Buy(id="o1", item="apple")) == 1  # the stored reply
        assert backend.audit() == [("s1", "apple")]
        await until(lambda: RESERVED == [("apple", "o1")] and EMAILED == ["apple"])
        assert await _stored(tc, "Inventory") == 1 and await _stored(tc, "covey.Job") == 1
        assert RUNS == ["o1"]
        assert await tc.client_member.state_of(Shop, "s1") == CartState(items=["apple"])


async def test_a_handler_that_raises_writes_sends_and_submits_nothing(backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=1, configure=_configure) as tc:
        shop = tc.client(Shop, "s1")
        with pytest.raises(EntityError) as caught:
            await shop.buy(Buy(id="o1", item="apple", fail=True))
        assert caught.value.reason is Reason.HANDLER_FAILED
        assert backend.audit() == []
        assert await _stored(tc, "Inventory") == 0 and await _stored(tc, "covey.Job") == 0
        assert await tc.client_member.state_of(Shop, "s1") is None
        assert await shop.buy(Buy(id="o2", item="pear")) == 1  # the instance still serves
        assert backend.audit() == [("s1", "pear")]


async def test_a_failed_app_write_fails_the_call_and_keeps_nothing(backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=1, configure=_configure) as tc:
        shop = tc.client(Shop, "s1")
        with pytest.raises(EntityError) as caught:
            await shop.buy(Buy(id="o1", item="apple", table="no_such_table"))
        assert caught.value.reason is Reason.HANDLER_FAILED
        assert "no_such_table" in str(caught.value)
        # the failure is the run's answer, stored: the message is not run again
        failed = await tc.storage.messages.list_messages("Shop", state="error", limit=10)
        assert len(failed) == 1 and RUNS == ["o1"]
        assert await _stored(tc, "Inventory") == 0 and await _stored(tc, "covey.Job") == 0
        assert await tc.client_member.state_of(Shop, "s1") is None
        assert await shop.buy(Buy(id="o2", item="pear")) == 1  # rolled back, not stuck
        assert await tc.client_member.state_of(Shop, "s1") == CartState(items=["pear"])


async def test_a_run_lost_before_its_commit_leaves_no_effect_behind(backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=2, configure=_configure) as tc:
        shop = tc.client(Shop, "s1")
        crash = CrashBeforeCommit(tc.storage)
        call = asyncio.create_task(shop.buy(Buy(id="o1", item="apple")))
        await asyncio.wait_for(crash.reached.wait(), 5)
        await tc.kill(tc.owner_index(Shop, "s1"))
        assert await asyncio.wait_for(call, 10) == 1
        assert RUNS == ["o1", "o1"]  # the handler ran twice, its effects are there once
        assert backend.audit() == [("s1", "apple")]
        await until(lambda: len(RESERVED) == 1 and len(EMAILED) == 1)
        assert await _stored(tc, "Inventory") == 1 and await _stored(tc, "covey.Job") == 1


async def test_app_writes_of_an_entity_without_state_commit_once(backend: Backend) -> None:
    async with backend.cluster(Ledger, runners=1) as tc:
        ledger = tc.client(Ledger, "l1")
        await asyncio.gather(*(ledger.record(Buy(id=f"o{i}", item=f"i{i}")) for i in range(4)))
        await ledger.record(Buy(id="o0", item="i0"))  # a repeat: the stored reply
        with pytest.raises(EntityError):
            await ledger.record(Buy(id="bad", item="never", fail=True))
        assert sorted(backend.audit()) == [("l1", f"i{i}") for i in range(4)]


async def test_outbox_and_jobs_through_ctx_are_for_persisted_calls_only(
        backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=1, configure=_configure) as tc:
        shop = tc.client(Shop, "s1")
        for call, field in ((shop.volatile_through_outbox, "rpc"),
                            (shop.outbox_in_volatile, "client"),
                            (shop.job_in_volatile, "transaction")):
            with pytest.raises(EntityError) as caught:
                await call()
            assert caught.value.reason is Reason.INVALID_ARGUMENT
            assert caught.value.details["field"] == field
        assert await _stored(tc, "Inventory") == 0 and await _stored(tc, "covey.Job") == 0


async def test_cluster_client_with_the_handlers_context_is_its_outbox(backend: Backend) -> None:
    async with backend.cluster(Shop, Inventory, runners=1, configure=_configure) as tc:
        shop = tc.client(Shop, "s1")
        with pytest.raises(EntityError):
            await shop.reserve_via_cluster("fail")
        await shop.reserve_via_cluster("o1")
        await until(lambda: RESERVED == [("via", "o1")])
        assert await _stored(tc, "Inventory") == 1
