"""The Python client against a real uvicorn: typed calls and streams in both codecs,
typed errors, pushes (each mid once), and the three ways to send a token."""

from __future__ import annotations

import decimal
from collections.abc import AsyncIterator

import pytest

from covey.core import RealtimeError, Reason, TestClock
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_client import connect
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from .. import _waiting
from . import _ws_serving
from ._ws_serving import Chat, ChatImpl, Msg, MsgId, Notice, Room, SendMsg, Served, Since, serving

pytestmark = pytest.mark.timeout(60)
CONNECTED: list[Connection] = []
CLOCK = TestClock()  # the server's: expiry happens when a test advances it


async def remember(connection: Connection) -> None:
    CONNECTED.append(connection)


def authenticate(handshake: Handshake) -> Principal | None:
    if handshake.token == "good":
        return Principal(user="ann")
    if handshake.token == "banned":
        raise RealtimeError("banned", reason=Reason.FORBIDDEN)
    if handshake.token and handshake.token.startswith("short"):
        return Principal(user=handshake.token, expires_at=CLOCK.now() + 60)
    return None


@pytest.fixture
def room() -> Room:
    _ws_serving.ROOM = Room()
    CONNECTED.clear()
    return _ws_serving.ROOM


@pytest.fixture
async def served(room: Room) -> AsyncIterator[Served]:
    async with serving(websocket_app(ChatImpl, on_connect=remember)) as served:
        yield served


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_typed_calls_and_streams(served: Served, codec: str) -> None:
    async with await connect(Chat, served.url(), codec=codec) as chat:  # type: ignore[arg-type]
        assert chat.state == "open"
        sent = await chat.send(SendMsg(text="hi", amount=decimal.Decimal("1.50")))
        assert isinstance(sent, MsgId)
        assert sent.echo == SendMsg(text="hi", amount=decimal.Decimal("1.50"))
        assert (await chat.send({"text": "a dict is validated too"})).id == 2
        assert await chat.whoami() == Notice(text="None")
        items = [m async for m in chat.history(Since(after=0, count=3))]
        assert items == [Msg(seq=1, text="m1"), Msg(seq=2, text="m2"), Msg(seq=3, text="m3")]
        stream = await chat.history(Since(after=5, count=1))  # the declared type: awaited
        assert [m.seq async for m in stream] == [6]
        assert await chat.call("send", SendMsg(text="by name")) == MsgId(
            id=3, echo=SendMsg(text="by name"))


async def test_errors_are_typed(served: Served, room: Room) -> None:
    async with await connect(Chat, served.url()) as chat:
        with pytest.raises(RealtimeError) as info:
            await chat.fail(SendMsg(text="typed"))
        assert (info.value.reason, str(info.value), info.value.details) == (
            Reason.FORBIDDEN, "no such room", {"room": "r1"})
        with pytest.raises(RealtimeError) as info:
            await chat.fail(SendMsg(text="crash"))
        assert info.value.reason is Reason.HANDLER_FAILED
        with pytest.raises(RealtimeError) as info:
            await chat.send({"txt": "wrong"})  # refused here: nothing is sent
        assert info.value.reason is Reason.PAYLOAD_INVALID
        with pytest.raises(RealtimeError) as info:
            await chat.call("nope")
        assert info.value.reason is Reason.UNKNOWN_RPC
        with pytest.raises(AttributeError):
            chat.nope  # noqa: B018
        with pytest.raises(RealtimeError) as info:
            chat.on("nope", print)
        assert info.value.reason is Reason.INVALID_ARGUMENT
    assert room.sent == []


async def test_leaving_a_stream_early_stops_it_on_the_server(served: Served, room: Room) -> None:
    async with await connect(Chat, served.url()) as chat:
        async with chat.history(Since(after=9_999, count=5)) as stream:
            first = await anext(stream)
            assert first.seq == 10_000
            await _waiting.until(room.started.is_set)
        await _waiting.until(lambda: room.cancelled == ["history"])
        assert await chat.whoami() == Notice(text="None")  # the socket serves on


async def test_pushes_reach_their_handlers_in_order_and_each_mid_once(served: Served) -> None:
    got: list[str] = []
    also: list[str] = []

    async def slow_handler(notice: Notice) -> None:
        also.append(notice.text)

    async with await connect(Chat, served.url(), on_push={"notice": lambda n: got.append(n.text)},
                             codec="json") as chat:
        chat.on("notice", slow_handler)
        (connection,) = CONNECTED
        for text, mid in [("a", "m1"), ("a again", "m1"), ("b", None), ("c", "m2"),
                          ("b again", None)]:
            assert connection.deliver("notice", Notice(text=text), mid=mid)
        await chat.send(SendMsg(text="notify"))  # pushed by the handler itself
        await _waiting.until(lambda: len(also) == 5)
    assert got == ["a", "b", "c", "b again", "you posted"]
    assert also == got


@pytest.mark.parametrize("auth", ["subprotocol", "header", "ticket"])
async def test_each_way_to_send_the_token(room: Room, auth: str) -> None:
    async with serving(websocket_app(ChatImpl, authenticate=authenticate)) as served:
        async with await connect(Chat, served.url(), token="good",
                                 auth=auth) as chat:  # type: ignore[arg-type]
            assert await chat.whoami() == Notice(text="ann")
        with pytest.raises(RealtimeError) as info:
            await connect(Chat, served.url(), token="wrong", auth=auth)  # type: ignore[arg-type]
        assert info.value.reason is Reason.UNAUTHENTICATED
        with pytest.raises(RealtimeError) as info:
            await connect(Chat, served.url(), token=lambda: "banned",
                          auth=auth)  # type: ignore[arg-type]
        assert info.value.reason is Reason.FORBIDDEN


async def test_an_expired_token_is_renewed_from_a_token_source(room: Room) -> None:
    tokens = iter(["short-1", "short-2"])
    app = websocket_app(ChatImpl, authenticate=authenticate, clock=CLOCK)
    async with serving(app) as served:
        async with await connect(Chat, served.url(), token=lambda: next(tokens), cap=0.1) as chat:
            assert await chat.whoami() == Notice(text="short-1")
            await CLOCK.advance(60)  # closed 4401 "token expired": back with a fresh token
            await _waiting.until(lambda: chat.reconnects == 1)
            assert await chat.whoami() == Notice(text="short-2")


async def test_an_expired_static_token_stops_the_client(room: Room) -> None:
    app = websocket_app(ChatImpl, authenticate=authenticate, clock=CLOCK)
    async with serving(app) as served:
        chat = await connect(Chat, served.url(), token="short-static", cap=0.1)
        try:
            await CLOCK.advance(60)
            await _waiting.until(lambda: chat.state == "closed")
            with pytest.raises(RealtimeError) as info:
                await chat.whoami()
            assert info.value.reason is Reason.UNAUTHENTICATED
        finally:
            await chat.close()


async def test_nothing_to_connect_to_is_peer_unavailable() -> None:
    async with serving(websocket_app(ChatImpl)) as served:
        url = served.url()
    with pytest.raises(RealtimeError) as info:
        await connect(Chat, url, call_timeout=0.5, cap=0.1)
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    assert info.value.retryable


async def test_a_failing_token_source_is_retried(room: Room) -> None:
    attempts: list[int] = []

    def token() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("the identity provider is down")
        return "good"

    async with serving(websocket_app(ChatImpl, authenticate=authenticate)) as served:
        async with await connect(Chat, served.url(), token=token, cap=0.05) as chat:
            assert await chat.whoami() == Notice(text="ann")
    assert len(attempts) == 3
