"""Test doubles for the real-time delivery side: streams in memory that resume by
cursor (standing in for ``cluster.streams``), a real uvicorn server on 127.0.0.1,
and a reader of raw SSE frames."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvicorn

from covey.core import RealtimeError, Reason
from covey.realtime import Cursor, Handshake, Reset, StreamMessage
from covey.realtime._sockets import listen_socket
from tests.unit._waiting import until

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class FakeStreams:
    """Named streams in one epoch; ``subscribe`` has the signature ``sse_app`` wants.

    Args:
        epoch: the epoch of every stream.
        close_after: each subscription ends after yielding this many items.
        overflow_after: each subscription raises ``slow_consumer`` after this many.
        replay: resume this many items *before* the cursor (a faulty server).
        endless: a payload: every subscription makes up items of it, without end.
    """

    def __init__(self, *, epoch: int = 7, close_after: int | None = None,
                 overflow_after: int | None = None, replay: int = 0,
                 endless: bytes | None = None) -> None:
        self.epoch = epoch
        self.close_after = close_after
        self.overflow_after = overflow_after
        self.replay = replay
        self.endless = endless
        self.items: dict[str, list[StreamMessage]] = {}
        self.first: dict[str, int] = {}  # the lowest position still stored
        self.subscriptions: list[FakeSubscription] = []
        self.handshakes: list[Handshake] = []

    def publish(self, stream: str, data: object, *, event: str | None = None,
                raw: bytes | None = None) -> StreamMessage:
        items = self.items.setdefault(stream, [])
        message = StreamMessage(stream=stream, cursor=Cursor(self.epoch, len(items) + 1),
                                data=raw if raw is not None else json.dumps(data).encode(),
                                event=event, id=1000 + len(items), published_at=time.time())
        items.append(message)
        for subscription in self.subscriptions:
            if subscription.stream == stream:
                subscription.wake.set()
        return message

    def trim(self, stream: str, first: int) -> None:
        """Positions below ``first`` are gone (out of retention)."""
        self.first[stream] = first

    async def subscribe(self, name: str, cursor: Cursor | None,
                        handshake: Handshake) -> FakeSubscription:
        self.handshakes.append(handshake)
        subscription = FakeSubscription(self, name, cursor)
        self.subscriptions.append(subscription)
        return subscription

    def of(self, stream: str) -> list[FakeSubscription]:
        return [s for s in self.subscriptions if s.stream == stream]


class FakeSubscription:
    """Yields the items of its stream after its cursor, then waits for more."""

    def __init__(self, source: FakeStreams, stream: str, cursor: Cursor | None) -> None:
        self.source = source
        self.stream = stream
        self.wake = asyncio.Event()
        self.closed = False
        self.yielded = 0
        self.pending_reset: Reset | None = None
        items = source.items.get(stream, [])
        first = source.first.get(stream, 1)
        if cursor is None:
            self.position = len(items)  # from now
        elif cursor.epoch not in (0, source.epoch) or cursor.position < first - 1:
            self.position = first - 1
            self.pending_reset = Reset(stream, Cursor(source.epoch, self.position))
        else:
            self.position = max(cursor.position - source.replay, 0)
        self.cursor = Cursor(source.epoch, self.position)

    def __aiter__(self) -> FakeSubscription:
        return self

    async def __anext__(self) -> StreamMessage | Reset:
        if self.pending_reset is not None:
            reset, self.pending_reset = self.pending_reset, None
            return reset
        if self.source.close_after is not None and self.yielded >= self.source.close_after:
            self.closed = True
        if self.source.overflow_after is not None and \
                self.yielded >= self.source.overflow_after:
            self.closed = True
            raise RealtimeError("buffer overflow", reason=Reason.SLOW_CONSUMER)
        while not self.closed:
            if self.source.endless is not None:
                return self._made_up()
            items = self.source.items.get(self.stream, [])
            if self.position < len(items):
                self.position += 1
                self.yielded += 1
                self.cursor = items[self.position - 1].cursor
                return items[self.position - 1]
            self.wake.clear()
            await self.wake.wait()
        raise StopAsyncIteration

    def _made_up(self) -> StreamMessage:
        self.position += 1
        self.yielded += 1
        self.cursor = Cursor(self.source.epoch, self.position)
        return StreamMessage(self.stream, self.cursor, self.source.endless or b"", None,
                             self.position, 0.0)

    async def aclose(self) -> None:
        self.closed = True
        self.wake.set()


@dataclass
class Served:
    """A running server: its uvicorn instance and base URL."""

    server: uvicorn.Server
    url: str
    requests: list[float] = field(default_factory=list)

    @property
    def connections(self) -> int:
        return len(self.server.server_state.connections)


@asynccontextmanager
async def serving(app: ASGIApp, *, user_timeout: float | None = None) -> AsyncIterator[Served]:
    """``app`` on a real uvicorn, on 127.0.0.1 and a free port, in this loop."""
    sock = listen_socket("127.0.0.1", 0, user_timeout=user_timeout)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None,
                                           log_level="warning", timeout_graceful_shutdown=5))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done(), 10)
        yield Served(server, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        sock.close()


async def frames(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The raw frames (text between blank lines) of an SSE response body, until it ends."""
    buffer = ""
    while True:
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            yield frame
        chunk = await response.content.readany()
        if not chunk:
            assert buffer == "", f"the stream ended inside a frame: {buffer!r}"
            return
        buffer += chunk.decode()


async def take(stream: AsyncIterator[str], count: int, timeout: float = 10.0) -> list[str]:
    """The next ``count`` frames of ``stream`` (fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        return [await anext(stream) for _ in range(count)]


async def rest(stream: AsyncIterator[str], timeout: float = 10.0) -> list[str]:
    """Every frame until the stream ends (fails after ``timeout``)."""
    async with asyncio.timeout(timeout):
        return [frame async for frame in stream]
