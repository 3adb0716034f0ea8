"""Webhooks on PostgreSQL in one process: sending inside the application's
transaction (the outbox), and endpoints changed by several members at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

import covey
from covey.core import CoveyConfig, StorageOptions, WebhookOptions
from tests.unit._waiting import until
from tests.unit.webhooks._stub import StubReceiver, serving

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database


def member(url: str, schema: str, *, client_only: bool = False) -> covey.Cluster:
    return covey.Cluster(CoveyConfig(database_url=url, shards=8, cluster_secret="s",
                                     storage=StorageOptions(schema=schema),
                                     webhooks=WebhookOptions(allow_private=True)),
                         client_only=client_only)


@pytest.fixture
async def stub() -> AsyncIterator[StubReceiver]:
    async with serving(StubReceiver(covey.core.SystemClock().now)) as receiver:
        yield receiver


async def test_a_rolled_back_transaction_sends_nothing(pg_url: str, stub: StubReceiver) -> None:
    schema = f"hooks_{uuid.uuid4().hex[:12]}"
    async with member(pg_url, schema) as cluster:
        hooks = cluster.webhooks
        endpoint = await hooks.add_endpoint(stub.url())
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("CREATE TABLE invoices (id text)")  # no unique constraint
            lost = None
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO invoices VALUES ('i-1')")
                    lost = await hooks.send("invoice.paid", {"id": "i-1"}, transaction=conn)
                    raise RuntimeError("the payment failed")
            except RuntimeError:
                pass
            assert lost is not None
            async with conn.transaction():
                await conn.execute("INSERT INTO invoices VALUES ('i-2')")
                kept = await hooks.send("invoice.paid", {"id": "i-2"}, transaction=conn)
            await until(lambda: len(stub.received) == 1, timeout=10)
            assert stub.received[0].id == kept.id
            assert stub.received[0].json()["data"] == {"id": "i-2"}
            with pytest.raises(covey.WebhookError):
                await hooks.delivery(lost.deliveries[endpoint.id])
            assert [d.message_id for d in await hooks.deliveries()] == [kept.id]
            assert await conn.fetchval("SELECT count(*) FROM invoices") == 1
        finally:
            await conn.close()
        # nothing else arrives later either (the outbox row never existed)
        assert [r.id for r in stub.received] == [kept.id]


async def test_members_adding_endpoints_at_once_lose_none(pg_url: str) -> None:
    schema = f"hooks_{uuid.uuid4().hex[:12]}"
    async with member(pg_url, schema) as first, \
            member(pg_url, schema, client_only=True) as second:

        async def add(cluster: covey.Cluster, n: int) -> str:
            endpoint = await cluster.webhooks.add_endpoint(f"https://example.com/{n}")
            return endpoint.id

        ids = await asyncio.gather(*(add(first if n % 2 else second, n) for n in range(30)))
        stored = await first.webhooks.endpoints()
        assert sorted(e.id for e in stored) == sorted(ids)
        assert sorted(e.url for e in stored) == sorted(f"https://example.com/{n}"
                                                       for n in range(30))
