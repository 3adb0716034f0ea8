"""Outgoing webhooks: a billing app sends ``invoice.paid`` to a receiver that verifies it.

Both apps run in this one process. The receiver is a Starlette app served by
uvicorn on 127.0.0.1 (a free port): ``covey.webhooks.WebhookReceiver`` checks
each webhook's signature and records it once per ``webhook-id`` in a SQLite file
of its own. The sender is a covey cluster on the embedded SQLite default
(``covey.db`` in the current folder, or ``COVEY_DATABASE_URL``).

    python examples/webhooks.py
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvicorn
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Route

import covey
from covey.webhooks import (
    SqliteReceivedStore,
    VerifiedWebhook,
    WebhookReceiver,
    generate_secret,
    webhook_headers,
)


class InvoicePaid(BaseModel):
    invoice_id: str
    amount_cents: int
    currency: str = "EUR"


async def record(webhook: VerifiedWebhook, tx: sqlite3.Connection) -> None:
    """The receiver's handler: its write commits with the webhook's id, or neither does."""
    tx.execute("INSERT INTO paid VALUES (?, ?)", (webhook.id, webhook.body.decode()))


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 15
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within 15 s")
        await asyncio.sleep(0.02)


async def main(folder: Path) -> None:
    secret = generate_secret()  # the receiver keeps it; covey stores it with the endpoint
    receiver_db = folder / "receiver.db"
    with sqlite3.connect(receiver_db) as db:
        db.execute("CREATE TABLE paid (webhook_id TEXT, body TEXT)")
    store = SqliteReceivedStore(str(receiver_db))
    hooks = WebhookReceiver(secret, record, store=store)
    app = Starlette(routes=[Route("/hooks/billing", hooks, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                           log_level="warning", access_log=False))
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started or serving.done()
    await until(started, "the receiver starting")
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/billing"

    cluster = covey.Cluster.from_env()
    cluster.webhook_type("invoice.paid", InvoicePaid)  # every send is validated against it
    async with cluster:
        # covey refuses loopback and private addresses by default: a URL a user gives
        # must not make it call its own host or network. This receiver is ours.
        endpoint = await cluster.webhooks.add_endpoint(
            url, types=["invoice.*"], secret=secret, allow_private=True,
            description="examples/webhooks.py")
        try:
            paid = InvoicePaid(invoice_id="in_1001", amount_cents=4200)
            sent = await cluster.webhooks.send("invoice.paid", paid, id="msg_in_1001")
            delivery_id = sent.deliveries[endpoint.id]

            async def delivered() -> bool:
                return (await cluster.webhooks.delivery(delivery_id)).state == "delivered"
            await until(delivered, "the delivery")
            attempt = (await cluster.webhooks.delivery(delivery_id)).attempts[-1]
            print(f"delivered {sent.id} on attempt {attempt.number}: HTTP {attempt.status}")
            with sqlite3.connect(receiver_db) as db:
                [(webhook_id, body)] = db.execute("SELECT * FROM paid").fetchall()
            message = json.loads(body)
            print("receiver got:", webhook_id, message["type"], message["data"])

            # The same id again: the sender stores nothing new...
            again = await cluster.webhooks.send("invoice.paid", paid, id="msg_in_1001")
            print("sent again: duplicate", again.duplicate,
                  "same delivery", again.deliveries == sent.deliveries)
            # ...and a retry whose 200 got lost (same id, signed anew) runs no handler twice.
            async with httpx.AsyncClient() as http:
                retry = await http.post(url, content=body.encode(), headers=webhook_headers(
                    sent.id, int(time.time()), body.encode(), [secret]))
            with sqlite3.connect(receiver_db) as db:
                [(rows,)] = db.execute("SELECT count(*) FROM paid").fetchall()
            print("receiver on a retry:", retry.json()["status"], "- rows stored:", rows)
        finally:
            await cluster.webhooks.delete(endpoint.id)  # a re-run registers a new one
    server.should_exit = True
    await serving
    store.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="covey-webhooks-") as tmp:
        asyncio.run(main(Path(tmp)))
