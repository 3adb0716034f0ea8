"""examples/live_orders.py on SQLite, in this process, on a real uvicorn: an order
update posted over HTTP reaches an SSE client of ``/streams/orders`` and the
owner's WebSocket client of ``/rpc``; the page and ``covey.js`` are served; the
demo tokens decide who reads what; a notice for an offline owner waits for them.

The example's cluster is module state read from ``COVEY_*`` at import, so the
module is loaded afresh per test with the environment pointing at a database
in ``tmp_path``. The two-pod PostgreSQL run with a real browser is
tests/acceptance/test_realtime_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import uvicorn

from covey import RealtimeError
from covey.realtime import StreamMessage, connect, connect_sse, listen_socket

from ._waiting import until

pytestmark = pytest.mark.timeout(60)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "live_orders.py"
MODULE = "live_orders_under_test"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module, loaded afresh with its cluster on SQLite in ``tmp_path``."""
    for name in [k for k in os.environ if k.startswith("COVEY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COVEY_DATABASE_URL", f"sqlite:///{tmp_path / 'orders.db'}")
    spec = importlib.util.spec_from_file_location(MODULE, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, MODULE, module)  # its annotations resolve by module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` with its lifespan on uvicorn, as ``main()`` serves it; ``host:port``."""
    sock = listen_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), timeout=30)
        assert server.started, "the example did not start"
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_an_update_reaches_the_stream_and_the_owners_websocket(
        example: ModuleType) -> None:
    OrderStatus, Notice, OrderRef = example.OrderStatus, example.Notice, example.OrderRef
    async with serving(example.app) as host, aiohttp.ClientSession() as http:
        async with http.get(f"http://{host}/?user=alice") as page:
            html = await page.text()
            assert page.status == 200 and page.content_type == "text/html"
        for element in ('id="orders"', 'id="notices"', 'id="sse-state"', 'id="ws-state"',
                        'from "/covey.js"'):
            assert element in html
        async with http.get(f"http://{host}/covey.js") as module:
            assert module.status == 200 and module.content_type == "text/javascript"
            assert "export function subscribe" in await module.text()

        received: list[Any] = []
        notices: list[Any] = []
        feed = connect_sse(f"http://{host}/streams/orders", after="0:0")

        async def read() -> None:
            async for message in feed:
                assert isinstance(message, StreamMessage)
                received.append(OrderStatus.model_validate_json(message.data))

        reading = asyncio.create_task(read())
        alice = await connect(example.OrdersApi, f"ws://{host}/rpc", token="demo-alice",
                              on_push={"notice": notices.append})
        try:
            await until(lambda: feed.state == "open", timeout=10)
            url = f"http://{host}/orders/o-1"
            assert await post(http, url, {"status": "paid", "owner": "alice"}) == (
                200, {"order": {"order_id": "o-1", "status": "paid", "version": 1},
                      "notice": "delivered"})
            await until(lambda: bool(received and notices), timeout=10)
            assert received == [OrderStatus(order_id="o-1", status="paid", version=1)]
            assert notices == [Notice(order_id="o-1", status="paid")]
            assert await alice.status(OrderRef(order_id="o-1")) == received[0]

            # a retried update (same update_id) changes nothing and publishes nothing;
            # its notice reaches the client again, which drops it (same id)
            shipped = {"status": "shipped", "owner": "alice", "update_id": "u-2"}
            first = await post(http, url, shipped)
            assert first == await post(http, url, shipped)
            assert first[1]["order"]["version"] == 2
            assert await post(http, url, {"status": "delivered", "owner": "alice"}) == (
                200, {"order": {"order_id": "o-1", "status": "delivered", "version": 3},
                      "notice": "delivered"})
            # one connection's pushes and one stream's items arrive in order: a
            # repeat would show before the last ones
            await until(lambda: len(received) == 3 and len(notices) == 3, timeout=10)
            assert [(s.status, s.version) for s in received] == [
                ("paid", 1), ("shipped", 2), ("delivered", 3)]
            assert notices == [Notice(order_id="o-1", status=s)
                               for s in ("paid", "shipped", "delivered")]
            assert await alice.status(OrderRef(order_id="o-2")) == OrderStatus(
                order_id="o-2", status="unknown", version=0)
        finally:
            await alice.close()
            await feed.aclose()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


async def test_demo_tokens_decide_who_reads_and_an_offline_owner_gets_the_notice_later(
        example: ModuleType) -> None:
    async with serving(example.app) as host, aiohttp.ClientSession() as http:
        with pytest.raises(RealtimeError) as refused:
            await connect(example.OrdersApi, f"ws://{host}/rpc", token="alice")
        assert refused.value.reason == "unauthenticated"
        for url in (f"http://{host}/streams/user:bob", f"http://{host}/streams/user:bob"
                    "?token=demo-alice", f"http://{host}/streams/other"):
            async with http.get(url) as answer:
                assert (answer.status, (await answer.json(content_type=None))["reason"]) == (
                    403, "stream_forbidden"), url
        await example.cluster.streams.publish("user:bob", {"hello": "bob"})
        async with connect_sse(f"http://{host}/streams/user:bob?token=demo-bob",
                               after="0:0") as own:
            message = await asyncio.wait_for(anext(own), 10)
            assert isinstance(message, StreamMessage) and message.data == b'{"hello":"bob"}'

        status, problem = await post(http, f"http://{host}/orders/o-9", {"status": ""})
        assert (status, problem["reason"], problem["details"]["fields"]) == (
            422, "payload_invalid", ["status"])
        status, answer = await post(http, f"http://{host}/orders/o-9", {"status": "new"})
        assert (status, answer["notice"]) == (200, None)  # no owner: nobody to notify
        status, answer = await post(http, f"http://{host}/orders/o-9",
                                    {"status": "packed", "owner": "bob"})
        assert (status, answer["notice"]) == (200, "stored")  # bob has no connection

        notices: list[Any] = []
        bob = await connect(example.OrdersApi, f"ws://{host}/rpc", token="demo-bob",
                            on_push={"notice": notices.append})
        try:
            await until(lambda: bool(notices), timeout=10)
            assert notices == [example.Notice(order_id="o-9", status="packed")]
        finally:
            await bob.close()
