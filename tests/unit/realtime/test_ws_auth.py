"""Authentication before any handler (header, subprotocol, ticket), its close codes, the
expiry of a principal, and the close of every socket when the pod drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets

from covey.core import RealtimeError, Reason, TestClock
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from .. import _waiting
from . import _ws_serving
from ._ws_serving import ChatImpl, Room, Served, raw, serving

pytestmark = pytest.mark.timeout(60)

SEEN: list[Handshake] = []
CLOCK = TestClock()  # the server's: expiry happens when a test advances it


def authenticate(handshake: Handshake) -> Principal | None:
    SEEN.append(handshake)
    token = handshake.token or ""
    if token == "good":
        return Principal(user="ann")
    if token == "crash":
        raise RuntimeError("the identity provider is down")
    if token == "banned":
        raise RealtimeError("banned", reason=Reason.FORBIDDEN)
    if token == "rejected":
        raise RealtimeError("bad signature", reason=Reason.UNAUTHENTICATED)
    if token.startswith("short"):
        return Principal(user="bob", expires_at=CLOCK.now() + 60)
    if token == "stale":
        return Principal(user="bob", expires_at=CLOCK.now() - 1)
    return None


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    _ws_serving.ROOM = Room()
    SEEN.clear()
    async with serving(websocket_app(ChatImpl, authenticate=authenticate,
                                     clock=CLOCK)) as served:
        yield served


async def whoami(client: _ws_serving.Raw) -> str:
    await client.send({"t": "req", "id": 1, "m": "whoami"})
    reply = await client.recv_until("res")
    return str(reply["p"]["text"])


async def test_a_bearer_header_authenticates(served: Served) -> None:
    async with raw(served.url(), headers={"Authorization": "Bearer good"}) as client:
        assert await whoami(client) == "ann"
    assert SEEN[-1].token == "good"


async def test_a_bearer_subprotocol_authenticates_and_only_covey_is_echoed(
        served: Served) -> None:
    async with raw(served.url(), protocols=("covey.v1.json", "bearer.good")) as client:
        assert client.ws.protocol == "covey.v1.json"
        assert await whoami(client) == "ann"
    # a strict client (websockets, like a browser) fails unless one offered protocol is echoed
    async with websockets.connect(served.url(), subprotocols=[  # type: ignore[list-item]
            "bearer.good", "covey.v1.msgpack"]) as ws:
        assert ws.subprotocol == "covey.v1.msgpack"


async def test_a_first_message_ticket_authenticates(served: Served) -> None:
    async with raw(served.url()) as client:
        await client.send({"t": "auth", "token": "good"})
        assert await whoami(client) == "ann"


@pytest.mark.parametrize(("how", "token", "code"), [
    ("header", "wrong", 4401), ("subprotocol", "rejected", 4401), ("ticket", "wrong", 4401),
    ("header", "banned", 4403), ("ticket", "banned", 4403), ("header", "stale", 4401),
    ("header", "crash", 1011)])
async def test_a_refused_credential_closes_before_any_handler(served: Served, how: str,
                                                              token: str, code: int) -> None:
    protocols: tuple[str, ...] = ("covey.v1.json",)
    headers = {}
    if how == "header":
        headers["Authorization"] = f"Bearer {token}"
    elif how == "subprotocol":
        protocols += (f"bearer.{token}",)
    async with raw(served.url(), protocols=protocols, headers=headers) as client:
        if how == "ticket":
            await client.send({"t": "auth", "token": token})
        await client.send({"t": "req", "id": 1, "m": "send", "p": {"text": "sneaky"}})
        assert (await client.closed())[0] == code
    assert _ws_serving.ROOM.sent == []


async def test_no_ticket_in_time_or_another_first_frame_closes_4401(served: Served) -> None:
    async with serving(websocket_app(ChatImpl, authenticate=authenticate,
                                     auth_timeout=0.3)) as hasty, raw(hasty.url()) as client:
        assert await client.closed() == (4401, "no auth frame in time")
    async with raw(served.url()) as client:
        await client.send({"t": "req", "id": 1, "m": "send", "p": {"text": "first"}})
        assert await client.closed() == (4401, "expected an auth frame")
    assert _ws_serving.ROOM.sent == []


async def test_an_expired_principal_is_closed_4401(served: Served) -> None:
    async with raw(served.url(), headers={"Authorization": "Bearer short"}) as client:
        assert await whoami(client) == "bob"
        await CLOCK.advance(59)
        assert await whoami(client) == "bob"
        await CLOCK.advance(1)
        assert await client.closed() == (4401, "token expired")


async def test_without_a_hook_connections_are_anonymous() -> None:
    _ws_serving.ROOM = Room()
    async with serving(websocket_app(ChatImpl)) as served, \
            raw(served.url(), headers={"Authorization": "Bearer whatever"}) as client:
        assert await whoami(client) == "None"


async def test_on_connect_and_on_disconnect_see_the_principal() -> None:
    events: list[tuple[str, str | None]] = []

    async def on_connect(connection: Connection) -> None:
        events.append(("connect", connection.principal.user))

    async def on_disconnect(connection: Connection) -> None:
        events.append(("disconnect", connection.principal.user))

    async with serving(websocket_app(ChatImpl, authenticate=authenticate, on_connect=on_connect,
                                     on_disconnect=on_disconnect)) as served:
        async with raw(served.url(), headers={"Authorization": "Bearer good"}) as client:
            await whoami(client)
        async with raw(served.url(), headers={"Authorization": "Bearer wrong"}) as client:
            await client.closed()
        await _waiting.until(lambda: len(events) == 2)
    assert events == [("connect", "ann"), ("disconnect", "ann")]  # the refused one: neither


async def test_closing_closes_every_socket_with_1012() -> None:
    closing = asyncio.Event()
    async with serving(websocket_app(ChatImpl, closing=closing)) as served:
        async with raw(served.url()) as first, raw(served.url()) as second:
            await first.send({"t": "ping"})
            await first.recv_until("pong")
            await second.send({"t": "ping"})
            await second.recv_until("pong")
            closing.set()
            assert await first.closed() == (1012, "service restart")
            assert await second.closed() == (1012, "service restart")
        async with raw(served.url()) as late:  # a connection after the drain began
            assert (await late.closed())[0] == 1012


async def test_a_close_before_accept_is_never_sent(served: Served) -> None:
    # browsers cannot read an HTTP 403: refusals are always close frames after the accept
    async with aiohttp.ClientSession() as session, session.ws_connect(
            served.url(), headers={"Authorization": "Bearer wrong"}) as ws:
        message = await ws.receive(timeout=10)
        assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 4401)

