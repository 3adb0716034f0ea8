"""The SSE endpoint on a real uvicorn: items, resume, reset, heartbeats, closing,
refusals, disconnects, mounting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount, Route

from covey.core import RealtimeError, Reason
from covey.realtime import Cursor, Handshake
from covey.realtime._sse import EventStreamResponse, sse_app
from tests.unit._waiting import until
from tests.unit.realtime._fake_streams import FakeStreams, frames, rest, serving, take


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": "sse"}) or 0.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_items_arrive_in_order_with_their_ids(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    sent = sample("covey_realtime_items_sent_total")
    async with serving(sse_app(streams.subscribe)) as served, \
            http.get(f"{served.url}/orders") as response:
        assert response.status == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        await until(lambda: bool(streams.of("orders")))
        streams.publish("orders", {"n": 1})
        streams.publish("orders", {"n": 2}, event="created")
        streams.publish("orders", None, raw=b"line one\nline two")
        assert await take(frames(response), 3) == [
            'id: 7:1\ndata: {"n": 1}',
            'id: 7:2\nevent: created\ndata: {"n": 2}',
            "id: 7:3\ndata: line one\ndata: line two",
        ]
    assert sample("covey_realtime_items_sent_total") == sent + 3


async def test_resume_from_last_event_id_or_after(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    for n in range(1, 6):
        streams.publish("orders", {"n": n})
    resumed = sample("covey_realtime_reconnects_total")
    async with serving(sse_app(streams.subscribe)) as served:
        for headers, query, first in (({"last-event-id": "7:2"}, "", 3),
                                      ({}, "?after=7:4", 5),
                                      ({"last-event-id": "7:1"}, "?after=7:4", 2)):
            async with http.get(f"{served.url}/orders{query}", headers=headers) as response:
                got = await take(frames(response), 6 - first)
                assert [f.splitlines()[0] for f in got] == [
                    f"id: 7:{n}" for n in range(first, 6)]
    assert sample("covey_realtime_reconnects_total") == resumed + 3


async def test_a_cursor_out_of_retention_gets_a_reset(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    for n in range(1, 6):
        streams.publish("orders", {"n": n})
    streams.trim("orders", 4)  # 7:1 .. 7:3 are gone
    async with serving(sse_app(streams.subscribe)) as served:
        for cursor in ("3:10", "7:1"):  # another epoch; trimmed away
            async with http.get(f"{served.url}/orders",
                                headers={"last-event-id": cursor}) as response:
                assert await take(frames(response), 3) == [
                    'event: reset\nid: 7:3\ndata: {"cursor": "7:3"}',
                    'id: 7:4\ndata: {"n": 4}', 'id: 7:5\ndata: {"n": 5}']


async def test_an_idle_stream_gets_heartbeats(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    async with serving(sse_app(streams.subscribe, heartbeat=0.2)) as served, \
            http.get(f"{served.url}/orders") as response:
        assert await take(frames(response), 2) == [": ping", ": ping"]


async def test_no_heartbeat_while_items_flow(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    async with serving(sse_app(streams.subscribe, heartbeat=1.0)) as served, \
            http.get(f"{served.url}/orders") as response:
        await until(lambda: bool(streams.of("orders")))

        async def publish() -> None:
            for n in range(100):  # 2 s of items, one every 20 ms: never a second apart
                streams.publish("orders", {"n": n})
                await asyncio.sleep(0.02)

        stream = frames(response)
        async with asyncio.TaskGroup() as group:
            group.create_task(publish())
            got = await take(stream, 100, timeout=30)
        assert all(frame.startswith("id: ") for frame in got)
        assert await take(stream, 1) == [": ping"]  # idle again: heartbeats resume


@pytest.mark.parametrize("ending", ["overflow", "end"])
async def test_overflow_or_the_end_of_the_subscription_sends_retry_and_closes(
        http: aiohttp.ClientSession, ending: str) -> None:
    streams = FakeStreams(overflow_after=2) if ending == "overflow" else FakeStreams(
        close_after=2)
    for n in range(1, 6):
        streams.publish("orders", {"n": n})
    overflows = sample("covey_realtime_buffer_overflows_total")
    async with serving(sse_app(streams.subscribe, retry_ms=1500)) as served, \
            http.get(f"{served.url}/orders?after=7:0") as response:
        assert await rest(frames(response)) == [
            'id: 7:1\ndata: {"n": 1}', 'id: 7:2\ndata: {"n": 2}', "retry: 1500"]
    assert sample("covey_realtime_buffer_overflows_total") == overflows + (
        ending == "overflow")
    assert streams.of("orders")[0].closed


async def test_closing_ends_every_stream_with_retry(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    closing = asyncio.Event()
    # heartbeat and send timeout far above the deadline: only `closing` can end them in time
    app = sse_app(streams.subscribe, closing=closing, heartbeat=30, send_timeout=30)
    async with serving(app) as served:
        responses = [await http.get(f"{served.url}/{name}") for name in ("a", "b", "orders")]
        await until(lambda: len(streams.subscriptions) == 3)
        streams.publish("orders", {"n": 1})
        assert await take(frames(responses[2]), 1) == ['id: 7:1\ndata: {"n": 1}']
        closing.set()
        async with asyncio.timeout(5):
            ended = await asyncio.gather(*(rest(frames(r)) for r in responses))
        assert ended == [["retry: 1000"]] * 3
        async with http.get(f"{served.url}/late") as late:  # while draining
            assert late.status == 200
            assert await rest(frames(late)) == ["retry: 1000"]
        for response in responses:
            response.close()
    assert all(s.closed for s in streams.subscriptions)


async def test_refusals_are_problem_documents(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    seen: list[tuple[Handshake, str]] = []

    async def authorize(handshake: Handshake, name: str) -> bool:
        seen.append((handshake, name))
        return name != "secret"

    async def subscribe(name: str, cursor: Cursor | None, handshake: Handshake) -> object:
        if name == "down":
            raise RealtimeError("no storage", reason=Reason.STORAGE_UNAVAILABLE)
        if name == "mine":
            raise RealtimeError("not yours", reason=Reason.STREAM_FORBIDDEN)
        return await streams.subscribe(name, cursor, handshake)

    app = sse_app(subscribe, authorize=authorize)  # type: ignore[arg-type]
    cases = [("GET", "/secret", {}, 403, "stream_forbidden"),
             ("GET", "/mine", {}, 403, "stream_forbidden"),
             ("GET", "/orders", {"last-event-id": "nope"}, 400, "cursor_invalid"),
             ("GET", "/orders?after=1:2:3", {}, 400, "cursor_invalid"),
             ("GET", "/", {}, 400, "invalid_argument"),
             ("GET", "/a%2Fb", {}, 400, "invalid_argument"),
             ("GET", "/bad%20name", {}, 400, "invalid_argument"),
             ("GET", "/" + "x" * 201, {}, 400, "invalid_argument"),
             ("POST", "/orders", {}, 405, "invalid_argument"),
             ("GET", "/down", {}, 503, "storage_unavailable")]
    async with serving(app) as served:
        for method, path, headers, status, reason in cases:
            async with http.request(method, served.url + path, headers=headers) as response:
                assert response.status == status, path
                assert response.content_type == "application/problem+json"
                body = json.loads(await response.read())
                assert body["type"] == "about:blank"
                assert (body["status"], body["reason"]) == (status, reason)
                assert body["title"] and body["detail"]
                if status == 405:
                    assert response.headers["allow"] == "GET"
                if status == 503:
                    assert response.headers["retry-after"] == "1"
    assert streams.subscriptions == []
    handshake, name = seen[0]
    assert name == "secret" and handshake.path == "/secret"


async def test_the_handshake_carries_the_bearer_token(http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    async with serving(sse_app(streams.subscribe, authorize=lambda h, n: True)) as served, \
            http.get(f"{served.url}/user:42?x=1",
                     headers={"authorization": "Bearer t0k"}) as response:
        assert response.status == 200
        handshake = streams.handshakes[0]
        assert (handshake.token, handshake.query, handshake.path) == ("t0k", {"x": "1"},
                                                                      "/user:42")
        response.close()


async def test_a_client_disconnect_closes_the_subscription(
        http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()
    open_before = sample("covey_realtime_connections")
    async with serving(sse_app(streams.subscribe)) as served:
        response = await http.get(f"{served.url}/orders")
        await until(lambda: bool(streams.of("orders")))
        assert sample("covey_realtime_connections") == open_before + 1
        response.close()
        await until(lambda: streams.of("orders")[0].closed)
        await until(lambda: sample("covey_realtime_connections") == open_before)


async def test_mounted_in_starlette_and_returned_by_a_route(
        http: aiohttp.ClientSession) -> None:
    streams = FakeStreams()

    async def custom(request: Request) -> EventStreamResponse:
        subscription = await streams.subscribe("custom", None, None)  # type: ignore[arg-type]
        return EventStreamResponse(subscription, headers={"X-Stream": "custom"})

    app = Starlette(routes=[Mount("/streams", app=sse_app(streams.subscribe)),
                            Route("/custom", custom)])
    async with serving(app) as served:
        for path, name in (("/streams/user:42", "user:42"), ("/custom", "custom")):
            async with http.get(served.url + path) as response:
                assert response.status == 200
                await until(lambda: bool(streams.of(name)))  # noqa: B023
                streams.publish(name, {"to": name})
                assert await take(frames(response), 1) == [f'id: 7:1\ndata: {{"to": "{name}"}}']
                if name == "custom":
                    assert response.headers["x-stream"] == "custom"


async def test_a_websocket_is_refused(http: aiohttp.ClientSession) -> None:
    async with serving(sse_app(FakeStreams().subscribe)) as served:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(f"{served.url}/orders")
        assert caught.value.status == 403
