"""The receiving helper: verified webhooks run their handler once per id, and
nothing a sender (or an attacker) posts crashes it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from covey.core import ClusterError, Reason, TestClock
from covey.webhooks._receiver import MemoryReceivedStore, SqliteReceivedStore, WebhookReceiver
from covey.webhooks._secrets import WebhookSecret, generate_secret
from covey.webhooks._signing import VerifiedWebhook, webhook_headers
from tests.unit._waiting import until

SECRET = generate_secret()
BODY = b'{"type": "invoice.paid", "invoice": "in_1", "amount": 1200}'


def signed(msg_id: str, body: bytes = BODY, *, at: float | None = None,
           secret: WebhookSecret = SECRET) -> dict[str, str]:
    return webhook_headers(msg_id, int(CLOCK.now() if at is None else at), body, [secret])


CLOCK = TestClock()


class Recorder:
    """A handler that remembers its calls and can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[VerifiedWebhook] = []
        self.fail = False

    async def __call__(self, webhook: VerifiedWebhook, tx: Any) -> None:
        self.calls.append(webhook)
        tx.append(webhook.json()["invoice"])  # the effect, in the store's transaction
        if self.fail:
            raise RuntimeError("the handler broke")


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


@pytest.fixture
async def memory() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder]]:
    store, handler = MemoryReceivedStore(), Recorder()
    async with client_for(WebhookReceiver(SECRET, handler, store=store, clock=CLOCK)) as client:
        yield client, store, handler


async def test_a_verified_webhook_runs_the_handler_and_commits(
    memory: tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder],
) -> None:
    client, store, handler = memory
    response = await client.post("/", content=BODY, headers=signed("msg_ok"))
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert handler.calls == [VerifiedWebhook("msg_ok", int(CLOCK.now()), BODY)]
    assert store.effects == ["in_1"] and "msg_ok" in store


async def test_a_resent_id_is_a_duplicate_and_the_handler_runs_once(
    memory: tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder],
) -> None:
    client, store, handler = memory
    first = await client.post("/", content=BODY, headers=signed("msg_dup"))
    # the sender's retry: same id, a new timestamp and so a new signature
    again = await client.post("/", content=BODY, headers=signed("msg_dup", at=CLOCK.now() + 60))
    assert first.json() == {"status": "ok"} and again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    assert len(handler.calls) == 1 and store.effects == ["in_1"]


async def test_a_failing_handler_is_a_500_and_the_resend_runs_it_again(
    memory: tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, store, handler = memory
    handler.fail = True
    response = await client.post("/", content=BODY, headers=signed("msg_fail"))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["reason"] == "handler_failed"
    assert "the handler broke" not in response.text  # internals stay in the log
    assert "msg_fail" not in store and store.effects == []  # rolled back
    assert any(r.name == "covey.webhooks" and r.exc_info for r in caplog.records)
    handler.fail = False
    resent = await client.post("/", content=BODY, headers=signed("msg_fail"))
    assert resent.json() == {"status": "ok"}
    assert len(handler.calls) == 2 and store.effects == ["in_1"]


@pytest.mark.parametrize(("headers", "reason"), [
    ({**signed("msg_bad"), "webhook-signature": "v1,AAAA"}, "webhook_signature_invalid"),
    (signed("msg_bad", secret=generate_secret()), "webhook_signature_invalid"),
    (signed("msg_bad", b"{}"), "webhook_signature_invalid"),
    ({}, "webhook_signature_invalid"),
    (signed("msg_bad", at=CLOCK.now() - 301), "webhook_timestamp_invalid"),
    (signed("msg_bad", at=CLOCK.now() + 301), "webhook_timestamp_invalid"),
])
async def test_a_webhook_that_does_not_verify_is_a_401_and_nothing_is_recorded(
    memory: tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder],
    headers: dict[str, str], reason: str,
) -> None:
    client, store, handler = memory
    response = await client.post("/", content=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 401 and problem["reason"] == reason
    assert problem["type"] == f"urn:covey:reason:{reason}" and problem["title"]
    assert handler.calls == [] and "msg_bad" not in store


async def test_only_post_is_accepted(
    memory: tuple[httpx.AsyncClient, MemoryReceivedStore, Recorder],
) -> None:
    client, _, handler = memory
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(method, "/", headers=signed("msg_get"))
        assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert handler.calls == []


async def test_a_body_over_max_body_is_a_413() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, store=MemoryReceivedStore(), max_body=100,
                               clock=CLOCK)
    async with client_for(receiver) as client:
        big = b"[" + b"1," * 60 + b"1]"
        response = await client.post("/", content=big, headers=signed("msg_big", big))
        assert response.status_code == 413
        exact = b'{"invoice": "' + b"x" * 85 + b'"}'
        assert len(exact) == 100
        response = await client.post("/", content=exact, headers=signed("msg_exact", exact))
        assert response.status_code == 200
    assert [w.id for w in handler.calls] == ["msg_exact"]


