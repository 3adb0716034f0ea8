"""The shop, step 2: a durable cart, a checkout, and a background job that mails the receipt.

The tutorial that builds it: ``docs/tutorial/2-state-and-jobs.md``. Serve it
from the repository root, on a fresh ``covey.db``::

    uvicorn step2:app --app-dir examples/shop --port 8000

    curl -X POST localhost:8000/carts/c1/items -H 'content-type: application/json' \\
         -d '{"line_id": "l1", "sku": "book", "qty": 2}'
    curl -X POST localhost:8000/carts/c1/checkout -H 'content-type: application/json' \\
         -d '{"email": "ann@example.com"}'
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

import covey
import covey.asgi

Sku = Literal["book", "pen", "mug"]  # what the shop sells
PRICES: dict[str, int] = {"book": 1200, "pen": 150, "mug": 800}  # in cents


class AddItem(BaseModel):
    """``POST /carts/{cart_id}/items``: put ``qty`` of ``sku`` in the cart."""

    line_id: str = Field(min_length=1, max_length=64)  # the client's id for this line
    sku: Sku
    qty: int = Field(default=1, ge=1, le=99)


# --8<-- [start:models]
class Checkout(BaseModel):
    """``POST /carts/{cart_id}/checkout``."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=200)


class Order(BaseModel):
    """What a checked-out cart became."""

    order_id: str
    email: str
    items: dict[str, int]
    total: int  # cents
    receipt_job: covey.asgi.JsonId  # the job mailing the receipt (a string in JSON)


class CartState(BaseModel):
    """The cart's durable state: loaded wherever the cart starts, committed with each change."""

    items: dict[str, int] = {}
    order: Order | None = None  # set once, at checkout


class CartView(BaseModel):
    """What the API answers about a cart."""

    cart_id: str
    items: dict[str, int]
    status: Literal["open", "ordered"]
# --8<-- [end:models]


# --8<-- [start:job]
class Mailer:
    """Stands in for an email API (one that deduplicates on an idempotency key)."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}

    async def send(self, to: str, text: str, *, idempotency_key: str) -> str:
        if idempotency_key not in self.sent:
            self.sent[idempotency_key] = f"msg-{len(self.sent) + 1}"
            print(f"mail to {to}: {text}", flush=True)
        return self.sent[idempotency_key]


mailer = Mailer()
cluster = covey.Cluster.from_env()  # COVEY_DATABASE_URL; default sqlite:///covey.db


@cluster.job("receipt.send", retry=covey.Retry(max_attempts=5))
async def send_receipt(job: covey.JobContext, order: Order) -> str:
    """Runs after the checkout committed, on a runner's job slots; retried if it raises."""
    lines = ", ".join(f"{qty} x {sku}" for sku, qty in sorted(order.items.items()))
    text = f"order {order.order_id}: {lines}, total {order.total / 100:.2f}"
    # the job's id is the same on every attempt: the mail goes out once
    return await mailer.send(order.email, text, idempotency_key=f"receipt/{job.job_id}")
# --8<-- [end:job]


def refused(message: str) -> covey.ClusterError:
    """The cart's state does not allow this request: a 409 for the HTTP client."""
    return covey.ClusterError(message, reason=covey.Reason.INVALID_TRANSITION)


# --8<-- [start:cart]
class Cart(covey.Entity, type="Cart", state=CartState):
    """One live cart per cart id; its state survives restarts, crashes and moves."""

    state: CartState

    @covey.rpc(persisted=True, primary_key=lambda cmd: cmd.line_id)
    async def add(self, cmd: AddItem) -> CartView:
        if self.state.order is not None:
            raise refused(f"cart {self.ctx.entity_id} is checked out")
        self.state.items[cmd.sku] = self.state.items.get(cmd.sku, 0) + cmd.qty
        return self._view()

    @covey.rpc(persisted=True)
    async def checkout(self, cmd: Checkout) -> Order:
        if self.state.order is not None:
            return self.state.order  # a retried checkout: the same order, no second mail
        if not self.state.items:
            raise refused(f"cart {self.ctx.entity_id} is empty")
        total = sum(PRICES[sku] * qty for sku, qty in self.state.items.items())
        draft = Order(order_id=self.ctx.entity_id, email=cmd.email,
                      items=dict(self.state.items), total=total, receipt_job=0)
        # stored with this handler's commit, together with the new state: no
        # order without its receipt job, no job for an order that did not commit
        job = await send_receipt.submit(draft, transaction=self.ctx)
        self.state.order = draft.model_copy(update={"receipt_job": job.id})
        return self.state.order

    @covey.rpc
    async def view(self) -> CartView:
        return self._view()

    def _view(self) -> CartView:
        status: Literal["open", "ordered"] = "open" if self.state.order is None else "ordered"
        return CartView(cart_id=self.ctx.entity_id, items=dict(self.state.items), status=status)
# --8<-- [end:cart]


cluster.register(Cart)
app = FastAPI(lifespan=cluster.lifespan)
covey.asgi.install(app, cluster)


@app.post("/carts/{cart_id}/items")
async def add_item(cart_id: str, cmd: AddItem) -> CartView:
    return await cluster.client(Cart, cart_id).add(cmd)


@app.get("/carts/{cart_id}")
async def view_cart(cart_id: str) -> CartView:
    return await cluster.client(Cart, cart_id).view()


# --8<-- [start:routes]
@app.post("/carts/{cart_id}/checkout")
async def checkout(cart_id: str, cmd: Checkout) -> Order:
    return await cluster.client(Cart, cart_id).checkout(cmd)


class JobView(BaseModel):
    job_id: covey.asgi.JsonId
    state: str
    result: str | None = None


@app.get("/jobs/{job_id}")
async def job(job_id: covey.asgi.JsonId) -> JobView:
    status = await cluster.jobs.status(job_id)
    return JobView(job_id=status.id, state=status.state, result=status.result)
# --8<-- [end:routes]
