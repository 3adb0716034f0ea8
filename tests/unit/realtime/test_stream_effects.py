"""``cluster.streams.publish(..., transaction=self.ctx)`` from a persisted RPC, on memory
and SQLite: the item is stored with the run's commit and pushed to subscribers on
other runners after it; a run that raises or never commits leaves no item, and a
repeated call (same idempotency key) stores it once."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import covey
from covey.core import EntityError, RealtimeOptions, Reason
from covey.realtime import StreamMessage
from covey.testing import TestCluster
from tests.unit._state_helpers import CrashBeforeCommit


class Place(BaseModel):
    id: str
    fail: bool = False
    wait: bool = False


class Order(BaseModel):
    order_id: str
    desk: str


MEMBERS: list[covey.Cluster] = []
RUNS: list[str] = []
#: set by the test to let a waiting handler go on (it stays staged until then)
GATE: list[asyncio.Event] = []
REACHED: list[asyncio.Event] = []


def _host(ctx: covey.EntityContext) -> covey.Cluster:
    """The member that runs this handler (its streams push after the commit)."""
    return next(m for m in MEMBERS if m.address == ctx.runner)


class OrderDesk(covey.Entity, type="OrderDesk"):
    @covey.rpc(persisted=True, primary_key=lambda c: c.id)
    async def place(self, cmd: Place) -> str:
        RUNS.append(cmd.id)
        order = Order(order_id=cmd.id, desk=self.ctx.entity_id)
        await _host(self.ctx).streams.publish("orders", order, event="placed",
                                              transaction=self.ctx)
        if cmd.wait:
            REACHED[-1].set()
            await GATE[-1].wait()
        if cmd.fail:
            raise ValueError("refused after publishing")
        return cmd.id


@pytest.fixture(params=["memory", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    for kept in (MEMBERS, RUNS, GATE, REACHED):
        kept.clear()
    GATE.append(asyncio.Event())
    REACHED.append(asyncio.Event())
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'x.db'}"


def cluster(database_url: str) -> TestCluster:
    tc = TestCluster(OrderDesk, runners=2, database_url=database_url,
                     configure=MEMBERS.append)
    # no safety re-read within a test: what a subscriber gets was pushed
    tc.config = replace(tc.config, realtime=RealtimeOptions(poll_interval=60.0))
    return tc


async def _subscriber_away_from(tc: TestCluster, desk: str) -> Any:
    """A subscriber of "orders" on a runner that does not run ``desk``."""
    return await tc.runners[1 - tc.owner_index(OrderDesk, desk)].streams.subscribe("orders")


async def _next(sub: Any) -> StreamMessage:
    async with asyncio.timeout(10):
        message = await anext(aiter(sub))
    assert isinstance(message, StreamMessage)
    return message


async def _stored(tc: TestCluster, sub: Any) -> list[int]:
    """The ids of the stored items of ``sub``'s stream."""
    return [item.id for item in (await tc.storage.streams.read(sub.key, 0))[1]]


async def test_the_item_is_pushed_to_another_runner_after_the_commit(
        database_url: str) -> None:
    async with cluster(database_url) as tc:
        sub = await _subscriber_away_from(tc, "d1")
        await tc.runners[0].streams.publish("orders", {"warm": "up"})
        assert (await _next(sub)).cursor.position == 1  # it has read the store: now it waits
        pushed = asyncio.ensure_future(_next(sub))
        call = asyncio.ensure_future(tc.client(OrderDesk, "d1").place(Place(id="o1", wait=True)))
        await asyncio.wait_for(REACHED[-1].wait(), 10)
        assert len(await _stored(tc, sub)) == 1  # published, staged: nothing before the commit
        assert not pushed.done()
        GATE[-1].set()
        assert await asyncio.wait_for(call, 10) == "o1"
        # only the commit's push wakes it (the safety re-read is a minute away)
        message = await asyncio.wait_for(pushed, 10)
        assert (message.cursor.position, message.event) == (2, "placed")
        assert Order.model_validate_json(message.data) == Order(order_id="o1", desk="d1")
        await sub.aclose()


async def test_a_handler_that_raises_after_publishing_leaves_no_item(database_url: str) -> None:
    async with cluster(database_url) as tc:
        sub = await _subscriber_away_from(tc, "d1")
        desk = tc.client(OrderDesk, "d1")
        with pytest.raises(EntityError) as caught:
            await desk.place(Place(id="o1", fail=True))
        assert caught.value.reason is Reason.HANDLER_FAILED
        assert await _stored(tc, sub) == []
        await desk.place(Place(id="o2"))
        # the first item anyone sees is the next call's, at position 1: nothing leaked
        message = await _next(sub)
        assert message.cursor.position == 1
        assert Order.model_validate_json(message.data).order_id == "o2"
        assert await _stored(tc, sub) == [message.id]
        await sub.aclose()


async def test_a_repeated_call_stores_the_item_once(database_url: str) -> None:
    async with cluster(database_url) as tc:
        sub = await _subscriber_away_from(tc, "d1")
        desk = tc.client(OrderDesk, "d1")
        assert await desk.place(Place(id="o1")) == "o1"
        assert await desk.place(Place(id="o1")) == "o1"  # the stored reply
        assert RUNS == ["o1"]
        first = await _next(sub)
        assert first.cursor.position == 1 and await _stored(tc, sub) == [first.id]
        await desk.place(Place(id="o2"))  # the next item follows at once: no other between
        assert (await _next(sub)).cursor.position == 2
        await sub.aclose()


async def test_a_run_lost_before_its_commit_leaves_one_item(database_url: str) -> None:
    async with cluster(database_url) as tc:
        sub = await _subscriber_away_from(tc, "d1")  # on the runner that survives
        crash = CrashBeforeCommit(tc.storage)
        call = asyncio.ensure_future(tc.client(OrderDesk, "d1").place(Place(id="o1")))
        await asyncio.wait_for(crash.reached.wait(), 10)
        await tc.kill(tc.owner_index(OrderDesk, "d1"))  # its runner dies before the commit
        assert await asyncio.wait_for(call, 20) == "o1"
        assert RUNS == ["o1", "o1"]  # ran twice: published twice, stored once
        message = await _next(sub)
        assert message.cursor.position == 1
        assert await _stored(tc, sub) == [message.id]
        await sub.aclose()