async def _asgi_post(app: Any, headers: list[tuple[bytes, bytes]],
                     chunks: list[bytes]) -> tuple[int | None, int]:
    """POST through raw ASGI; the status and how many body chunks the app read."""
    sent: list[dict[str, Any]] = []
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return {"type": "http.request", "body": chunks[read - 1],
                "more_body": read < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await app(scope, receive, send)
    return (sent[0]["status"] if sent else None), read


async def test_a_large_body_is_refused_without_reading_the_rest() -> None:
    receiver = WebhookReceiver(SECRET, Recorder(), store=MemoryReceivedStore(), max_body=64)
    chunks = [b"x" * 40] * 1000
    assert await _asgi_post(receiver, [], chunks) == (413, 2)  # streamed: stops at 80 > 64
    declared = [(b"content-length", b"40000")]
    assert await _asgi_post(receiver, declared, chunks) == (413, 0)  # declared: reads nothing


async def test_mounted_in_starlette_or_as_a_route() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, store=MemoryReceivedStore(), clock=CLOCK)
    app = Starlette(routes=[Route("/hook", endpoint=receiver, methods=["POST"]),
                            Mount("/hooks", app=receiver)])
    async with client_for(app) as client:
        assert (await client.post("/hook", content=BODY, headers=signed("msg_r"))).json() == {
            "status": "ok"}
        mounted = await client.post("/hooks/billing", content=BODY, headers=signed("msg_m"))
        assert mounted.json() == {"status": "ok"}
    assert [w.id for w in handler.calls] == ["msg_r", "msg_m"]


async def test_a_resend_while_the_first_is_in_flight_waits_and_is_a_duplicate() -> None:
    store, release, calls = MemoryReceivedStore(), asyncio.Event(), []

    async def slow(webhook: VerifiedWebhook, tx: Any) -> None:
        calls.append(webhook.id)
        tx.append(webhook.id)
        await release.wait()

    async with client_for(WebhookReceiver(SECRET, slow, store=store, clock=CLOCK)) as client:
        first = asyncio.ensure_future(client.post("/", content=BODY, headers=signed("msg_c")))
        await until(lambda: calls == ["msg_c"])
        second = asyncio.ensure_future(client.post("/", content=BODY, headers=signed("msg_c")))
        release.set()
        answers = {(await first).json()["status"], (await second).json()["status"]}
    assert answers == {"ok", "duplicate"} and calls == ["msg_c"] and store.effects == ["msg_c"]


def test_the_receiver_refuses_bad_configuration() -> None:
    store = MemoryReceivedStore()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"secret": "nope"}, "secret"), ({"secret": []}, "secret"),
        ({"max_body": 0}, "max_body"), ({"tolerance": -5}, "tolerance"),
        ({"handler": "not callable"}, "handler")]
    for change, field in bad:
        kwargs: dict[str, Any] = {"secret": SECRET, "handler": Recorder(), "store": store,
                                  **change}
        with pytest.raises(ClusterError) as info:
            WebhookReceiver(kwargs.pop("secret"), kwargs.pop("handler"), **kwargs)
        assert info.value.reason is Reason.INVALID_ARGUMENT
        assert info.value.details["field"] == field


def _random_text(rng: random.Random) -> str:
    alphabet = "v1a,= .\t-_+/AZaz09é\x00\x7f" + "".join(map(chr, range(32, 127)))
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))


def _fuzzed_headers(rng: random.Random) -> list[tuple[str, str]]:
    base = signed(f"msg_{rng.randint(0, 5)}")
    headers: list[tuple[str, str]] = []
    for name, value in base.items():
        roll = rng.random()
        if roll < 0.2:
            continue  # missing
        if roll < 0.6:
            value = _random_text(rng)  # garbage
        elif roll < 0.7:
            value = value + " " + _random_text(rng)
        headers.append((rng.choice([name, name.upper(), name.title()]), value))
        if rng.random() < 0.05:
            headers.append((name, value))  # repeated
    return headers


async def test_random_input_never_crashes_it_nor_runs_the_handler() -> None:
    rng = random.Random(20260101)
    handler, store = Recorder(), MemoryReceivedStore()
    receiver = WebhookReceiver(SECRET, handler, store=store, max_body=512, clock=CLOCK)
    statuses: set[int] = set()
    async with client_for(receiver) as client:
        for _ in range(400):
            body = rng.randbytes(rng.randint(0, 700))
            headers = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in _fuzzed_headers(rng)]
            response = await client.post("/", content=body, headers=headers)
            statuses.add(response.status_code)
            json.loads(response.content)  # always an answer the sender can read
    assert statuses <= {401, 413} and 401 in statuses
    assert handler.calls == [] and store.effects == []


