"""Client-side drivers of the real-time benchmarks.

- :class:`SseReader`: a lean SSE client (one ``asyncio.Protocol`` per
  connection: HTTP/1.1, chunked body, SSE events). Each event's data is kept
  with ``time.time()`` taken in ``data_received``, the first moment its bytes
  are in the process: the receipt time is not delayed by a client library's
  parsing, and thousands of idle connections cost the client almost nothing.
- :class:`RawWebSocket`: a lean client of covey's WebSocket RPC (RFC 6455
  frames and msgpack by hand), for a second ``ws-rpc`` figure next to the
  real client's (``covey.realtime.connect``).
- ``python -m bench.apps.realtime_clients reconnect URL_A URL_B --users N``: the
  client process of ``ws-reconnect`` (see :func:`reconnect_main`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
from bench.apps.realtime_bench_app import Echo, Note

import covey.realtime

# ---- SSE ---------------------------------------------------------------


class SseReader(asyncio.Protocol):
    """One SSE connection; ``events``: (receipt time, data) of every event with data."""

    def __init__(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.path = path
        self.status: asyncio.Future[int] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.events: list[tuple[float, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._chunked = False
        self._body = bytearray()
        self._text = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(f"GET {self.path} HTTP/1.1\r\nhost: bench\r\n"
                        "accept: text/event-stream\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.status.done():
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end]).lower()
            data = bytes(self._head[end + 4:])
            self._head.clear()
            self._chunked = b"transfer-encoding: chunked" in head
            status = int(head.split(b" ", 2)[1])
            self.status.set_result(status)
            if status != 200:
                self.close()
                return
        if self._chunked:
            self._body += data
            self._dechunk()
        else:
            self._text += data
        self._split(now)

    def _dechunk(self) -> None:
        body = self._body
        while (line := body.find(b"\r\n")) >= 0:
            size = int(bytes(body[:line]).split(b";", 1)[0], 16)
            end = line + 2 + size
            if len(body) < end + 2:
                return
            self._text += body[line + 2:end]
            del body[:end + 2]

    def _split(self, now: float) -> None:
        text = self._text
        while (end := text.find(b"\n\n")) >= 0:
            for line in bytes(text[:end]).split(b"\n"):
                if line.startswith(b"data:"):
                    self.events.append((now, line[5:].strip()))
            del text[:end + 2]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectionError(f"closed before the answer: {exc!r}"))
            self.status.exception()  # retrieved: a caller that stopped waiting must not warn
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_sse(port: int, path: str, count: int, *, concurrency: int = 100,
                   timeout: float = 60) -> list[SseReader]:
    """``count`` SSE connections to ``127.0.0.1:port`` ``path``, each answered 200.

    Raises:
        RuntimeError: a connection was answered something else.
    """
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    readers: list[SseReader] = []

    async def one() -> None:
        async with gate:
            _, reader = await loop.create_connection(lambda: SseReader(path), "127.0.0.1", port)
            readers.append(reader)
            status = await asyncio.wait_for(reader.status, timeout)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        await close_sse(readers)
        raise
    return readers


async def close_sse(readers: list[SseReader]) -> None:
    for reader in readers:
        reader.close()
    for reader in readers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.lost, 5)


# ---- WebSocket ----------------------------------------------------------


class RawWebSocket(asyncio.Protocol):
    """A lean client of covey's WebSocket RPC (msgpack; one call = one frame each way)."""

    def __init__(self, path: str, token: str) -> None:
        loop = asyncio.get_running_loop()
        self.path = path
        self.token = token
        self.opened: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nhost: bench\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n"
            f"sec-websocket-protocol: covey.v1.msgpack, bearer.{self.token}\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.opened.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[:end]).split(b" ", 2)[1]
            del self._buffer[:end + 4]
            if status != b"101":
                self.opened.set_exception(ConnectionError(f"handshake answered {status!r}"))
                self.close()
                return
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start:start + length])
            del buffer[:start + length]
            self._handle(opcode, payload)

    def _handle(self, opcode: int, payload: bytes) -> None:
        if opcode in (0x1, 0x2):
            frame = msgpack.unpackb(payload)
            kind = frame.get("t")
            if kind in ("res", "err"):
                future = self._pending.pop(frame.get("id"), None)
                if future is not None and not future.done():
                    if kind == "res":
                        future.set_result(frame.get("p"))
                    else:
                        future.set_exception(RuntimeError(f"{frame.get('r')}: {frame.get('msg')}"))
            elif kind == "ping":
                self._send(0x2, msgpack.packb({"t": "pong"}))
        elif opcode == 0x9:  # the server's WebSocket ping
            self._send(0xA, payload)
        elif opcode == 0x8:
            self.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        size = len(payload)
        if size < 126:
            head = bytes((0x80 | opcode, 0x80 | size))
        elif size < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
        mask = os.urandom(4)
        stream = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")) \
            .to_bytes(size, "big")
        self.transport.write(head + mask + masked)

    async def echo(self, n: int) -> Any:
        """One call of ``Echo.echo``; the result's payload (a map)."""
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._send(0x2, msgpack.packb({"t": "req", "id": call_id, "m": "echo", "p": {"n": n}}))
        return await future

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(f"the socket closed: {exc!r}")
        if not self.opened.done():
            self.opened.set_exception(error)
            self.opened.exception()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_raw_ws(port: int, token: str, path: str = "/rpc") -> RawWebSocket:
    _, client = await asyncio.get_running_loop().create_connection(
        lambda: RawWebSocket(path, token), "127.0.0.1", port)
    await asyncio.wait_for(client.opened, 30)
    return client


