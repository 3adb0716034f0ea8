"""The browser client covey.js: served by ``client_js_app``, valid JavaScript, and (run by
Node's WebSocket and EventSource, which follow the browser specifications: a subprotocol
must be echoed) calling, streaming, receiving pushes once, reconnecting with its buffered
calls to a restarted server, stopping on 4401, acknowledging pushes (the mailbox empties),
and resuming SSE after its last id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from covey.realtime._client_js import client_js, client_js_app
from covey.realtime._naming import scoped
from covey.realtime._types import Handshake, Principal
from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app
from covey.testing import TestCluster

from .. import _waiting
from . import _ws_serving
from ._ws_serving import ChatImpl, Notice, Room, serving

pytestmark = pytest.mark.timeout(90)

NODE = shutil.which("node")
DRIVER = Path(__file__).with_name("covey_js_driver.mjs")
MODULE = Path(__file__).parents[3] / "src" / "covey" / "realtime" / "static" / "covey.js"
FLAGS = ["--experimental-websocket", "--experimental-eventsource", "--no-warnings"]


def _node_has_websocket() -> bool:
    if NODE is None:
        return False
    probe = subprocess.run([NODE, *FLAGS, "-e", "new EventSource; WebSocket.CLOSED"],
                           capture_output=True, timeout=30, check=False)
    return b"is not defined" not in probe.stderr


needs_node = pytest.mark.skipif(not _node_has_websocket(),
                                reason="needs node with WebSocket and EventSource (>= 20.10)")


class Driver:
    """covey.js in a node process, driven by JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []  # not matched yet
        self.log: list[dict[str, Any]] = []  # every event, in order
        self._tags = 0

    async def do(self, command: dict[str, Any]) -> str:
        self._tags += 1
        tag = f"t{self._tags}"
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({**command, "tag": tag}) + "\n").encode())
        await self.process.stdin.drain()
        return tag

    async def expect(self, match: Callable[[dict[str, Any]], bool],
                     timeout: float = 20.0) -> dict[str, Any]:
        """The first event (seen already or next) that ``match``es."""
        for event in self.events:
            if match(event):
                self.events.remove(event)
                return event
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.process.stdout.readline()
                assert line, "node exited"
                event = json.loads(line)
                self.log.append(event)
                if match(event):
                    return event
                self.events.append(event)

    async def result(self, tag: str) -> dict[str, Any]:
        return await self.expect(lambda e: e.get("tag") == tag and "chunk" not in e)


