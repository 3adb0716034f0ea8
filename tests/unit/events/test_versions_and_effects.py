"""Stored versions, bad stored payloads, and effects committed with a handler's run."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import covey
from covey.core import EntityError
from covey.testing import TestCluster

from .._waiting import until
from ._app import FAST, OrderPlaced, Recorder


class ItemV1(covey.Event, topic="items", name="Item", key="sku"):
    sku: str
    qty: int


class ItemV3(covey.Event, topic="items", name="Item", version=3, key="sku"):
    sku: str


class ItemWrong(covey.Event, topic="items", name="Item", key="sku"):
    sku: str
    quantity: str


class Item(covey.Event, topic="items", version=2, key="sku"):
    sku: str
    quantity: int


@covey.upcaster(Item, from_version=1)
def qty_became_quantity(data: dict[str, Any]) -> dict[str, Any]:
    return {"sku": data["sku"], "quantity": data["qty"]}


async def test_upcasters_bring_old_versions_forward_and_bad_rows_are_dead_lettered() -> None:
    seen: list[tuple[str, int, int]] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.subscribe(Item, group="stock", retry=FAST)
        async def handle(event: Item, ctx: covey.EventContext) -> None:
            seen.append((event.sku, event.quantity, ctx.version))

    async with TestCluster(runners=2, configure=configure) as tc:
        cluster = tc.client_member
        await cluster.publish(ItemV1(sku="a", qty=3))                  # v1 -> upcast to v2
        future = await cluster.publish(ItemV3(sku="b"))                 # newer than the code
        await cluster.publish(ItemWrong(sku="c", quantity="lots"))    # no longer validates
        await cluster.publish(Item(sku="d", quantity=1))
        await until(lambda: len(seen) == 2)

        async def two_dead() -> bool:
            return len(await cluster.events.dead_letters("stock")) == 2
        await until(two_dead)
        assert sorted(seen) == [("a", 3, 1), ("d", 1, 2)]
        dead = {d.key: d for d in await cluster.events.dead_letters("stock")}
        assert dead["b"].attempts == 0 and "version 3" in dead["b"].error
        assert dead["c"].attempts == 0 and "quantity" in dead["c"].error  # the field named
        assert await tc.storage.events.get(future) is not None  # the log row stays


class Order(BaseModel):
    id: str
    fail: bool = False


class Shop(covey.Entity, type="Shop"):
    @covey.rpc(persisted=True, primary_key=lambda o: o.id)
    async def place(self, order: Order) -> None:
        await self.ctx.publish(OrderPlaced(order_id=order.id))
        if order.fail:
            raise ValueError("refused after publishing")


async def test_ctx_publish_in_an_entity_handler_commits_with_it_or_not_at_all() -> None:
    app = Recorder(groups=("billing",))
    async with TestCluster(Shop, runners=2, configure=app.configure) as tc:
        with pytest.raises(EntityError):
            await tc.client(Shop, "s").place(Order(id="bad", fail=True))
        await tc.client(Shop, "s").place(Order(id="good"))
        await until(lambda: app.handled("billing") == [("good", 0)])
        topics = await tc.client_member.events.topics()
        assert [(t.topic, t.events) for t in topics] == [("orders", 1)]


class Followup(covey.Event, topic="followups", key="ref"):
    ref: str


class Mail(BaseModel):
    to: str


async def test_an_event_handler_publishes_and_submits_jobs_with_its_commit() -> None:
    chained: list[str] = []
    jobbed: list[str] = []
    runs: dict[str, int] = {}

    def configure(cluster: covey.Cluster) -> None:
        @cluster.job("mail")
        async def mail(job: covey.JobContext, payload: Mail) -> None:
            jobbed.append(payload.to)

        @cluster.subscribe(OrderPlaced, group="chain", retry=FAST)
        async def handle(event: OrderPlaced, ctx: covey.EventContext) -> None:
            runs[event.order_id] = runs.get(event.order_id, 0) + 1
            await cluster.publish(Followup(ref=event.order_id), transaction=ctx)
            await ctx.publish(Followup(ref=event.order_id + "-direct"))
            await mail.submit(Mail(to=event.order_id), transaction=ctx)
            if runs[event.order_id] == 1:
                raise ConnectionError("the first attempt's effects are discarded")

        @cluster.subscribe(Followup, group="after")
        async def after(event: Followup, ctx: covey.EventContext) -> None:
            chained.append(event.ref)

    async with TestCluster(runners=2, configure=configure) as tc:
        await tc.client_member.publish(OrderPlaced(order_id="o"))
        await until(lambda: len(chained) == 2 and len(jobbed) == 1)
        assert sorted(chained) == ["o", "o-direct"] and jobbed == ["o"]
        assert runs == {"o": 2}
