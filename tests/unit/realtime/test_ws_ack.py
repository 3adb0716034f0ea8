"""Acknowledged delivery over a real uvicorn: the Python client acknowledges the pushes it
handled and the mailbox empties; a push whose connection died before the client read it
reaches the reconnecting client exactly once; a repeat is acknowledged again; the ack
frame (JSON and msgpack) is checked, bounded and rate-limited like any frame."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from covey import Cluster
from covey.core import Clock
from covey.realtime._codec import CLOSE_TRY_AGAIN
from covey.realtime._naming import scoped
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_client import connect
from covey.realtime._ws_connection import Connection
from covey.testing import TestCluster

from .. import _waiting
from . import _ws_serving
from ._ws_serving import Chat, ChatImpl, Room, raw, serving

pytestmark = pytest.mark.timeout(60)

KEY = scoped("", "ann")


@pytest.fixture(autouse=True)
def room() -> Room:
    _ws_serving.ROOM = Room()
    return _ws_serving.ROOM


def authenticate(handshake: Handshake) -> Principal | None:
    return Principal(user="ann") if handshake.token == "ann" else None


@dataclass
class Pod:
    """One member serving ``Chat`` on a real uvicorn, and what its connections did."""

    cluster: Cluster
    clock: Clock
    url: str
    connections: list[Connection] = field(default_factory=list)
    acks: list[tuple[str, ...]] = field(default_factory=list)  # each ack frame's ids
    #: called with each connection once attached (may replace its hooks)
    on_connect: Callable[[Connection], None] | None = None

    async def stored(self) -> list[str]:
        mails = await self.cluster.storage.streams.mail(KEY, now=self.clock.now())
        return [mail.id for mail in mails]

    async def send(self, seq: int, *, mid: str | None = None) -> str:
        return await self.cluster.send_to_user("ann", {"text": f"n{seq}"}, push="notice",
                                               id=mid or f"m-{seq}", store=True)


@asynccontextmanager
async def pod() -> AsyncIterator[Pod]:
    async with TestCluster(runners=1) as tc:
        member = tc.runners[0]
        served: Pod

        async def on_connect(connection: Connection) -> None:
            served.connections.append(connection)
            presence_ack = connection.on_ack
            assert presence_ack is not None  # attached: acks go to presence

            async def on_ack(mids: tuple[str, ...]) -> None:
                served.acks.append(mids)
                await presence_ack(mids)

            connection.on_ack = on_ack
            if served.on_connect is not None:
                served.on_connect(connection)

        app = member.websocket(ChatImpl, authenticate=authenticate, on_connect=on_connect)
        async with serving(app) as server:
            served = Pod(member, tc.clock, server.url())
            yield served


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_the_client_acknowledges_what_it_handled_and_the_mailbox_empties(
        codec: Any) -> None:
    async with pod() as p:
        for seq in range(250):  # stored while the user is offline
            assert await p.send(seq) == "stored"
        got: list[str] = []
        client = await connect(Chat, p.url, token="ann", codec=codec,
                               on_push={"notice": lambda notice: got.append(notice.text)})
        try:
            await _waiting.until(lambda: len(got) == 250, timeout=20)
            await _waiting.until(_mailbox_empty(p), timeout=20)
            # online: delivered, and stored until acknowledged
            assert [await p.send(seq) for seq in range(250, 260)] == ["delivered"] * 10
            await _waiting.until(lambda: len(got) == 260, timeout=20)
            await _waiting.until(_mailbox_empty(p), timeout=20)
        finally:
            await client.close()
    assert got == [f"n{seq}" for seq in range(260)]
    acked = [mid for frame in p.acks for mid in frame]
    assert sorted(acked) == sorted(f"m-{seq}" for seq in range(260))
    assert all(len(frame) <= 100 for frame in p.acks)
    assert len(p.acks) < len(acked)  # batched: some frames carry several ids


def _mailbox_empty(p: Pod) -> Callable[[], Any]:
    async def empty() -> bool:
        return await p.stored() == []
    return empty


async def test_a_push_lost_with_its_connection_reaches_the_reconnecting_client_once() -> None:
    async with pod() as p:
        def dies_after_queueing(connection: Connection) -> None:
            deliver = connection.deliver

            def deliver_then_die(name: str, payload: Any, *, mid: str | None = None) -> bool:
                taken = deliver(name, payload, mid=mid)
                if taken and mid == "m-lost":
                    # the pod dies with the frame queued: it never reaches the socket
                    connection.abort(CLOSE_TRY_AGAIN)
                return taken

            connection.deliver = deliver_then_die  # type: ignore[method-assign]

        p.on_connect = dies_after_queueing
        got: list[str] = []
        client = await connect(Chat, p.url, token="ann", cap=0.2,
                               on_push={"notice": lambda notice: got.append(notice.text)})
        try:
            assert await p.send(1) == "delivered"
            await _waiting.until(lambda: got == ["n1"])
            p.on_connect = None  # the pod the client comes back to stays up
            assert await p.send(2, mid="m-lost") == "delivered"  # queued, then lost
            await _waiting.until(lambda: client.reconnects == 1 and client.state == "open")
            assert await p.send(3) == "delivered"
            await _waiting.until(lambda: len(got) >= 3)
            await client.whoami()  # a round trip after the last push: a repeat would be in
            await _waiting.until(_mailbox_empty(p), timeout=20)
        finally:
            await client.close()
    assert got == ["n1", "n2", "n3"]


async def test_a_repeat_is_dropped_and_acknowledged_again() -> None:
    async with pod() as p:
        def loses_acks(connection: Connection) -> None:
            async def ignored(mids: tuple[str, ...]) -> None:
                p.acks.append(mids)  # the pod died before deleting them

            connection.on_ack = ignored

        p.on_connect = loses_acks
        got: list[str] = []
        client = await connect(Chat, p.url, token="ann", cap=0.2,
                               on_push={"notice": lambda notice: got.append(notice.text)})
        try:
            assert [await p.send(seq) for seq in range(3)] == ["delivered"] * 3
            await _waiting.until(lambda: sum(len(frame) for frame in p.acks) == 3)
            assert await p.stored() == ["m-0", "m-1", "m-2"]
            p.on_connect = None
            p.connections[0].abort(CLOSE_TRY_AGAIN)
            await _waiting.until(lambda: client.reconnects == 1 and client.state == "open")
            await _waiting.until(_mailbox_empty(p), timeout=20)  # the repeats acknowledged
            await client.whoami()
        finally:
            await client.close()
    assert got == ["n0", "n1", "n2"]  # handed over twice, handled once


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_a_raw_client_gets_stored_messages_until_it_acknowledges_them(codec: str) -> None:
    async with pod() as p:
        for seq in range(3):
            await p.send(seq)
        url = f"{p.url}?codec={codec}"
        for _ in range(2):  # not acknowledged: handed over again on each connect
            async with raw(url, protocols=("bearer.ann",)) as ws:
                frames = [await ws.recv_until("push") for _ in range(3)]
                assert [f["mid"] for f in frames] == ["m-0", "m-1", "m-2"]
        async with raw(url, protocols=("bearer.ann",)) as ws:
            for _ in range(3):
                await ws.recv_until("push")
            await ws.send({"t": "ack", "mids": ["m-0", "m-2"]})
            await ws.send({"t": "ping"})
            assert await ws.recv_until("pong") == {"t": "pong"}  # frames are read in order
        assert await p.stored() == ["m-1"]


BAD_ACKS: list[Any] = [
    {"t": "ack"},
    {"t": "ack", "mids": []},
    {"t": "ack", "mids": "m-1"},
    {"t": "ack", "mids": [1, 2]},
    {"t": "ack", "mids": [""]},
    {"t": "ack", "mids": ["x" * 201]},
    {"t": "ack", "mids": [f"m-{i}" for i in range(1001)]},
]


@pytest.mark.parametrize("frame", BAD_ACKS)
async def test_a_malformed_ack_gets_an_error_frame_and_the_socket_stays_open(
        frame: Any) -> None:
    async with pod() as p:
        await p.send(0)
        async with raw(p.url, protocols=("covey.v1.json", "bearer.ann")) as ws:
            await ws.recv_until("push")
            await ws.send(frame)
            error = await ws.recv_until("err")
            assert (error["r"], error["id"]) == ("frame_invalid", None)
            await ws.send({"t": "ping"})
            assert await ws.recv_until("pong") == {"t": "pong"}
        assert await p.stored() == ["m-0"]
        assert p.acks == []


async def test_acks_count_against_the_rate_limit() -> None:
    async with TestCluster(runners=1) as tc:
        app = tc.runners[0].websocket(ChatImpl, authenticate=authenticate, rate=1.0)
        async with serving(app) as server, raw(server.url(),
                                               protocols=("covey.v1.json", "bearer.ann")) as ws:
            for _ in range(4):  # a burst of two is allowed; 3 refused would close it
                await ws.send({"t": "ack", "mids": ["m-0"]})
            error = await ws.recv_until("err")
            assert error["r"] == "rate_limited"
