"""The Python SSE client against a real uvicorn: it reconnects, resumes without a gap
or a duplicate, backs off within its cap, honours retry hints, and stops when told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from covey.core import RealtimeError, Reason
from covey.realtime import Cursor, Reset, StreamMessage
from covey.realtime._sse import sse_app
from covey.realtime._sse_client import SseClient, connect_sse
from tests.unit._waiting import until
from tests.unit.realtime._fake_streams import FakeStreams, serving

App = Callable[[Any, Any, Any], Awaitable[None]]


class Recorder:
    """An ASGI app in front of another: records each request's time and Last-Event-ID,
    and answers the first ones itself (``refuse`` statuses, or a silent stream)."""

    def __init__(self, app: App, *, refuse: list[int] | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, silent: int = 0) -> None:
        self.app = app
        self.refuse = list(refuse or [])
        self.headers = headers or []
        self.silent = silent
        self.requests: list[tuple[float, str | None]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append((asyncio.get_running_loop().time(), headers.get("last-event-id")))
        if self.refuse:
            status = self.refuse.pop(0)
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-length", b"0"), *self.headers]})
            await send({"type": "http.response.body", "body": b""})
        elif self.silent:
            self.silent -= 1
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            while (await receive())["type"] != "http.disconnect":
                pass
        else:
            await self.app(scope, receive, send)


async def collect(client: SseClient, count: int, timeout: float = 20.0) -> list[Any]:
    async with asyncio.timeout(timeout):
        return [await anext(client) for _ in range(count)]


def numbers(items: list[Any]) -> list[int]:
    return [json.loads(item.data)["n"] for item in items]


async def test_it_resumes_after_every_drop_without_gap_or_duplicate() -> None:
    streams = FakeStreams(close_after=7)  # the server ends each stream after 7 items
    for n in range(1, 51):
        streams.publish("orders", {"n": n})
    hooked: list[int] = []

    async def on_reconnect(attempt: int) -> None:
        hooked.append(attempt)

    app = Recorder(sse_app(streams.subscribe, retry_ms=0))
    async with serving(app) as served, connect_sse(
            f"{served.url}/orders", after="7:0", on_reconnect=on_reconnect) as client:
        assert client.stream == "orders"
        items = await collect(client, 50)
        assert numbers(items) == list(range(1, 51))
        assert [i.cursor for i in items] == [Cursor(7, n) for n in range(1, 51)]
        assert all(isinstance(i, StreamMessage) and i.stream == "orders" for i in items)
        assert (client.cursor, client.state) == (Cursor(7, 50), "open")
        assert client.reconnects == 7 and hooked == list(range(1, 8))
        # each request resumed from the last item delivered
        assert [cursor for _, cursor in app.requests] == [f"7:{n}" for n in range(0, 50, 7)]
        streams.publish("orders", {"n": 51})  # live items keep coming
        assert numbers(await collect(client, 1)) == [51]
    assert client.state == "closed"


async def test_it_drops_an_item_it_delivered_already() -> None:
    streams = FakeStreams(close_after=5, replay=2)  # a faulty server repeats 2 items
    for n in range(1, 21):
        streams.publish("orders", {"n": n})
    calls: list[int] = []
    async with serving(sse_app(streams.subscribe, retry_ms=0)) as served, connect_sse(
            f"{served.url}/orders", after=Cursor(7, 0), on_reconnect=calls.append) as client:
        assert numbers(await collect(client, 20)) == list(range(1, 21))
        assert calls == list(range(1, client.reconnects + 1)) and calls


async def test_a_reset_moves_the_cursor_to_the_new_epoch() -> None:
    streams = FakeStreams()
    streams.publish("orders", {"n": 1})
    async with serving(sse_app(streams.subscribe)) as served, connect_sse(
            f"{served.url}/orders", after="3:40") as client:
        reset, item = await collect(client, 2)
        assert reset == Reset("orders", Cursor(7, 0))
        assert item.cursor == Cursor(7, 1) and client.cursor == Cursor(7, 1)


async def test_backoff_and_retry_after_stay_within_the_cap() -> None:
    streams = FakeStreams()
    streams.publish("orders", {"n": 1})
    # uncapped, ten failures would back off for about a minute; Retry-After asks an hour
    app = Recorder(sse_app(streams.subscribe), refuse=[503, 502, 429, 408] * 2 + [500, 503],
                   headers=[(b"retry-after", b"3600")])
    async with serving(app) as served, connect_sse(
            f"{served.url}/orders?after=7:0", cap=0.05) as client:
        assert numbers(await collect(client, 1, timeout=20)) == [1]
        assert len(app.requests) == 11
        assert client.reconnects == 0  # failed attempts are not reconnections


async def test_a_retry_hint_is_the_least_delay_of_the_next_attempt() -> None:
    streams = FakeStreams(close_after=1)
    for n in range(1, 4):
        streams.publish("orders", {"n": n})
    app = Recorder(sse_app(streams.subscribe, retry_ms=400))
    async with serving(app) as served, connect_sse(f"{served.url}/orders",
                                                   after="7:0") as client:
        assert numbers(await collect(client, 3)) == [1, 2, 3]
        (first, _), (second, _), (third, _) = app.requests
        assert second - first >= 0.4 and third - second >= 0.4
    app = Recorder(sse_app(streams.subscribe, retry_ms=3_600_000))  # an hour: capped
    async with serving(app) as served, connect_sse(f"{served.url}/orders", after="7:0",
                                                   cap=0.1) as client:
        assert numbers(await collect(client, 3)) == [1, 2, 3]


async def test_a_silent_connection_counts_as_dead() -> None:
    streams = FakeStreams()
    streams.publish("orders", {"n": 1})
    app = Recorder(sse_app(streams.subscribe), silent=1)
    async with serving(app) as served, connect_sse(
            f"{served.url}/orders", after="7:0", read_timeout=0.3) as client:
        assert numbers(await collect(client, 1)) == [1]
        assert client.reconnects == 1 and len(app.requests) == 2


async def test_204_stops_it() -> None:
    app = Recorder(sse_app(FakeStreams().subscribe), refuse=[204])
    async with serving(app) as served:
        client = connect_sse(f"{served.url}/orders")
        assert [item async for item in client] == []
        assert client.state == "closed" and len(app.requests) == 1


@pytest.mark.parametrize(("path", "reason"), [("/secret", Reason.STREAM_FORBIDDEN),
                                              ("/orders?after=x", Reason.CURSOR_INVALID),
                                              ("/a%20b", Reason.INVALID_ARGUMENT)])
async def test_a_final_refusal_raises_its_reason(path: str, reason: Reason) -> None:
    app = Recorder(sse_app(FakeStreams().subscribe, authorize=lambda h, n: n != "secret"))
    async with serving(app) as served:
        client = connect_sse(served.url + path)
        with pytest.raises(RealtimeError) as caught:
            await anext(client)
        assert caught.value.reason is reason and caught.value.details["status"] in (400, 403)
        assert client.state == "closed" and len(app.requests) == 1


async def test_a_plain_404_raises_invalid_argument() -> None:
    app = Recorder(sse_app(FakeStreams().subscribe), refuse=[404])
    async with serving(app) as served:
        with pytest.raises(RealtimeError) as caught:
            await anext(connect_sse(f"{served.url}/orders"))
        assert caught.value.reason is Reason.INVALID_ARGUMENT


async def test_aclose_ends_a_waiting_iteration() -> None:
    streams = FakeStreams()
    async with serving(sse_app(streams.subscribe)) as served:
        client = connect_sse(f"{served.url}/orders")
        states = [client.state]  # "connecting" until its first use
        waiting = asyncio.create_task(anext(client))
        await until(lambda: client.state == "open")
        await client.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        assert [*states, client.state] == ["connecting", "closed"]
        await until(lambda: streams.of("orders")[0].closed)


def test_a_bad_cursor_or_cap_is_refused() -> None:
    with pytest.raises(RealtimeError) as caught:
        connect_sse("http://x/orders", after="nope")
    assert caught.value.reason is Reason.CURSOR_INVALID
    with pytest.raises(Exception, match="cap"):
        connect_sse("http://x/orders", cap=0)
