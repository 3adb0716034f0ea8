"""A client that stops reading is released (within the send timeout, quietly, its
subscription closed) while the server goes on serving others; and the listening
socket gives every accepted connection TCP keepalive."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import REGISTRY

from covey.core import ClusterError
from covey.realtime._sockets import listen_socket
from covey.realtime._sse import sse_app
from tests.unit._waiting import until
from tests.unit.realtime._fake_streams import FakeStreams, frames, serving, take


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log() -> Iterator[Records]:
    """What uvicorn logs as errors (its "uvicorn.error" logger)."""
    records = Records()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(records)
    try:
        yield records
    finally:
        logger.removeHandler(records)


async def frozen_client(url: str, path: str) -> socket.socket:
    """A client that sends its request and then never reads (a tiny receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
    return sock


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
async def test_a_client_that_never_reads_is_released(server_log: Records) -> None:
    streams = FakeStreams(endless=b'"' + b"x" * 4096 + b'"')  # a firehose for everyone
    released = REGISTRY.get_sample_value("covey_realtime_slow_disconnects_total",
                                         {"kind": "sse"}) or 0.0
    app = sse_app(streams.subscribe, send_timeout=0.5)
    async with serving(app, user_timeout=1.0) as served:
        frozen = await frozen_client(served.url, "/firehose")
        try:
            await until(lambda: bool(streams.of("firehose")))
            firehose = streams.of("firehose")[0]
            # another client reads its stream while the frozen one fills its buffers
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{served.url}/other") as response:
                assert len(await take(frames(response), 50)) == 50
                await until(lambda: firehose.closed, timeout=20)
                assert len(await take(frames(response), 50)) == 50  # still served
                assert firehose.yielded > 100  # it did fill the buffers before it froze
            assert REGISTRY.get_sample_value("covey_realtime_slow_disconnects_total",
                                             {"kind": "sse"}) == released + 1
            # the kernel drops the connection too (TCP_USER_TIMEOUT: a zero window
            # for 1 s), so nothing is left of it in the server
            await until(lambda: served.connections == 0, timeout=20)
        finally:
            frozen.close()
    assert not [r for r in server_log.records if r.levelno >= logging.ERROR], \
        [r.getMessage() for r in server_log.records]


async def test_closing_does_not_wait_for_a_frozen_client(server_log: Records) -> None:
    streams = FakeStreams(endless=b'"' + b"x" * 4096 + b'"')
    closing = asyncio.Event()
    app = sse_app(streams.subscribe, send_timeout=60, closing=closing)
    async with serving(app) as served:
        frozen = await frozen_client(served.url, "/firehose")
        try:
            await until(lambda: bool(streams.of("firehose")))
            firehose = streams.of("firehose")[0]
            loop = asyncio.get_running_loop()
            last = [firehose.yielded, loop.time()]

            def blocked() -> bool:  # a write waits on the full socket: no item taken for 0.3 s
                if firehose.yielded != last[0]:
                    last[:] = [firehose.yielded, loop.time()]
                return loop.time() - last[1] >= 0.3 and firehose.yielded > 100

            await until(blocked, timeout=20)
            closing.set()
            # well before the 60 s send timeout: the blocked write gets a second at most
            await until(lambda: firehose.closed, timeout=10)
        finally:
            frozen.close()
    assert not [r for r in server_log.records if r.levelno >= logging.ERROR]


async def test_uvicorn_still_reports_a_response_it_did_not_finish_for_other_apps(
        server_log: Records) -> None:
    async def unfinished(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200,  # type: ignore[operator]
                    "headers": []})

    async with serving(unfinished) as served, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(served.url) as response:
                await response.read()
    assert [r.getMessage() for r in server_log.records] == [
        "ASGI callable returned without completing response."]


def test_accepted_connections_inherit_keepalive() -> None:
    with listen_socket("127.0.0.1", 0, keepalive_idle=7, keepalive_interval=3,
                       keepalive_count=4) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
                if hasattr(socket, "TCP_KEEPIDLE"):
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
                if hasattr(socket, "TCP_USER_TIMEOUT"):  # idle + interval * count, in ms
                    assert accepted.getsockopt(socket.IPPROTO_TCP,
                                               socket.TCP_USER_TIMEOUT) == 19_000
            assert not client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


async def test_uvicorn_serves_on_it_with_keepalive() -> None:
    streams = FakeStreams()
    async with serving(sse_app(streams.subscribe)) as served, \
            aiohttp.ClientSession() as http, http.get(f"{served.url}/orders") as response:
        assert response.status == 200
        (connection,) = served.server.server_state.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        response.close()


@pytest.mark.parametrize("options", [{"keepalive_idle": 0}, {"keepalive_count": 0},
                                     {"keepalive_interval": "5"}, {"backlog": 0},
                                     {"user_timeout": -1}])
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ClusterError) as caught:
        listen_socket("127.0.0.1", 0, **options)  # type: ignore[arg-type]
    assert caught.value.reason.value == "invalid_argument"
