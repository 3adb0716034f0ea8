"""An order saga: reserve stock, charge the card, ship — and undo what was done when a step fails.

Each order is a durable workflow (``docs/workflows.md``). Each step registers
its undo (``compensate=``) before it runs; when a later step fails, covey runs
the undos of the steps that started, newest first, each once:

- ``o-1`` goes through: stock reserved, card charged, parcel shipped;
- ``o-2``'s card is declined: the charge fails and the reserved stock is
  released again (the compensation), so the order ends ``compensated``;
- ``o-3`` is large and waits for a manager's approval — a durable ``recv``
  with a 3-day timeout. The next day the approval arrives (``cluster.send``)
  and the order goes on;
- ``o-4`` is large too, and nobody approves it: 3 days later its ``recv``
  times out, the workflow raises and its stock is released.

Three days pass for real, on the cluster's clock: the example runs the shop as
a ``TestCluster`` (a runner and a client member) on a ``TestClock`` and an
SQLite file, stops the cluster at the end of day 0, and starts it again on day
1 and on day 3 with the clock moved on. Nothing runs while the cluster is down; the stored
timers and signals of the waiting orders are all there is, which is what a
durable wait must survive. (Moving a ``TestClock`` by days while runners are up
would walk every heartbeat of those days one by one: slow.)

The warehouse, the payment provider and the carrier are in-memory stand-ins
for outside systems; the provider deduplicates charges on the idempotency key
the workflow passes it, as real ones do. The last line counts how often each
step's function ran: once per order, although the waiting orders' workflow
functions ran again on every day.

    python examples/order_saga.py
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel

import covey
from covey.core import TestClock
from covey.testing import TestCluster

APPROVAL_LIMIT = 500  # orders from this amount on wait for a manager
DAY = 86_400.0
DAY0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class Order(BaseModel):
    id: str
    sku: str
    qty: int
    amount: int
    card: str


class Receipt(BaseModel):
    order_id: str
    charge_id: str
    tracking: str


class NotApproved(Exception):
    """Nobody approved a large order in time."""


class CardDeclined(Exception):
    """The payment provider refused the card."""


#: how often each outside call ran (a real system would count requests)
calls: Counter[str] = Counter()


class Warehouse:
    """Stock per SKU, and a reservation per order id."""

    def __init__(self, stock: dict[str, int]) -> None:
        self.stock = dict(stock)
        self.reservations: dict[str, tuple[str, int]] = {}

    async def reserve(self, order_id: str, sku: str, qty: int) -> None:
        calls["reserve"] += 1
        if order_id in self.reservations:
            return
        if self.stock[sku] < qty:
            raise ValueError(f"only {self.stock[sku]} {sku} left")
        self.stock[sku] -= qty
        self.reservations[order_id] = (sku, qty)

    async def release(self, order_id: str, sku: str, qty: int) -> None:
        # a compensation: harmless when there is nothing (left) to release
        calls["release"] += 1
        if self.reservations.pop(order_id, None) is not None:
            self.stock[sku] += qty


class Payments:
    """Charges kept by idempotency key, as a payment API keeps them."""

    def __init__(self) -> None:
        self.charges: dict[str, str] = {}
        self.refunded: list[str] = []

    async def charge(self, card: str, amount: int, idempotency_key: str) -> str:
        calls["charge"] += 1
        if card.endswith("0002"):
            raise CardDeclined(f"card {card} declined")
        return self.charges.setdefault(idempotency_key, f"ch-{len(self.charges) + 1}")

    async def refund(self, card: str, amount: int, idempotency_key: str) -> None:
        # registered before the charge ran, so it also runs for a charge that
        # failed half-way: it refunds only what was charged under this key
        calls["refund"] += 1
        if idempotency_key in self.charges and idempotency_key not in self.refunded:
            self.refunded.append(idempotency_key)


class Carrier:
    async def ship(self, order_id: str) -> str:
        calls["ship"] += 1
        return f"parcel-{order_id}"


warehouse = Warehouse({"book": 10})
payments = Payments()
carrier = Carrier()


async def place_order(ctx: covey.WorkflowContext, o: Order) -> Receipt:
    await ctx.step(warehouse.reserve, o.id, o.sku, o.qty, name="reserve",
                   compensate=warehouse.release)
    if o.amount >= APPROVAL_LIMIT:
        await ctx.set_event("status", "awaiting approval")
        approver = await ctx.recv("approval", timeout=timedelta(days=3))
        if approver is None:
            raise NotApproved(f"{o.amount} needs an approval; none came in 3 days")
        await ctx.set_event("status", f"approved by {approver}")
    # the key is the same on every run of this execution: the provider charges once
    charge_id = await ctx.step(payments.charge, o.card, o.amount, f"{ctx.workflow_id}/charge",
                               name="charge", compensate=payments.refund)
    tracking = await ctx.step(carrier.ship, o.id, name="ship")
    return Receipt(order_id=o.id, charge_id=charge_id, tracking=tracking)


def declare(cluster: covey.Cluster) -> None:
    """What every process declares (the runners and the process that takes orders)."""
    cluster.workflow("order", version=1)(place_order)


@asynccontextmanager
async def shop_open(url: str, day: float) -> AsyncIterator[tuple[covey.Cluster, TestClock]]:
    """A runner and a client member on ``url``, their clock ``day`` days past DAY0."""
    clock = TestClock(DAY0 + day * DAY)
    async with TestCluster(runners=1, clock=clock, configure=declare, database_url=url) as tc:
        yield tc.client_member, clock


async def outcome(shop: covey.Cluster, order_id: str) -> str:
    handle = shop.workflows.handle(f"order-{order_id}", "order")
    try:
        receipt: Receipt = await handle.result(timeout=30)
    except covey.WorkflowError as exc:
        d = exc.details
        return f"{d['state']} ({d['error_type']}: {d['message']})"
    return f"completed ({receipt.charge_id}, {receipt.tracking})"


async def until_waiting(shop: covey.Cluster, clock: TestClock, *order_ids: str) -> None:
    """Let the orders' waits settle: a wait is held in memory for 5 s of the clock,
    then the execution is suspended (stored, woken by its timer or a signal)."""
    for _ in range(100):
        states = [(await shop.workflows.status(f"order-{o}")).state for o in order_ids]
        if all(s == "waiting" for s in states):
            return
        await clock.advance(0.25)
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{order_ids} are not waiting: {states}")


async def main() -> None:
    orders = [
        Order(id="o-1", sku="book", qty=2, amount=30, card="4000-0001"),
        Order(id="o-2", sku="book", qty=1, amount=15, card="4000-0002"),
        Order(id="o-3", sku="book", qty=3, amount=900, card="4000-0003"),
        Order(id="o-4", sku="book", qty=4, amount=800, card="4000-0004"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'shop.db'}"

        async with shop_open(url, day=0) as (shop, clock):
            for o in orders:
                await shop.start("order", o, workflow_id=f"order-{o.id}")
            for oid in ("o-1", "o-2"):
                print(f"day 0: {oid} {await outcome(shop, oid)}")
            await until_waiting(shop, clock, "o-3", "o-4")
            for oid in ("o-3", "o-4"):
                note = await shop.get_event(f"order-{oid}", "status")
                status = await shop.workflows.status(f"order-{oid}")
                print(f"day 0: {oid} {status.state}, {note} ({status.waiting_for})")
            print(f"day 0: {warehouse.stock['book']} book in stock; the cluster stops")

        async with shop_open(url, day=1) as (shop, clock):
            # the key makes a retried request (a double click) deliver one approval
            await shop.send("order-o-3", "approval", "dana", idempotency_key="approve-o-3")
            print(f"day 1: o-3 {await outcome(shop, 'o-3')}, "
                  f"{await shop.get_event('order-o-3', 'status')}")
            await until_waiting(shop, clock, "o-4")
            print(f"day 1: o-4 {(await shop.workflows.status('order-o-4')).state}")

        async with shop_open(url, day=3) as (shop, _):
            print(f"day 3: o-4 {await outcome(shop, 'o-4')}")

    print(f"stock: {warehouse.stock['book']} book (10 - 2 for o-1 - 3 for o-3); "
          f"charged {len(payments.charges)}, refunded {len(payments.refunded)}")
    print("step runs: " + ", ".join(f"{name} {calls[name]}" for name in
                                     ("reserve", "charge", "ship", "refund", "release")))


if __name__ == "__main__":
    asyncio.run(main())
