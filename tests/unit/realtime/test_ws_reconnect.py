"""The Python client across server restarts: it reconnects (to a second server on the same
port), resumes, flushes the calls buffered meanwhile, never resends a call that was in
flight, bounds its buffer, and drops a push repeated around the reconnect."""

from __future__ import annotations

import asyncio

import pytest

from covey.core import RealtimeError, Reason
from covey.realtime._ws_client import connect
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from .. import _waiting
from . import _ws_serving
from ._ws_serving import Chat, ChatImpl, Notice, Room, SendMsg, serving

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def room() -> Room:
    _ws_serving.ROOM = Room()
    return _ws_serving.ROOM


async def test_a_draining_pod_sends_the_client_to_the_next_server(room: Room) -> None:
    closing = asyncio.Event()
    connected: list[Connection] = []
    reconnected: list[str] = []
    pushed: list[str] = []

    async def on_connect(connection: Connection) -> None:
        connected.append(connection)

    async def on_reconnect() -> None:  # the app re-subscribes here: calls go straight out
        reconnected.append((await chat.whoami()).text)

    async with serving(websocket_app(ChatImpl, closing=closing, on_connect=on_connect)) as first:
        port = first.port
        chat = await connect(Chat, first.url(), cap=0.2, on_reconnect=on_reconnect,
                             on_push={"notice": lambda n: pushed.append(n.text)})
        assert (await chat.send(SendMsg(text="before"))).id == 1
        connected[0].deliver("notice", Notice(text="once"), mid="mid-1")
        await _waiting.until(lambda: pushed == ["once"])
        closing.set()
        await _waiting.until(lambda: chat.state == "reconnecting")
    try:
        assert chat.state == "reconnecting"
        # calls made while no server runs wait in the buffer, in order
        buffered = [asyncio.create_task(chat.send(SendMsg(text=f"buffered {i}")))
                    for i in range(3)]
        await _waiting.until(lambda: chat.buffered == 3)
        async with serving(websocket_app(ChatImpl, on_connect=on_connect), port=port):
            results = await asyncio.gather(*buffered)
            assert [r.echo.text for r in results if r.echo] == [f"buffered {i}" for i in range(3)]
            await _waiting.until(lambda: reconnected == ["None"])
            assert (chat.state, chat.reconnects) == ("open", 1)
            # the message stored meanwhile is handed over again: the client drops the repeat
            connected[-1].deliver("notice", Notice(text="once"), mid="mid-1")
            connected[-1].deliver("notice", Notice(text="twice"), mid="mid-2")
            await _waiting.until(lambda: len(pushed) >= 2)
            await chat.whoami()
            assert pushed == ["once", "twice"]
    finally:
        await chat.close()
    assert room.sent == ["before", "buffered 0", "buffered 1", "buffered 2"]
    assert chat.state == "closed"


async def test_a_call_in_flight_when_the_socket_drops_fails_and_is_not_resent(
        room: Room) -> None:
    async with serving(websocket_app(ChatImpl)) as first:
        port = first.port
        chat = await connect(Chat, first.url(), cap=0.2)
        held = asyncio.create_task(chat.send(SendMsg(text="hold me")))
        await _waiting.until(room.started.is_set)
    try:  # the server stopped under the call
        with pytest.raises(RealtimeError) as info:
            await held
        assert info.value.reason is Reason.PEER_UNAVAILABLE and info.value.retryable
        async with serving(websocket_app(ChatImpl), port=port):
            assert (await chat.send(SendMsg(text="after"))).id == 1
            assert room.sent == ["after"]  # "hold me" never ran to the end, nor again
    finally:
        await chat.close()


async def test_the_buffer_is_bounded_and_each_call_has_a_deadline(room: Room) -> None:
    async with serving(websocket_app(ChatImpl)) as first:
        chat = await connect(Chat, first.url(), cap=0.2, buffer=2, call_timeout=2.0)
    try:
        await _waiting.until(lambda: chat.state == "reconnecting")
        waiting = [asyncio.create_task(chat.send(SendMsg(text=str(i)))) for i in range(2)]
        await _waiting.until(lambda: chat.buffered == 2)
        with pytest.raises(RealtimeError) as info:
            await chat.send(SendMsg(text="one too many"))
        assert info.value.reason is Reason.RATE_LIMITED
        for task in waiting:  # nobody came back within call_timeout
            with pytest.raises(RealtimeError) as info:
                await task
            assert info.value.reason is Reason.TIMEOUT
        assert (chat.buffered, chat.in_flight) == (0, 0)  # the expired calls left the buffer
    finally:
        await chat.close()
    with pytest.raises(RealtimeError) as info:
        await chat.send(SendMsg(text="closed"))
    assert info.value.reason is Reason.SHUTTING_DOWN


async def test_a_stream_waiting_in_the_buffer_is_sent_after_the_reconnect(room: Room) -> None:
    async with serving(websocket_app(ChatImpl)) as first:
        port = first.port
        chat = await connect(Chat, first.url(), cap=0.2)
    try:
        await _waiting.until(lambda: chat.state == "reconnecting")

        async def read() -> list[int]:
            return [m.seq async for m in chat.history({"after": 1, "count": 2})]

        reading = asyncio.create_task(read())
        await _waiting.until(lambda: chat.buffered == 1)
        async with serving(websocket_app(ChatImpl), port=port):
            assert await reading == [2, 3]
    finally:
        await chat.close()