# ---- the ws-reconnect client process -------------------------------------


class ReconnectClients:
    """``users`` clients of :class:`Echo`, each given ``urls`` (pod A first)."""

    def __init__(self, urls: list[str], users: int) -> None:
        self.urls = urls
        self.users = [f"u-{i}" for i in range(users)]
        self.clients: dict[str, covey.realtime.Client[Echo]] = {}
        self.received: dict[str, list[int]] = {u: [] for u in self.users}
        self.reconnected: dict[str, list[float]] = {u: [] for u in self.users}
        self.distinct = 0  # messages received, each counted once

    def _pushed(self, user: str) -> Callable[[Note], None]:
        seen: set[int] = set()

        def handler(note: Note) -> None:
            self.received[user].append(note.n)
            if note.n not in seen:
                seen.add(note.n)
                self.distinct += 1

        return handler

    def _reconnect_hook(self, user: str) -> Callable[[], None]:
        return lambda: self.reconnected[user].append(time.time())

    async def connect(self, concurrency: int = 20) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(user: str) -> None:
            async with gate:
                self.clients[user] = await covey.realtime.connect(
                    Echo, self.urls, token=user, codec="msgpack", cap=5.0,
                    on_push={"message": self._pushed(user)},
                    on_reconnect=self._reconnect_hook(user))

        await asyncio.gather(*(one(u) for u in self.users))

    def status(self) -> dict[str, Any]:
        last = self.urls[-1]
        return {"event": "status",
                "open": sum(c.state == "open" for c in self.clients.values()),
                "open_on_last": sum(c.state == "open" and c.url == last
                                    for c in self.clients.values()),
                "received": self.distinct}

    def report(self) -> dict[str, Any]:
        return {"event": "report", "received": self.received, "reconnected": self.reconnected,
                "reconnects": {u: c.reconnects for u, c in self.clients.items()},
                "states": {u: c.state for u, c in self.clients.items()}}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()),
                             return_exceptions=True)


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def reconnect_main(urls: list[str], users: int) -> None:
    """Connect ``users`` clients (``u-0`` ...) to ``urls``, print ``{"event": "ready"}``,
    then answer the commands read from stdin, one a line: ``status`` (how many
    are open, open on the last URL, messages received) and ``report`` (every
    message number received per user, in order, after the client's dedupe;
    the wall times of each reconnect), after which it closes the clients and
    exits."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    clients = ReconnectClients(urls, users)
    try:
        await clients.connect()
        emit({"event": "ready", "users": users})
        while line := (await commands.readline()).decode().strip():
            if line == "status":
                emit(clients.status())
            elif line == "report":
                emit(clients.report())
                return
    finally:
        await clients.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="client processes of the real-time benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    reconnect = commands.add_parser("reconnect", help="the ws-reconnect clients")
    reconnect.add_argument("urls", nargs="+")
    reconnect.add_argument("--users", type=int, default=200)
    args = parser.parse_args(argv)
    asyncio.run(reconnect_main(args.urls, args.users))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
