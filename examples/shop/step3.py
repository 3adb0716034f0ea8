"""The shop, step 3: checkout publishes an event; a saga reserves stock, charges, mails.

The tutorial that builds it: ``docs/tutorial/3-events-and-workflows.md``. Serve it
from the repository root, on a fresh ``covey.db``::

    uvicorn step3:app --app-dir examples/shop --port 8000

    curl -X POST localhost:8000/carts/c1/items -H 'content-type: application/json' \\
         -d '{"line_id": "l1", "sku": "book", "qty": 2}'
    curl -X POST localhost:8000/carts/c1/checkout -H 'content-type: application/json' \\
         -d '{"email": "ann@example.com", "payment_token": "tok_visa"}'
    curl localhost:8000/orders/c1
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

import covey
import covey.asgi

Sku = Literal["book", "pen", "mug"]  # what the shop sells
PRICES: dict[str, int] = {"book": 1200, "pen": 150, "mug": 800}  # in cents
STOCK: dict[str, int] = {"book": 10, "pen": 100, "mug": 5}  # what the warehouse started with


class AddItem(BaseModel):
    """``POST /carts/{cart_id}/items``: put ``qty`` of ``sku`` in the cart."""

    line_id: str = Field(min_length=1, max_length=64)  # the client's id for this line
    sku: Sku
    qty: int = Field(default=1, ge=1, le=99)


# --8<-- [start:event]
class Checkout(BaseModel):
    """``POST /carts/{cart_id}/checkout``."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=200)
    payment_token: str = Field(min_length=1, max_length=100)  # from the payment provider's form


class OrderPlaced(covey.Event, topic="orders", key="order_id"):
    """Published once per checked-out cart, in the checkout's own transaction."""

    order_id: str
    email: str
    items: dict[str, int]
    total: int  # cents
    payment_token: str
# --8<-- [end:event]


class CartState(BaseModel):
    """The cart's durable state: loaded wherever the cart starts, committed with each change."""

    items: dict[str, int] = {}
    checked_out: bool = False


class CartView(BaseModel):
    """What the API answers about a cart."""

    cart_id: str
    items: dict[str, int]
    status: Literal["open", "ordered"]


class OrderView(BaseModel):
    """What the API answers about an order: where its checkout saga is."""

    order_id: str
    status: Literal["placed", "processing", "paid", "cancelled"]
    charge_id: str | None = None
    problem: str | None = None  # why it was cancelled


class StockLevel(BaseModel):
    sku: str
    available: int


class Hold(BaseModel):
    """Hold ``qty`` of the stock for ``order_id`` (or let it go again)."""

    order_id: str
    qty: int = 0


class Mailer:
    """Stands in for an email API (one that deduplicates on an idempotency key)."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}

    async def send(self, to: str, text: str, *, idempotency_key: str) -> str:
        if idempotency_key not in self.sent:
            self.sent[idempotency_key] = f"msg-{len(self.sent) + 1}"
            print(f"mail to {to}: {text}", flush=True)
        return self.sent[idempotency_key]


# --8<-- [start:payments]
class CardDeclined(Exception):
    """The payment provider refused the card."""


class Payments:
    """Stands in for a payment API: charges kept by idempotency key, as real ones keep them."""

    def __init__(self) -> None:
        self.charges: dict[str, str] = {}
        self.refunds: set[str] = set()

    async def charge(self, token: str, amount: int, idempotency_key: str) -> str:
        if token == "tok_chargeDeclined":
            raise CardDeclined("your card was declined")
        return self.charges.setdefault(idempotency_key, f"ch_{len(self.charges) + 1}")

    async def refund(self, token: str, amount: int, idempotency_key: str) -> None:
        # a compensation: harmless when nothing was charged under this key
        if idempotency_key in self.charges:
            self.refunds.add(idempotency_key)
# --8<-- [end:payments]


mailer = Mailer()
payments = Payments()
cluster = covey.Cluster.from_env()  # COVEY_DATABASE_URL; default sqlite:///covey.db


@cluster.job("receipt.send", retry=covey.Retry(max_attempts=5))
async def send_receipt(job: covey.JobContext, order: OrderPlaced) -> str:
    """Runs after the checkout committed, on a runner's job slots; retried if it raises."""
    lines = ", ".join(f"{qty} x {sku}" for sku, qty in sorted(order.items.items()))
    text = f"order {order.order_id}: {lines}, total {order.total / 100:.2f}"
    # the job's id is the same on every attempt: the mail goes out once
    return await mailer.send(order.email, text, idempotency_key=f"receipt/{job.job_id}")


def refused(message: str) -> covey.ClusterError:
    """The entity's state does not allow this request: a 409 for the HTTP client."""
    return covey.ClusterError(message, reason=covey.Reason.INVALID_TRANSITION)


