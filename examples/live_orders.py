"""Live order status: a browser page follows orders over SSE and gets notices over WebSocket.

Every pod runs this same app (a runner embedded) against one database; a page
served by one pod sees what is posted to any other:

- ``POST /orders/{order_id}`` (JSON ``{"status": "shipped", "owner": "alice"}``)
  calls the ``Order`` entity's persisted ``update``, which keeps the status as
  durable state and publishes the new ``OrderStatus`` to the stream ``"orders"``
  in the same transaction (an update that fails publishes nothing); then the
  owner gets a ``Notice`` through ``cluster.send_to_user(..., store=True)``,
  on whichever pod holds their WebSocket, or on their next connect. It answers
  ``{"order": {...}, "notice": "delivered" | "stored" | null}``.
- ``GET /streams/orders``: the stream over SSE (anyone may read it; a
  ``user:<uid>`` stream only with ``?token=demo-<uid>``).
- ``/rpc``: the ``OrdersApi`` contract over WebSocket (``status(OrderRef)``,
  pushes ``notice``), for a token ``demo-<uid>``.
- ``GET /?user=alice``: the page (``live_orders.html``, next to this file), which
  imports covey's browser client from ``GET /covey.js``.

One pod (the embedded SQLite default, ``covey.db`` in the current folder)::

    python examples/live_orders.py --port 8000

Two pods on PostgreSQL, one shell each::

    export COVEY_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    python examples/live_orders.py --port 8000
    python examples/live_orders.py --port 8001

Open http://127.0.0.1:8000/?user=alice, then update an order through the other pod::

    curl -X POST localhost:8001/orders/o-1 -H 'content-type: application/json' \\
         -d '{"status": "shipped", "owner": "alice"}'

The tokens are a DEMO scheme (``demo-<uid>`` is user ``<uid>``, no secret): a
real application verifies a signed, short-lived token in ``authenticate`` and
``may_read``.
"""

from __future__ import annotations

import argparse
import re
import uuid
from pathlib import Path

import pydantic
import uvicorn
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

import covey
import covey.asgi
from covey.realtime import (
    Contract,
    Handshake,
    Principal,
    client_js_app,
    listen_socket,
    method,
    push,
)

PAGE = Path(__file__).with_name("live_orders.html").read_text(encoding="utf-8")
ORDERS_STREAM = "orders"
NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # order and user ids: safe in URLs, stream names, tokens
DEMO_TOKEN = re.compile(r"demo-([A-Za-z0-9_.-]{1,64})")


class OrderRef(BaseModel):
    order_id: str = Field(pattern=NAME)


class OrderStatus(BaseModel):
    """What the ``orders`` stream carries and ``status`` answers."""

    order_id: str
    status: str
    version: int  # how many updates the order had: 0 for an order never updated


class Notice(BaseModel):
    """Pushed to an order's owner over WebSocket."""

    order_id: str
    status: str


class Update(BaseModel):
    status: str = Field(min_length=1, max_length=40)
    update_id: str = Field(min_length=1, max_length=100)  # the idempotency key


class OrderUpdate(BaseModel):
    """The body of ``POST /orders/{order_id}``."""

    status: str = Field(min_length=1, max_length=40)
    owner: str | None = Field(default=None, pattern=NAME)
    # send the same id again to retry safely: the order is updated once and the
    # owner's clients drop the repeated notice (it carries the same id)
    update_id: str | None = Field(default=None, min_length=1, max_length=100)


class OrderState(BaseModel):
    status: str | None = None
    version: int = 0


cluster = covey.Cluster.from_env()


class Order(covey.Entity, type="Order", state=OrderState):
    """One order; its status is durable state, on whichever pod owns its shard."""

    @covey.rpc(persisted=True, primary_key=lambda u: u.update_id)
    async def update(self, change: Update) -> OrderStatus:
        """Set the status; the stream item commits with it (and only with it)."""
        self.state.status = change.status
        self.state.version += 1
        status = self._status()
        await cluster.streams.publish(ORDERS_STREAM, status, transaction=self.ctx)
        return status

    @covey.rpc
    async def get(self) -> OrderStatus:
        """Volatile: answered from the owner's memory."""
        return self._status()

    def _status(self) -> OrderStatus:
        return OrderStatus(order_id=self.ctx.entity_id, status=self.state.status or "unknown",
                           version=self.state.version)


