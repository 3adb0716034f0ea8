"""The webhook receiver on PostgreSQL: the received id and the application's
effect commit together, so each ``webhook-id`` has exactly one effect, even when
the sender resends while the first attempt is still running."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from covey.core import ClusterError, TestClock
from covey.webhooks._receiver import PostgresReceivedStore, WebhookReceiver
from covey.webhooks._secrets import generate_secret
from covey.webhooks._signing import VerifiedWebhook, webhook_headers
from tests.unit._waiting import until

pytestmark = pytest.mark.postgres

SECRET = generate_secret()
CLOCK = TestClock()
BODY = b'{"type": "invoice.paid", "invoice": "in_1"}'


def signed(msg_id: str, body: bytes = BODY) -> dict[str, str]:
    return webhook_headers(msg_id, int(CLOCK.now()), body, [SECRET])


@pytest.fixture
def pg_url(pg_database: str) -> str:
    return pg_database  # sync: pg_database runs its own event loop


class Db:
    def __init__(self, pool: Any, received: str, effects: str) -> None:
        self.pool, self.received, self.effects = pool, received, effects

    async def ids(self) -> list[str]:
        return [r["id"] for r in await self.pool.fetch(
            f"SELECT id FROM {self.received} ORDER BY id")]

    async def rows(self) -> list[str]:
        return [r["invoice"] for r in await self.pool.fetch(
            f"SELECT invoice FROM {self.effects} ORDER BY n")]


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[Db]:
    suffix = uuid.uuid4().hex[:10]
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=6)
    db = Db(pool, f"received_{suffix}", f"paid_{suffix}")
    # deliberately no unique constraint: only the receiver stops a second row
    await pool.execute(f"CREATE TABLE {db.effects} (n SERIAL, invoice TEXT NOT NULL)")
    try:
        yield db
    finally:
        await pool.execute(f"DROP TABLE IF EXISTS {db.effects}, {db.received}")
        await pool.close()


class Effect:
    """Writes one row per call through the store's connection; can fail or block."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.calls = 0
        self.fail = False
        self.release: asyncio.Event | None = None

    async def __call__(self, webhook: VerifiedWebhook, tx: Any) -> None:
        self.calls += 1
        await tx.execute(f"INSERT INTO {self.table} (invoice) VALUES ($1)",
                         webhook.json()["invoice"])
        if self.release is not None:
            await self.release.wait()
        if self.fail:
            raise RuntimeError("the handler broke after writing")


async def receiver_for(db: Db, handler: Effect) -> WebhookReceiver:
    store = PostgresReceivedStore(db.pool, table=db.received)
    await store.setup()
    await store.setup()  # idempotent: every process may run it at start
    return WebhookReceiver(SECRET, handler, store=store, clock=CLOCK)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_a_duplicate_id_has_one_effect(db: Db) -> None:
    handler = Effect(db.effects)
    async with client_for(await receiver_for(db, handler)) as client:
        first = await client.post("/", content=BODY, headers=signed("msg_1"))
        again = await client.post("/", content=BODY, headers=signed("msg_1"))
    assert first.json() == {"status": "ok"} and again.json() == {"status": "duplicate"}
    assert handler.calls == 1 and await db.rows() == ["in_1"] and await db.ids() == ["msg_1"]


async def test_concurrent_requests_with_one_id_have_exactly_one_effect(db: Db) -> None:
    handler = Effect(db.effects)
    handler.release = asyncio.Event()
    receiver = await receiver_for(db, handler)

    async def second_waits_on_the_key() -> bool:
        # the resend blocks on the primary key until the first transaction ends
        waiting = await db.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%'")
        return bool(waiting == 1)

    async with client_for(receiver) as client:
        first = asyncio.ensure_future(client.post("/", content=BODY, headers=signed("msg_c")))
        await until(lambda: handler.calls == 1)
        second = asyncio.ensure_future(client.post("/", content=BODY, headers=signed("msg_c")))
        await until(second_waits_on_the_key)
        assert handler.calls == 1
        handler.release.set()
        answers = sorted([(await first).json()["status"], (await second).json()["status"]])
    assert answers == ["duplicate", "ok"]
    assert handler.calls == 1 and await db.rows() == ["in_1"] and await db.ids() == ["msg_c"]


async def test_a_failing_handler_records_nothing_and_the_resend_succeeds(db: Db) -> None:
    handler = Effect(db.effects)
    handler.fail = True
    async with client_for(await receiver_for(db, handler)) as client:
        failed = await client.post("/", content=BODY, headers=signed("msg_f"))
        assert failed.status_code == 500 and failed.json()["reason"] == "handler_failed"
        assert await db.ids() == [] and await db.rows() == []  # the write rolled back too
        handler.fail = False
        resent = await client.post("/", content=BODY, headers=signed("msg_f"))
    assert resent.json() == {"status": "ok"}
    assert handler.calls == 2 and await db.rows() == ["in_1"] and await db.ids() == ["msg_f"]


async def test_a_bad_signature_is_a_401_and_records_nothing(db: Db) -> None:
    handler = Effect(db.effects)
    async with client_for(await receiver_for(db, handler)) as client:
        forged = await client.post("/", content=b'{"invoice": "in_2"}',
                                   headers=signed("msg_b"))
    assert forged.status_code == 401 and forged.json()["reason"] == "webhook_signature_invalid"
    assert handler.calls == 0 and await db.ids() == [] and await db.rows() == []


async def test_purge_forgets_ids_older_than_the_limit(db: Db) -> None:
    store = PostgresReceivedStore(db.pool, table=db.received)
    await store.setup()
    for msg_id in ("msg_old", "msg_new"):
        async with store.once(msg_id) as tx:
            assert tx is not None
    await db.pool.execute(f"UPDATE {db.received} SET received_at = now() - interval '2 hours' "
                          "WHERE id = 'msg_old'")
    assert await store.purge(3600) == 1
    assert await db.ids() == ["msg_new"]
    async with store.once("msg_new") as tx:
        assert tx is None


async def test_a_schema_qualified_table_works_and_a_bad_name_is_refused(db: Db) -> None:
    store = PostgresReceivedStore(db.pool, table=f"public.{db.received}")
    await store.setup()
    async with store.once("msg_q") as tx:
        assert tx is not None
    assert await db.ids() == ["msg_q"]
    for bad in ("a b", "x; DROP TABLE y", "a.b.c", ""):
        with pytest.raises(ClusterError) as info:
            PostgresReceivedStore(db.pool, table=bad)
        assert info.value.details["field"] == "table"
