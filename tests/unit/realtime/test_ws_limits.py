"""Per-connection limits: frame size, rate, calls in flight, the bounded send queue
(overflow closes 1013) and the send timeout (a client that never reads is released)."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
from prometheus_client import REGISTRY

from covey.core import TestClock
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from .. import _waiting
from . import _ws_serving
from ._ws_serving import ChatImpl, Notice, Room, raw, serving

pytestmark = pytest.mark.timeout(60)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": "websocket"}) or 0.0


@pytest.fixture(autouse=True)
def room() -> Room:
    _ws_serving.ROOM = Room()
    return _ws_serving.ROOM


async def test_an_oversized_frame_gets_frame_too_large_and_the_socket_stays_open() -> None:
    async with serving(websocket_app(ChatImpl, max_frame=1000)) as served, \
            raw(served.url()) as client:
        await client.send({"t": "req", "id": 1, "m": "send", "p": {"text": "x" * 2000}})
        error = await client.recv()
        assert (error["t"], error["id"], error["r"]) == ("err", None, "frame_too_large")
        # 542 characters, 1032 bytes: the limit counts bytes
        await client.ws.send_str(json.dumps({"t": "req", "id": 2, "m": "send",
                                             "p": {"text": "é" * 490}}, ensure_ascii=False))
        assert (await client.recv())["r"] == "frame_too_large"
        # a reply larger than max_frame is refused too, for its call only (982 bytes in,
        # 1014 out)
        await client.send({"t": "req", "id": 3, "m": "send", "p": {"text": "y" * 930}})
        error = await client.recv()
        assert (error["id"], error["r"]) == (3, "frame_too_large")
        await client.send({"t": "req", "id": 4, "m": "send", "p": {"text": "ok"}})
        assert (await client.recv())["t"] == "res"


async def test_a_frame_above_the_servers_own_limit_closes_1009() -> None:
    async with serving(websocket_app(ChatImpl), ws_max_size=64 * 1024) as served, \
            raw(served.url()) as client:
        await client.ws.send_str("x" * 100_000)
        assert (await client.closed())[0] == 1009


async def test_frames_above_the_rate_are_refused_then_persistent_abuse_closes_1008() -> None:
    clock = TestClock()  # time moves only when the test says so
    async with serving(websocket_app(ChatImpl, rate=20, clock=clock)) as served, \
            raw(served.url()) as client:
        for _ in range(60):  # at one instant: a burst of 40 (twice the rate) is allowed
            await client.send({"t": "ping"})
        answers = [await client.recv() for _ in range(60)]
        assert answers[:40] == [{"t": "pong"}] * 40
        assert {(a["t"], a["r"]) for a in answers[40:]} == {("err", "rate_limited")}
        await clock.advance(1.0)  # the bucket refills at 20 per second: served again
        await client.send({"t": "ping"})
        assert await client.recv() == {"t": "pong"}
        for _ in range(400):  # far above the rate, for long: closed
            if client.ws.closed:
                break
            await client.send({"t": "ping"})
        code, reason = await client.closed()
        assert (code, reason) == (1008, "rate limit exceeded")


async def test_more_calls_in_flight_than_allowed_are_refused(room: Room) -> None:
    async with serving(websocket_app(ChatImpl, max_in_flight=2)) as served, \
            raw(served.url()) as client:
        for call_id in (1, 2, 3):
            await client.send({"t": "req", "id": call_id, "m": "send",
                               "p": {"text": f"hold {call_id}"}})
        error = await client.recv()
        assert (error["id"], error["r"]) == (3, "rate_limited")
        await client.send({"t": "req", "id": 2, "m": "send", "p": {"text": "again"}})
        error = await client.recv()
        assert (error["id"], error["r"]) == (2, "frame_invalid")  # id 2 is in flight
        room.gate.set()
        replies = {(await client.recv())["id"], (await client.recv())["id"]}
        assert replies == {1, 2}


async def test_a_full_send_queue_closes_1013_and_is_counted() -> None:
    connected: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connected.append(connection)

    before = sample("covey_realtime_buffer_overflows_total")
    app = websocket_app(ChatImpl, on_connect=on_connect, queue_frames=10)
    async with serving(app) as served, raw(served.url()) as client:
        await client.send({"t": "ping"})
        await client.recv_until("pong")
        (connection,) = connected
        results = [connection.deliver("notice", Notice(text=str(i))) for i in range(50)]
        assert results[:10] == [True] * 10 and not any(results[11:])
        assert connection.closed
        assert connection.queued == (0, 0)  # dropped at once, not sent
        assert (await client.closed()) == (1013, "try again later")
    assert sample("covey_realtime_buffer_overflows_total") == before + 1


async def test_a_client_that_never_reads_is_released_after_the_send_timeout() -> None:
    ended = asyncio.Event()
    connected: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connected.append(connection)

    async def on_disconnect(connection: Connection) -> None:
        ended.set()

    before = sample("covey_realtime_slow_disconnects_total")
    app = websocket_app(ChatImpl, on_connect=on_connect, on_disconnect=on_disconnect,
                        send_timeout=0.5, queue_frames=100_000, queue_bytes=256 * 1024 * 1024)
    async with serving(app, ws_per_message_deflate=False) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        await _waiting.until(lambda: bool(connected))
        connection = connected[0]
        try:
            text = "z" * 60_000
            while not ended.is_set() and not connection.closed:  # never read by the client
                connection.deliver("notice", Notice(text=text))
                await asyncio.sleep(0)
            await asyncio.wait_for(ended.wait(), 30)
        finally:
            writer.close()
    assert sample("covey_realtime_slow_disconnects_total") == before + 1
