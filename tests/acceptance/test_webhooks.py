"""Webhooks through real runner processes on PostgreSQL, to a receiver that dedupes.

The runner sending a delivery is SIGKILLed while the receiver is still working
on it: the next owner sends the same ``webhook-id`` again, and the receiver
(``WebhookReceiver`` with a ``PostgresReceivedStore``) has its effect once. The
effects table has no unique constraint, so a second effect would show.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import uvicorn

import covey
from covey.webhooks import PostgresReceivedStore, VerifiedWebhook, WebhookReceiver

from ._harness import RunnerProcess, start_runner, wait_until
from .conftest import client_config

pytestmark = pytest.mark.acceptance

APP = "tests.acceptance.app:cluster"  # any covey application delivers webhooks


class Receiver:
    """The receiving application: its effect table, and a switch to hold a request."""

    def __init__(self, pool: asyncpg.Pool, secret: str) -> None:
        self.pool = pool
        self.arrivals: list[str] = []  # webhook ids, as requests reached the handler
        self.requests: list[str] = []  # every request's webhook id, duplicates included
        self.hold = asyncio.Event()
        self.holding = asyncio.Event()
        self.store = PostgresReceivedStore(pool)
        self.app = WebhookReceiver(secret, self.handle, store=self.store)

    async def handle(self, webhook: VerifiedWebhook, conn: Any) -> None:
        self.arrivals.append(webhook.id)
        if len(self.arrivals) == 1:  # the first one waits until the sender is killed
            self.holding.set()
            await self.hold.wait()
        await conn.execute("INSERT INTO effects (webhook_id) VALUES ($1)", webhook.id)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            self.requests.append(headers.get(b"webhook-id", b"").decode())
        await self.app(scope, receive, send)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def pool(fresh_pg_database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(fresh_pg_database, min_size=1, max_size=4) as pool:
        await pool.execute("CREATE TABLE effects (webhook_id text NOT NULL)")  # not unique
        yield pool


async def test_a_sender_killed_mid_send_resends_the_same_id_and_the_receiver_acts_once(
        fresh_pg_database: str, pool: asyncpg.Pool, runners: list[RunnerProcess]) -> None:
    loop = asyncio.get_running_loop()
    env = {"COVEY_WEBHOOKS_ALLOW_PRIVATE": "true"}
    first = await loop.run_in_executor(None, lambda: start_runner(fresh_pg_database, app=APP,
                                                                  **env))
    runners.append(first)
    cluster = covey.Cluster(client_config(fresh_pg_database), client_only=True)
    secret = str(covey.webhooks.generate_secret())
    receiver = Receiver(pool, secret)
    await receiver.store.setup()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        async with cluster:
            hooks = cluster.webhooks
            endpoint = await hooks.add_endpoint(f"http://127.0.0.1:{port}/hooks", secret=secret,
                                                allow_private=True, schedule=[1.0, 1.0, 1.0],
                                                timeout=60)
            sent = await hooks.send("invoice.paid", {"invoice": "i-1"})
            await asyncio.wait_for(receiver.holding.wait(), 30)  # the runner is sending
            second = await loop.run_in_executor(
                None, lambda: start_runner(fresh_pg_database, app=APP, **env))
            runners.append(second)
            first.kill()  # mid-send: its request is in the receiver's hands
            # the next owner sends the same webhook-id again; it waits on the first
            # request's row until that one commits, then sees a duplicate
            await wait_until(lambda: len(receiver.requests) >= 2, timeout=30)
            receiver.hold.set()

            async def delivered() -> bool:
                delivery = await hooks.delivery(sent.deliveries[endpoint.id])
                return delivery.state == "delivered"
            await wait_until(delivered, timeout=30)
            assert set(receiver.requests) == {sent.id}
            assert len(receiver.requests) >= 2
            effects = await pool.fetch("SELECT webhook_id FROM effects")
            assert [r["webhook_id"] for r in effects] == [sent.id]
    finally:
        receiver.hold.set()
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