@contextlib.asynccontextmanager
async def driving(mode: str, url: str, **options: Any) -> AsyncIterator[Driver]:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, *FLAGS, str(DRIVER), str(MODULE), mode, url, json.dumps(options),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield Driver(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        process._transport.close()  # type: ignore[attr-defined]  # no ResourceWarning


def authenticate(handshake: Handshake) -> Principal | None:
    return Principal(user="ann") if handshake.token == "good" else None


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_the_module_is_valid_javascript() -> None:
    assert NODE is not None
    subprocess.run([NODE, "--check", str(MODULE)], check=True, timeout=30)
    text = client_js().decode()
    assert text.startswith("/**\n * covey.js")
    for exported in ("export function connect(", "export function subscribe(",
                     "export class CoveyError", "export function backoffDelay("):
        assert exported in text


async def test_client_js_app_serves_the_module_with_an_etag() -> None:
    app = client_js_app()
    async with serving(app) as served, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{served.port}/covey.js"
        async with session.get(url) as response:
            assert response.status == 200
            assert response.headers["content-type"] == "text/javascript; charset=utf-8"
            assert await response.read() == client_js()
            etag = response.headers["etag"]
        assert etag == app.etag
        async with session.get(url, headers={"If-None-Match": etag}) as response:
            assert response.status == 304
        async with session.head(url) as response:
            assert response.status == 200 and await response.read() == b""
        async with session.post(url) as response:
            assert response.status == 405


@needs_node
async def test_calls_streams_pushes_and_a_reconnect_with_buffered_calls() -> None:
    _ws_serving.ROOM = Room()
    closing = asyncio.Event()
    connected: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connected.append(connection)

    app = websocket_app(ChatImpl, authenticate=authenticate, on_connect=on_connect,
                        closing=closing)
    async with serving(app) as first:
        port = first.port
        async with driving("ws", first.url(), token="good", cap=0.2) as js:
            await js.expect(lambda e: e.get("event") == "ready")
            reply = await js.result(await js.do({"do": "call", "method": "send",
                                                 "params": {"text": "hi"}}))
            assert reply["result"]["echo"]["text"] == "hi"
            assert (await js.result(await js.do({"do": "call", "method": "whoami"})))[
                "result"] == {"text": "ann"}
            tag = await js.do({"do": "stream", "method": "history",
                               "params": {"after": 0, "count": 3}})
            assert (await js.result(tag)) == {"tag": tag, "end": True}
            chunks = [e["chunk"]["seq"] for e in js.log if e.get("tag") == tag and "chunk" in e]
            assert chunks == [1, 2, 3]
            failed = await js.result(await js.do({"do": "call", "method": "fail",
                                                  "params": {"text": "typed"}}))
            assert failed["error"] == {"reason": "forbidden", "message": "no such room",
                                       "retryable": False}
            for mid in ("m1", "m1", "m2"):
                connected[0].deliver("notice", Notice(text=mid), mid=mid)
            await js.expect(lambda e: e.get("event") == "push" and e["mid"] == "m2")

            held = await js.do({"do": "call", "method": "send", "params": {"text": "hold"}})
            await _waiting.until(_ws_serving.ROOM.started.is_set)
            closing.set()  # the pod drains: 1012, the client comes back to the next server
            await js.expect(lambda e: e.get("state") == "reconnecting")
            assert (await js.result(held))["error"]["reason"] == "peer_unavailable"
            await first.stop()
            buffered = await js.do({"do": "call", "method": "send",
                                    "params": {"text": "buffered"}})
            async with serving(websocket_app(ChatImpl, authenticate=authenticate,
                                             on_connect=on_connect), port=port):
                assert (await js.result(buffered))["result"]["echo"]["text"] == "buffered"
                await js.expect(lambda e: e.get("event") == "reconnect")
                connected[-1].deliver("notice", Notice(text="again"), mid="m1")  # a repeat
                connected[-1].deliver("notice", Notice(text="m3"), mid="m3")
                await js.expect(lambda e: e.get("event") == "push" and e["mid"] == "m3")
            pushes = [e["payload"]["text"] for e in js.log if e.get("event") == "push"]
            assert pushes == ["m1", "m2", "m3"]  # m1 once: its repeats were dropped
    assert _ws_serving.ROOM.sent == ["hi", "buffered"]  # "hold" was not sent again
    assert _ws_serving.ROOM.cancelled == ["hold"]


@needs_node
async def test_a_refused_token_stops_the_client() -> None:
    _ws_serving.ROOM = Room()
    async with serving(websocket_app(ChatImpl, authenticate=authenticate)) as served, \
            driving("ws", served.url(), token="wrong") as js:
        refused = await js.expect(lambda e: e.get("event") == "refused")
        assert refused["reason"] == "unauthenticated"
        reply = await js.result(await js.do({"do": "call", "method": "whoami"}))
        assert reply["error"]["reason"] == "unauthenticated"
        assert (await js.result(await js.do({"do": "state"})))["state"] == "closed"


class FakeFeed:
    """An SSE endpoint that drops the stream, fails once, repeats an item and resets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers.get("last-event-id"), scope["query_string"].decode()))
        turn = len(self.requests)
        if turn == 2:  # an HTTP error: EventSource gives up, covey.js retries with ?after=
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"down"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        if turn == 1:
            body = "retry: 50\n\n" + "".join(
                f"id: 1:{n}\ndata: {{\"n\": {n}}}\n\n" for n in (1, 2, 3))
            await send({"type": "http.response.body", "body": body.encode()})
            return  # the stream ends: the browser reconnects with Last-Event-ID
        body = ("id: 1:4\ndata: {\"n\": 4}\n\nid: 1:4\ndata: {\"n\": 4}\n\n"
                "id: 1:5\nevent: order.created\ndata: {\"n\": 5}\n\n"
                "event: reset\nid: 2:0\ndata: {\"cursor\": \"2:0\"}\n\n"
                "id: 2:1\ndata: {\"n\": 6}\n\n")
        await send({"type": "http.response.body", "body": body.encode(), "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass


@needs_node
async def test_subscribe_resumes_after_its_last_id() -> None:
    feed = FakeFeed()
    async with serving(feed) as served:
        url = f"http://127.0.0.1:{served.port}/feed"
        async with driving("sse", url, cap=0.2, events=["order.created"]) as js:
            await js.expect(lambda e: e.get("id") == "2:1")
            messages = [(e["id"], e["data"]["n"], e["type"]) for e in js.log
                        if e.get("event") == "message"]
            resets = [e["cursor"] for e in js.log if e.get("event") == "reset"]
            await js.do({"do": "close"})
    assert messages == [("1:1", 1, "message"), ("1:2", 2, "message"), ("1:3", 3, "message"),
                        ("1:4", 4, "message"), ("1:5", 5, "order.created"),
                        ("2:1", 6, "message")]
    assert resets == ["2:0"]
    assert feed.requests[:3] == [(None, ""), ("1:3", ""), (None, "after=1%3A3")]


@needs_node
async def test_pushes_are_acknowledged_once_handled_and_the_mailbox_empties() -> None:
    _ws_serving.ROOM = Room()
    key = scoped("", "ann")
    async with TestCluster(runners=1) as tc:
        member = tc.runners[0]
        connections: list[Connection] = []
        acks: list[list[str]] = []

        async def on_connect(connection: Connection) -> None:
            connections.append(connection)
            presence_ack = connection.on_ack
            assert presence_ack is not None

            async def on_ack(mids: tuple[str, ...]) -> None:
                acks.append(list(mids))
                await presence_ack(mids)

            connection.on_ack = on_ack

        async def stored() -> list[str]:
            return [mail.id for mail in await tc.storage.streams.mail(key, now=tc.clock.now())]

        for seq in range(150):  # stored while offline: handed over on connect
            assert await member.send_to_user("ann", {"text": f"n{seq}"}, push="notice",
                                             id=f"m-{seq}", store=True) == "stored"
        app = member.websocket(ChatImpl, authenticate=authenticate, on_connect=on_connect)
        async with serving(app) as served, driving("ws", served.url(), token="good") as js:
            await js.expect(lambda e: e.get("event") == "push" and e["mid"] == "m-149")
            await _waiting.until(lambda: sum(len(frame) for frame in acks) >= 150, timeout=20)
            assert await stored() == []
            connections[0].deliver("notice", Notice(text="again"), mid="m-0")  # a repeat
            await _waiting.until(lambda: acks[-1] == ["m-0"], timeout=20)
            assert await member.send_to_user("ann", {"text": "live"}, push="notice",
                                             id="m-live", store=True) == "delivered"
            await js.expect(lambda e: e.get("event") == "push" and e["mid"] == "m-live")
            await _waiting.until(lambda: acks[-1] == ["m-live"], timeout=20)
            assert await stored() == []
        pushes = [e["mid"] for e in js.log if e.get("event") == "push"]
    assert pushes == [f"m-{seq}" for seq in range(150)] + ["m-live"]  # the repeat: not shown
    assert sorted(mid for frame in acks[:-2] for mid in frame) == sorted(
        f"m-{seq}" for seq in range(150))
    assert all(0 < len(frame) <= 100 for frame in acks)
    assert len(acks) - 2 < 150  # batched: some frames carry several ids