cluster.register(Order)


class OrdersApi(Contract):
    """What browsers and Python clients may do over the WebSocket."""

    @method
    async def status(self, ref: OrderRef) -> OrderStatus:
        """The order's current status."""
        ...

    notice = push(Notice, description="An order of yours changed.")


class OrdersService(OrdersApi):
    """The server side of :class:`OrdersApi`: one instance per connection."""

    async def status(self, ref: OrderRef) -> OrderStatus:
        return await cluster.client(Order, ref.order_id).get()


def demo_user(token: str | None) -> str | None:
    """DEMO ONLY: the user a ``demo-<uid>`` token names. Anyone can forge it; a real
    application checks a signed, expiring token (a JWT, a session ticket) here."""
    match = DEMO_TOKEN.fullmatch(token or "")
    return match.group(1) if match else None


def authenticate(handshake: Handshake) -> Principal | None:
    """WebSocket: the token (the browser sends it as the ``bearer.<token>``
    subprotocol) names the user; ``None`` closes the socket with 4401."""
    user = demo_user(handshake.token)
    return Principal(user=user) if user else None


def may_read(handshake: Handshake, stream: str) -> bool:
    """SSE: ``orders`` is public, ``user:<uid>`` needs ``?token=demo-<uid>``
    (``EventSource`` cannot send headers), nothing else is served."""
    if stream == ORDERS_STREAM:
        return True
    user = demo_user(handshake.query.get("token"))
    return user is not None and stream == f"user:{user}"


def _payload_invalid(error: pydantic.ValidationError) -> covey.SerializationError:
    fields = [".".join(str(part) for part in e["loc"]) for e in error.errors()]
    return covey.SerializationError(f"invalid request: {error.error_count()} error(s) in "
                                    f"{', '.join(fields)}", reason=covey.Reason.PAYLOAD_INVALID,
                                    fields=fields)


async def post_update(request: Request) -> JSONResponse:
    """``POST /orders/{order_id}``: update the order, then notify its owner."""
    try:
        ref = OrderRef(order_id=request.path_params["order_id"])
        body = OrderUpdate.model_validate_json(await request.body())
    except pydantic.ValidationError as exc:
        raise _payload_invalid(exc) from None  # covey.asgi answers 422 problem+json
    update_id = body.update_id or uuid.uuid4().hex
    status = await cluster.client(Order, ref.order_id).update(
        Update(status=body.status, update_id=update_id))
    outcome = None
    if body.owner is not None:
        # store=True: an owner with no open connection gets it on their next connect
        outcome = await cluster.send_to_user(
            body.owner, Notice(order_id=status.order_id, status=status.status),
            push="notice", id=f"{ref.order_id}/{update_id}", store=True)
    return JSONResponse({"order": status.model_dump(), "notice": outcome})


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"cache-control": "no-cache"})


app = Starlette(routes=[
    Route("/", page),
    Route("/covey.js", client_js_app()),
    Route("/orders/{order_id}", post_update, methods=["POST"]),
    Mount("/streams", app=cluster.sse(authorize=may_read)),
    WebSocketRoute("/rpc", cluster.websocket(OrdersService, authenticate=authenticate)),
], lifespan=cluster.lifespan)
# problem+json errors, request context, /livez /readyz /metrics, and the SIGTERM drain:
# readiness fails, every SSE stream gets retry: and every WebSocket closes 1012, so
# clients reconnect (to another pod behind a balancer) and resume where they were
covey.asgi.install(app, cluster)


def main(argv: list[str] | None = None) -> None:
    """Serve one pod: ``python examples/live_orders.py [--host H] [--port N]``."""
    parser = argparse.ArgumentParser(description="Live order status, one pod.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    # TCP keepalive and a write deadline on every connection: long-lived SSE and
    # WebSocket clients that vanish (sleeping laptops, lost NAT flows) are dropped
    sock = listen_socket(args.host, args.port)
    port = sock.getsockname()[1]
    print(f"live orders: http://{args.host}:{port}/?user=alice", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                          timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