# -- SQLite --------------------------------------------------------------------------------

@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "sub" / "received.db")


def _effects_table(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    # deliberately no unique constraint: only the receiver stops a second row
    conn.execute("CREATE TABLE IF NOT EXISTS paid (invoice TEXT NOT NULL)")
    conn.commit()
    return conn


def _rows(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT invoice FROM paid ORDER BY rowid")]
    finally:
        conn.close()


def _received(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM covey_webhooks_received ORDER BY id")]
    finally:
        conn.close()


class SqliteEffect:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def __call__(self, webhook: VerifiedWebhook, tx: Any) -> None:
        assert isinstance(tx, sqlite3.Connection)
        self.calls += 1
        tx.execute("INSERT INTO paid (invoice) VALUES (?)", (webhook.json()["invoice"],))
        if self.fail:
            raise RuntimeError("the handler broke after writing")


async def test_sqlite_duplicate_runs_once_and_survives_reopening(db_path: str) -> None:
    Path(db_path).parent.mkdir()
    _effects_table(db_path).close()
    handler = SqliteEffect()
    store = SqliteReceivedStore(db_path, clock=CLOCK)
    async with client_for(WebhookReceiver(SECRET, handler, store=store, clock=CLOCK)) as c:
        assert (await c.post("/", content=BODY, headers=signed("msg_s"))).json()["status"] == "ok"
        assert (await c.post("/", content=BODY, headers=signed("msg_s"))).json()["status"] == (
            "duplicate")
    store.close()
    reopened = SqliteReceivedStore(db_path, clock=CLOCK)  # a restarted receiver process
    try:
        async with client_for(WebhookReceiver(SECRET, handler, store=reopened,
                                              clock=CLOCK)) as client:
            again = await client.post("/", content=BODY, headers=signed("msg_s"))
            assert again.json() == {"status": "duplicate"}
    finally:
        reopened.close()
    assert handler.calls == 1 and _rows(db_path) == ["in_1"] and _received(db_path) == ["msg_s"]


async def test_sqlite_failing_handler_rolls_back_its_writes_and_the_id(db_path: str) -> None:
    store = SqliteReceivedStore(db_path, clock=CLOCK)  # creates the directory and the table
    _effects_table(db_path).close()
    handler = SqliteEffect()
    handler.fail = True
    try:
        async with client_for(WebhookReceiver(SECRET, handler, store=store,
                                              clock=CLOCK)) as client:
            assert (await client.post("/", content=BODY, headers=signed("msg_x"))).status_code == (
                500)
            assert _rows(db_path) == [] and _received(db_path) == []
            handler.fail = False
            resent = await client.post("/", content=BODY, headers=signed("msg_x"))
            assert resent.json() == {"status": "ok"}
            bad = await client.post("/", content=BODY, headers=signed("msg_y", b"other"))
            assert bad.status_code == 401
    finally:
        store.close()
    assert handler.calls == 2 and _rows(db_path) == ["in_1"] and _received(db_path) == ["msg_x"]


async def test_sqlite_purge_forgets_old_ids(db_path: str) -> None:
    clock = TestClock()
    store = SqliteReceivedStore(db_path, clock=clock)
    try:
        async with store.once("msg_old") as tx:
            assert tx is not None
        await clock.advance(3600)
        async with store.once("msg_new") as tx:
            assert tx is not None
        assert await store.purge(1800) == 1
        async with store.once("msg_new") as tx:
            assert tx is None  # still remembered
        async with store.once("msg_old") as tx:
            assert tx is not None  # forgotten: would run again
    finally:
        store.close()


@pytest.mark.parametrize("table", ["", "a b", 'x"; DROP TABLE t; --', "s.t", "1t"])
def test_sqlite_store_refuses_a_table_name_that_is_not_an_identifier(
    db_path: str, table: str
) -> None:
    with pytest.raises(ClusterError) as info:
        SqliteReceivedStore(db_path, table=table)
    assert info.value.details["field"] == "table"


class BrokenStore:
    """A store whose database is down."""

    @contextlib.asynccontextmanager
    async def once(self, webhook_id: str) -> AsyncIterator[Any]:
        raise ConnectionError("database down")
        yield  # pragma: no cover - makes this a generator


async def test_a_store_failure_is_a_503_and_the_handler_does_not_run() -> None:
    handler = Recorder()
    receiver = WebhookReceiver(SECRET, handler, store=BrokenStore(), clock=CLOCK)
    async with client_for(receiver) as client:
        response = await client.post("/", content=BODY, headers=signed("msg_down"))
    assert response.status_code == 503 and response.json()["reason"] == "storage_unavailable"
    assert handler.calls == []