# --8<-- [start:cart]
class Cart(covey.Entity, type="Cart", state=CartState):
    """One live cart per cart id; its state survives restarts, crashes and moves."""

    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.line_id)
    async def add(self, cmd: AddItem) -> CartView:
        if self.state.checked_out:
            raise refused(f"cart {self.ctx.entity_id} is checked out")
        self.state.items[cmd.sku] = self.state.items.get(cmd.sku, 0) + cmd.qty
        return self._view()

    @covey.rpc(persisted=True)
    async def checkout(self, cmd: Checkout) -> OrderView:
        if self.state.checked_out:
            return OrderView(order_id=self.ctx.entity_id, status="placed")  # a retry
        if not self.state.items:
            raise refused(f"cart {self.ctx.entity_id} is empty")
        self.state.checked_out = True
        total = sum(PRICES[sku] * qty for sku, qty in self.state.items.items())
        # the outbox: the event is stored with this handler's commit, together with
        # the new state -- never one without the other
        await self.ctx.publish(OrderPlaced(
            order_id=self.ctx.entity_id, email=cmd.email, items=dict(self.state.items),
            total=total, payment_token=cmd.payment_token))
        return OrderView(order_id=self.ctx.entity_id, status="placed")

    @covey.rpc
    async def view(self) -> CartView:
        return self._view()

    def _view(self) -> CartView:
        status: Literal["open", "ordered"] = "ordered" if self.state.checked_out else "open"
        return CartView(cart_id=self.ctx.entity_id, items=dict(self.state.items), status=status)
# --8<-- [end:cart]


# --8<-- [start:stock]
class StockState(BaseModel):
    held: dict[str, int] = {}  # order id -> quantity taken from the shelf


class Stock(covey.Entity, type="Stock", state=StockState):
    """One entity per SKU: its holds are durable, so two orders never take the same item."""

    state: StockState

    @covey.rpc(persisted=True, primary_key=lambda hold: hold.order_id)
    async def hold(self, hold: Hold) -> int:
        available = self._available()
        if hold.order_id not in self.state.held:
            if hold.qty > available:
                raise refused(f"only {available} {self.ctx.entity_id} left")
            self.state.held[hold.order_id] = hold.qty
        return self._available()

    @covey.rpc(persisted=True, primary_key=lambda hold: hold.order_id)
    async def release(self, hold: Hold) -> int:
        self.state.held.pop(hold.order_id, None)  # harmless when nothing is held
        return self._available()

    @covey.rpc
    async def level(self) -> StockLevel:
        return StockLevel(sku=self.ctx.entity_id, available=self._available())

    def _available(self) -> int:
        return STOCK[self.ctx.entity_id] - sum(self.state.held.values())
# --8<-- [end:stock]


# --8<-- [start:saga]
async def reserve(order_id: str, sku: str, qty: int) -> None:
    await cluster.client(Stock, sku).hold(Hold(order_id=order_id, qty=qty))


async def unreserve(order_id: str, sku: str, qty: int) -> None:
    await cluster.client(Stock, sku).release(Hold(order_id=order_id))


async def mail_receipt(order: OrderPlaced) -> None:
    await send_receipt.submit(order, dedupe_key=f"receipt/{order.order_id}")


@cluster.workflow("checkout", version=1)
async def checkout_saga(ctx: covey.WorkflowContext, order: OrderPlaced) -> str:
    """Reserve every item, charge the card, mail the receipt; undo on failure."""
    for sku, qty in sorted(order.items.items()):
        await ctx.step(reserve, order.order_id, sku, qty, compensate=unreserve)
    # the same key on every run of this execution: the provider charges once
    charge_id: str = await ctx.step(payments.charge, order.payment_token, order.total,
                                    f"{ctx.workflow_id}/charge", name="charge",
                                    compensate=payments.refund)
    await ctx.step(mail_receipt, order)
    return charge_id


@cluster.subscribe(OrderPlaced, group="fulfilment")
async def fulfil(event: OrderPlaced, ctx: covey.EventContext) -> None:
    # the workflow id is the idempotency key: a redelivered event starts nothing new
    await cluster.start(checkout_saga, event, workflow_id=f"order-{event.order_id}")
# --8<-- [end:saga]


cluster.register(Cart)
cluster.register(Stock)
app = FastAPI(lifespan=cluster.lifespan)
covey.asgi.install(app, cluster)


@app.post("/carts/{cart_id}/items")
async def add_item(cart_id: str, cmd: AddItem) -> CartView:
    return await cluster.client(Cart, cart_id).add(cmd)


@app.get("/carts/{cart_id}")
async def view_cart(cart_id: str) -> CartView:
    return await cluster.client(Cart, cart_id).view()


@app.post("/carts/{cart_id}/checkout", status_code=202)
async def checkout(cart_id: str, cmd: Checkout) -> OrderView:
    return await cluster.client(Cart, cart_id).checkout(cmd)


# --8<-- [start:routes]
@app.get("/orders/{order_id}")
async def order(order_id: str) -> OrderView:
    try:
        saga = await cluster.workflows.status(f"order-{order_id}")
    except covey.WorkflowError as exc:
        if exc.reason != covey.Reason.WORKFLOW_NOT_FOUND:
            raise
        cart = await cluster.client(Cart, order_id).view()
        if cart.status != "ordered":
            raise  # no such order: a 404
        return OrderView(order_id=order_id, status="placed")  # the event is on its way
    if saga.state == "completed":
        charge_id = await cluster.workflows.handle(saga.workflow_id, checkout_saga).result()
        return OrderView(order_id=order_id, status="paid", charge_id=charge_id)
    if saga.state in ("compensated", "failed", "cancelled"):
        return OrderView(order_id=order_id, status="cancelled", problem=saga.error)
    return OrderView(order_id=order_id, status="processing")


@app.get("/stock/{sku}")
async def stock(sku: Sku) -> StockLevel:
    return await cluster.client(Stock, sku).level()
# --8<-- [end:routes]
