"""An order flow with domain events: HTTP -> entity -> ``OrderPlaced`` -> billing and email.

``POST /orders/{order_id}`` calls the ``Order`` entity's persisted, idempotent
``place``. The handler keeps the order as durable state and publishes
``OrderPlaced`` with ``self.ctx.publish``: the state, the event and the reply
commit in **one transaction** — an order that fails to save publishes nothing,
a saved one always publishes. Two subscriber groups, ``billing`` and ``email``,
each handle every event once, on whichever runner owns the order's key.

Run it (three in-process runners sharing an embedded SQLite file, one HTTP
front on the first; no settings needed)::

    python examples/orders.py

As pods, every pod runs the same app against one PostgreSQL database::

    export COVEY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    uvicorn examples.orders:app --port 8000
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

import covey
import covey.asgi
from covey.testing import TestCluster


class OrderPlaced(covey.Event, topic="orders", key="order_id"):
    """Published once per placed order; one key per order (its events stay in order)."""

    order_id: str
    customer: str
    total: int


class PlaceOrder(BaseModel):
    customer: str
    total: int


class OrderState(BaseModel):
    placed: bool = False
    customer: str = ""
    total: int = 0


class Order(covey.Entity, type="Order", state=OrderState):
    @covey.rpc(persisted=True)
    async def place(self, cmd: PlaceOrder) -> str:
        if self.state.placed:
            return "already placed"  # a retried request publishes nothing new
        self.state.placed, self.state.customer, self.state.total = True, cmd.customer, cmd.total
        # stored with this handler's commit, together with the state: never one without the other
        await self.ctx.publish(OrderPlaced(order_id=self.ctx.entity_id, customer=cmd.customer,
                                           total=cmd.total))
        return "placed"


#: what the groups did: (group, order id, runner) — a real app would charge a card
#: (with ``ctx.idempotency_key``) and send a mail
handled: list[tuple[str, str, str]] = []


def declare(cluster: covey.Cluster) -> None:
    """What every pod declares: the entity and the two subscriber groups."""
    cluster.register(Order)

    @cluster.subscribe(OrderPlaced, group="billing")
    async def bill(event: OrderPlaced, ctx: covey.EventContext) -> None:
        handled.append(("billing", event.order_id, ctx.context.cluster.runner_id or "?"))

    @cluster.subscribe(OrderPlaced, group="email")
    async def email(event: OrderPlaced, ctx: covey.EventContext) -> None:
        handled.append(("email", event.order_id, ctx.context.cluster.runner_id or "?"))


def make_app(cluster: covey.Cluster) -> FastAPI:
    app = FastAPI(lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster)

    @app.post("/orders/{order_id}")
    async def place(order_id: str, cmd: PlaceOrder) -> dict[str, str]:
        outcome = await cluster.client(Order, order_id).place(cmd)
        return {"order": order_id, "outcome": outcome}

    return app


cluster = covey.Cluster.from_env()  # what `uvicorn examples.orders:app` serves
declare(cluster)
app = make_app(cluster)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'orders.db'}"
        async with TestCluster(runners=3, configure=declare, database_url=url) as pods:
            front = make_app(pods.runners[0])  # its members are started already
            transport = httpx.ASGITransport(app=front)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as http:
                for n in range(1, 4):
                    r = await http.post(f"/orders/o-{n}", json={"customer": f"c{n}", "total": n})
                    print(f"POST /orders/o-{n} -> {r.status_code} {r.json()['outcome']}")
                r = await http.post("/orders/o-1", json={"customer": "c1", "total": 1})
                print(f"POST /orders/o-1 again -> {r.status_code} {r.json()['outcome']}")
            for _ in range(500):  # the groups run on other runners: wait for them
                if len(handled) >= 6:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # a duplicate, if any, would show now
    counts = Counter((group, order) for group, order, _ in handled)
    for n in range(1, 4):
        order = f"o-{n}"
        print(f"{order}: billed {counts['billing', order]}x, emailed {counts['email', order]}x")
    runners = {runner for _, _, runner in handled}
    print(f"handled on {len(runners)} runner(s); events handled: {len(handled)}")


if __name__ == "__main__":
    asyncio.run(main())
