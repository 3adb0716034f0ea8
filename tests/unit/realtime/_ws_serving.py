"""A chat contract, its implementation, and a real uvicorn serving it (for the WebSocket tests)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import pydantic
import uvicorn

from covey.core import RealtimeError, Reason
from covey.realtime._contract import Contract, method, push


class SendMsg(pydantic.BaseModel):
    text: str
    at: dt.datetime | None = None
    amount: decimal.Decimal | None = None
    ref: uuid.UUID | None = None


class MsgId(pydantic.BaseModel):
    id: int
    echo: SendMsg | None = None


class Since(pydantic.BaseModel):
    after: int = 0
    count: int = 3


class Msg(pydantic.BaseModel):
    seq: int
    text: str


class Notice(pydantic.BaseModel):
    text: str


class Chat(Contract):
    """A small chat."""

    @method
    async def send(self, msg: SendMsg) -> MsgId:
        """Post a message; its id."""
        ...

    @method
    async def history(self, since: Since) -> AsyncIterator[Msg]:
        """The messages after ``since.after``."""
        ...

    @method
    async def whoami(self) -> Notice: ...

    @method
    async def fail(self, msg: SendMsg) -> None: ...

    notice = push(Notice, description="Something happened.")


@dataclass
class Room:
    """What every connection of a test server shares."""

    sent: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # a held call waits for it
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: list[str] = field(default_factory=list)


ROOM = Room()


class ChatImpl(Chat):
    async def send(self, msg: SendMsg) -> MsgId:
        if msg.text.startswith("hold"):
            ROOM.started.set()
            try:
                await ROOM.gate.wait()
            except asyncio.CancelledError:
                ROOM.cancelled.append(msg.text)
                raise
        ROOM.sent.append(msg.text)
        if msg.text == "notify":
            self.notice(Notice(text="you posted"))
        return MsgId(id=len(ROOM.sent), echo=msg)

    async def history(self, since: Since) -> AsyncIterator[Msg]:
        try:
            for seq in range(since.after + 1, since.after + 1 + since.count):
                if seq > 10_000:
                    ROOM.started.set()
                    await ROOM.gate.wait()
                yield Msg(seq=seq, text=f"m{seq}")
        except (asyncio.CancelledError, GeneratorExit):
            ROOM.cancelled.append("history")
            raise

    async def whoami(self) -> Notice:
        return Notice(text=str(self.connection.principal.user))

    async def fail(self, msg: SendMsg) -> None:
        if msg.text == "typed":
            raise RealtimeError("no such room", reason=Reason.FORBIDDEN, room="r1")
        raise ValueError("secret detail that must not leak")


@dataclass
class Served:
    server: uvicorn.Server
    port: int
    task: asyncio.Task[None]

    def url(self, path: str = "/rpc") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        """Shut the server down now (uvicorn closes open WebSockets with 1012)."""
        self.server.should_exit = True
        await asyncio.wait_for(asyncio.shield(self.task), 15)


@asynccontextmanager
async def serving(app: Any, *, port: int = 0, **config: Any) -> AsyncIterator[Served]:
    """``app`` on a real uvicorn on 127.0.0.1 (``port`` 0: any free port)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", **config))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield Served(server, server.servers[0].sockets[0].getsockname()[1], task)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class Raw:
    """A raw WebSocket client (aiohttp) speaking frames as dicts."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: str = "json") -> None:
        self.ws = ws
        self.codec = codec

    async def send(self, frame: Any) -> None:
        if self.codec == "json":
            await self.ws.send_str(json.dumps(frame))
        else:
            await self.ws.send_bytes(msgpack.packb(frame, use_bin_type=True))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout)
        if message.type == aiohttp.WSMsgType.TEXT:
            decoded: dict[str, Any] = json.loads(message.data)
            return decoded
        if message.type == aiohttp.WSMsgType.BINARY:
            unpacked: dict[str, Any] = msgpack.unpackb(message.data, raw=False)
            return unpacked
        raise ConnectionError(f"closed: {message.type} {message.data} {message.extra}")

    async def recv_until(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of type ``kind`` (server pings skipped)."""
        while True:
            frame = await self.recv(timeout)
            if frame.get("t") == kind:
                return frame

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        while True:
            message = await self.ws.receive(timeout=timeout)
            if message.type == aiohttp.WSMsgType.CLOSE:
                return message.data, message.extra or ""
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code, ""


@asynccontextmanager
async def raw(url: str, *, protocols: tuple[str, ...] = ("covey.v1.json",),
              headers: dict[str, str] | None = None) -> AsyncIterator[Raw]:
    """A raw client connected to ``url``."""
    codec = "msgpack" if "covey.v1.msgpack" in protocols or "codec=msgpack" in url else "json"
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url, protocols=protocols, headers=headers or {}, autoping=True,
            max_msg_size=64 * 1024 * 1024) as ws:
        yield Raw(ws, codec)
