"""TcpTransport over loopback: multiplexing, auth, limits, failures, heartbeats, TLS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from covey.core import Reason, RunnerAddress, SerializationError, TransportError, TransportOptions
from covey.core.runtime import TaskSet
from covey.sharding import TcpTransport
from covey.sharding.transport._frames import FrameDecoder

SECRET = "s3cret"
OPTIONS = TransportOptions(connect_timeout=5.0)


class Handlers:
    """Echo handlers with per-request gates, a call count and recorded notes."""

    def __init__(self) -> None:
        self.callers: list[RunnerAddress | None] = []
        self.gates: dict[Any, asyncio.Event] = {}
        self.notes: list[dict[str, Any]] = []

    def gate(self, key: Any) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def on_request(self, caller: RunnerAddress | None,
                         body: dict[str, Any]) -> dict[str, Any]:
        self.callers.append(caller)
        if "boom" in body:
            raise KeyError(body["boom"])
        if "wait" in body:
            await self.gate(body["wait"]).wait()
        answer: dict[str, Any] = {"echo": body}
        if "pad" in body:
            answer["pad"] = b"z" * body["pad"]
        return answer

    async def on_notify(self, caller: RunnerAddress | None, body: dict[str, Any]) -> None:
        self.notes.append(body)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``predicate()`` holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


@pytest.fixture
async def server() -> AsyncIterator[tuple[TcpTransport, Handlers]]:
    transport = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    handlers = Handlers()
    await transport.start(handlers.on_request, handlers.on_notify)
    yield transport, handlers
    await transport.close()


@pytest.fixture
async def client() -> AsyncIterator[TcpTransport]:
    transport = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    yield transport
    await transport.close()


def addr(transport: TcpTransport) -> RunnerAddress:
    assert transport.address is not None
    return transport.address


async def test_round_trip_and_caller_address(server: Any, client: TcpTransport) -> None:
    srv, handlers = server
    body = {"s": "x", "i": -5, "f": 0.5, "b": b"\x00\xff", "l": [None, True], "d": {"k": [1]}}
    assert await client.request(addr(srv), body, timeout=5.0) == {"echo": body}
    assert handlers.callers == [None]  # client-only

    peer = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    me = await peer.start(Handlers().on_request, Handlers().on_notify)
    try:
        await peer.request(addr(srv), {}, timeout=5.0)
        assert handlers.callers[-1] == me
    finally:
        await peer.close()


async def test_thousand_concurrent_requests_one_connection_out_of_order(
    server: Any, client: TcpTransport
) -> None:
    srv, handlers = server
    done: list[int] = []

    async def call(k: int) -> dict[str, Any]:
        answer = await client.request(addr(srv), {"wait": k}, timeout=60.0)
        done.append(k)
        return answer

    calls = [asyncio.create_task(call(k)) for k in range(1000)]
    await wait_until(lambda: len(handlers.callers) == 1000)
    assert srv.open_connections == 1 and client.open_connections == 1
    for k in reversed(range(1000)):
        handlers.gate(k).set()
    answers = await asyncio.gather(*calls)
    assert [a["echo"]["wait"] for a in answers] == list(range(1000))
    assert done[:10] == [999, 998, 997, 996, 995, 994, 993, 992, 991, 990]
    assert done != sorted(done)


async def test_concurrent_first_callers_share_one_connect(
    server: Any, client: TcpTransport
) -> None:
    srv, _ = server
    await asyncio.gather(*(client.request(addr(srv), {"k": k}, timeout=5.0) for k in range(50)))
    assert srv.open_connections == 1


async def test_large_bodies_cross_in_pieces(server: Any, client: TcpTransport) -> None:
    srv, _ = server
    bodies = [{"k": k, "blob": bytes([k]) * 1_000_000} for k in range(8)]
    answers = await asyncio.gather(*(client.request(addr(srv), b, timeout=30.0)
                                     for b in bodies))
    assert [a["echo"] for a in answers] == bodies


async def test_notify(server: Any, client: TcpTransport) -> None:
    srv, handlers = server
    await client.notify(addr(srv), {"n": 1})
    await client.notify(addr(srv), {"n": 2})
    await wait_until(lambda: len(handlers.notes) == 2)
    assert handlers.notes == [{"n": 1}, {"n": 2}]


async def test_handler_exception_is_remote_failure(server: Any, client: TcpTransport) -> None:
    srv, _ = server
    with pytest.raises(TransportError) as info:
        await client.request(addr(srv), {"boom": "missing"}, timeout=5.0)
    assert info.value.reason is Reason.REMOTE_FAILURE
    assert info.value.details["error_type"] == "KeyError"
    assert info.value.details["message"] == "'missing'"
    assert await client.request(addr(srv), {"ok": 1}, timeout=5.0) == {"echo": {"ok": 1}}


async def test_timeout_then_connection_still_usable(server: Any, client: TcpTransport) -> None:
    srv, handlers = server
    with pytest.raises(TransportError) as info:
        await client.request(addr(srv), {"wait": "never"}, timeout=0.1)
    assert info.value.reason is Reason.TIMEOUT
    handlers.gate("never").set()  # the late answer is dropped quietly
    assert await client.request(addr(srv), {"ok": 2}, timeout=5.0) == {"echo": {"ok": 2}}


async def test_wrong_secret_is_auth_failed_and_server_keeps_serving(
    server: Any, client: TcpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    srv, handlers = server
    intruder = TcpTransport("127.0.0.1", 0, secret="wrong", options=OPTIONS)
    try:
        with caplog.at_level(logging.WARNING, logger="covey.transport"):
            with pytest.raises(TransportError) as info:
                await intruder.request(addr(srv), {}, timeout=5.0)
            await wait_until(lambda: "wrong cluster secret" in caplog.text)
        assert info.value.reason is Reason.AUTH_FAILED
        assert "127.0.0.1" in caplog.text
        with pytest.raises(TransportError) as info:  # within the backoff: fails fast
            await intruder.request(addr(srv), {}, timeout=5.0)
        assert info.value.reason is Reason.AUTH_FAILED
    finally:
        await intruder.close()
    assert handlers.callers == []
    assert await client.request(addr(srv), {"ok": 1}, timeout=5.0) == {"echo": {"ok": 1}}


async def test_oversized_body_fails_locally_without_sending(server: Any) -> None:
    srv, handlers = server
    small = TcpTransport("127.0.0.1", 0, secret=SECRET,
                         options=TransportOptions(max_frame_bytes=1000))
    try:
        with pytest.raises(TransportError) as info:
            await small.request(addr(srv), {"x": b"y" * 2000}, timeout=5.0)
        assert info.value.reason is Reason.FRAME_TOO_LARGE
        assert small.open_connections == 0 and srv.open_connections == 0
        with pytest.raises(SerializationError):
            await small.request(addr(srv), {"x": object()}, timeout=5.0)
        # A reply larger than the caller accepts (it said so in the handshake)
        # is refused by the server, which answers frame_too_large instead.
        with pytest.raises(TransportError) as info:
            await small.request(addr(srv), {"pad": 5000}, timeout=5.0)
        assert info.value.reason is Reason.FRAME_TOO_LARGE
        assert await small.request(addr(srv), {"ok": 1}, timeout=5.0) == {"echo": {"ok": 1}}
        assert small.open_connections == 1
    finally:
        await small.close()
    assert handlers.callers.count(None) == 2


async def test_request_over_the_receivers_limit_gets_frame_too_large(
    client: TcpTransport,
) -> None:
    handlers = Handlers()
    small = TcpTransport("127.0.0.1", 0, secret=SECRET,
                         options=TransportOptions(max_frame_bytes=1000))
    peer = await small.start(handlers.on_request, handlers.on_notify)
    try:
        ok = asyncio.create_task(client.request(peer, {"wait": 1}, timeout=10.0))
        await wait_until(lambda: len(handlers.callers) == 1)
        # The peer announced its limit in the handshake: refused here, unsent,
        # and the connection (with the other request on it) lives on.
        with pytest.raises(TransportError) as info:
            await client.request(peer, {"x": b"y" * 5000}, timeout=5.0)
        assert info.value.reason is Reason.FRAME_TOO_LARGE
        assert info.value.details["limit"] == 1000
        handlers.gate(1).set()
        assert await ok == {"echo": {"wait": 1}}
        assert len(handlers.callers) == 1
        assert client.open_connections == 1
    finally:
        await small.close()


# -- raw sockets ---------------------------------------------------------------


def _frame(obj: Any) -> bytes:
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    decoder = FrameDecoder(1 << 20)
    while True:
        data = await reader.read(65536)
        assert data, "connection closed before a frame arrived"
        frames = decoder.feed(data)
        if frames:
            return frames[0]


async def _raw_handshake(peer: RunnerAddress, secret: str = SECRET) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(peer.host, peer.port)
    challenge = await _read_frame(reader)
    assert challenge["t"] == "challenge"
    mac = hmac.new(secret.encode(), challenge["n"], hashlib.sha256).digest()
    writer.write(_frame({"t": "hello", "v": 1, "mac": mac, "a": None}))
    assert (await _read_frame(reader))["t"] == "welcome"
    return reader, writer


async def _read_until_eof(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(5.0):
        return await reader.read()


async def test_huge_frame_header_closes_only_that_connection(
    server: Any, client: TcpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    srv, _ = server
    assert await client.request(addr(srv), {"before": 1}, timeout=5.0)
    reader, writer = await _raw_handshake(addr(srv))
    with caplog.at_level(logging.WARNING, logger="covey.transport"):
        writer.write(struct.pack(">I", 1 << 30) + b"\x80" * 100)
        rest = await _read_until_eof(reader)
    writer.close()
    await writer.wait_closed()
    error = FrameDecoder(1 << 20).feed(rest)[0]
    assert error["t"] == "err" and error["r"] == "frame_too_large"
    assert "exceeds the limit" in caplog.text
    assert await client.request(addr(srv), {"after": 1}, timeout=5.0) == {"echo": {"after": 1}}
    assert client.open_connections == 1  # the good connection was never dropped


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x00\x00\x00\x03abc",
    _frame({"t": "req", "i": 1, "b": {}}),  # well-formed but skips the handshake
])
async def test_garbage_before_handshake_is_dropped(
    server: Any, client: TcpTransport, garbage: bytes
) -> None:
    srv, handlers = server
    reader, writer = await asyncio.open_connection("127.0.0.1", addr(srv).port)
    writer.write(garbage)
    await _read_until_eof(reader)  # challenge, then the server hangs up
    writer.close()
    await writer.wait_closed()
    assert handlers.callers == []
    assert await client.request(addr(srv), {"ok": 1}, timeout=5.0) == {"echo": {"ok": 1}}


async def test_error_frame_from_a_client_only_member_keeps_the_connection(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A client-only caller (no advertised address) may report an error; we log it."""
    srv, handlers = server
    reader, writer = await _raw_handshake(addr(srv))  # advertises no address
    try:
        with caplog.at_level(logging.WARNING, logger="covey.transport"):
            writer.write(_frame({"t": "err", "i": None, "r": "frame_too_large",
                                 "m": "your reply was too big", "x": {"limit": 5}}))
            writer.write(_frame({"t": "err", "i": 3, "r": "remote_failure", "m": "late"}))
            writer.write(_frame({"t": "req", "i": 7, "b": {"ok": 1}}))
            async with asyncio.timeout(5.0):
                answer = await _read_frame(reader)
        assert answer == {"t": "res", "i": 7, "b": {"echo": {"ok": 1}}}
        assert "your reply was too big" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert handlers.callers == [None]
        assert srv.open_connections == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_error_frame_without_id_fails_the_oversized_request() -> None:
    """A peer that did not announce its limit refuses our frame after reading its header."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_frame({"t": "challenge", "n": b"\x00" * 16}))
        await _read_frame(reader)
        writer.write(_frame({"t": "welcome"}))  # no "m": limit unknown to the client
        await reader.readexactly(4)
        writer.write(_frame({"t": "err", "i": None, "r": "frame_too_large", "m": "too big",
                             "x": {"size": 600, "limit": 100}}))
        writer.close()

    fake = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    try:
        peer = RunnerAddress("127.0.0.1", fake.sockets[0].getsockname()[1])
        with pytest.raises(TransportError) as info:
            await client.request(peer, {"x": b"y" * 500}, timeout=5.0)
        assert info.value.reason is Reason.FRAME_TOO_LARGE
    finally:
        await client.close()
        fake.close()
        await fake.wait_closed()


# -- lost peers, restarts, heartbeats ---------------------------------------------


async def test_server_closed_mid_request_fails_pending_promptly(
    server: Any, client: TcpTransport
) -> None:
    srv, handlers = server
    lost: list[RunnerAddress] = []
    client.on_peer_lost(lost.append)
    calls = [asyncio.create_task(client.request(addr(srv), {"wait": "x"}, timeout=60.0))
             for _ in range(20)]
    await wait_until(lambda: len(handlers.callers) == 20)
    await srv.close()
    async with asyncio.timeout(2.0):  # far sooner than the 60 s request timeout
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, TransportError) and r.reason is Reason.PEER_UNAVAILABLE
               for r in results)
    await wait_until(lambda: lost == [addr(srv)])


_CHILD = r"""
import asyncio, sys
from covey.core import TransportOptions
from covey.sharding import TcpTransport

async def main():
    async def on_request(caller, body):
        if body.get("hang"):
            await asyncio.Event().wait()
        return {"pong": body}
    async def on_notify(caller, body):
        pass
    t = TcpTransport("127.0.0.1", 0, secret="s3cret", options=TransportOptions())
    address = await t.start(on_request, on_notify)
    print(address.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_peer_process_killed_mid_request(client: TcpTransport) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            port = int(await proc.stdout.readline())
        peer = RunnerAddress("127.0.0.1", port)
        lost: list[RunnerAddress] = []
        client.on_peer_lost(lost.append)
        assert await client.request(peer, {"x": 1}, timeout=10.0) == {"pong": {"x": 1}}
        hanging = [asyncio.create_task(client.request(peer, {"hang": 1}, timeout=60.0))
                   for _ in range(5)]
        await asyncio.sleep(0)  # let the requests be written
        proc.kill()
        async with asyncio.timeout(5.0):
            results = await asyncio.gather(*hanging, return_exceptions=True)
        assert all(isinstance(r, TransportError) and r.reason is Reason.PEER_UNAVAILABLE
                   for r in results), results
        await wait_until(lambda: lost == [peer])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_reconnect_after_server_restarts_on_same_port(client: TcpTransport) -> None:
    first = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    peer = await first.start(Handlers().on_request, Handlers().on_notify)
    lost: list[RunnerAddress] = []
    client.on_peer_lost(lost.append)
    assert await client.request(peer, {"n": 1}, timeout=5.0) == {"echo": {"n": 1}}
    await first.close()
    await wait_until(lambda: lost == [peer])

    with pytest.raises(TransportError) as info:  # refused
        await client.request(peer, {"n": 2}, timeout=5.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    with pytest.raises(TransportError) as info:  # inside the backoff window: fast
        await client.request(peer, {"n": 3}, timeout=5.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE and "not retrying" in str(info.value)

    second = TcpTransport("127.0.0.1", peer.port, secret=SECRET, options=OPTIONS)
    await second.start(Handlers().on_request, Handlers().on_notify)
    try:
        answer: dict[str, Any] | None = None
        refusals: list[Reason] = []  # until the backoff window has passed
        async with asyncio.timeout(10.0):
            while answer is None:
                try:
                    answer = await client.request(peer, {"n": 4}, timeout=5.0)
                except TransportError as exc:
                    refusals.append(exc.reason)
                    await asyncio.sleep(0.02)
        assert answer == {"echo": {"n": 4}}
        assert set(refusals) <= {Reason.PEER_UNAVAILABLE}
    finally:
        await second.close()


async def _silent_server(handshake: bool) -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """A server that completes the handshake (or not) and then never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if handshake:
            writer.write(_frame({"t": "challenge", "n": b"\x00" * 16}))
            await _read_frame(reader)
            writer.write(_frame({"t": "welcome"}))
        while await reader.read(65536):
            pass

    return await asyncio.start_server(handle, "127.0.0.1", 0), writers


async def test_heartbeat_timeout_drops_a_silent_peer() -> None:
    silent, writers = await _silent_server(handshake=True)
    port = silent.sockets[0].getsockname()[1]
    peer = RunnerAddress("127.0.0.1", port)
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=TransportOptions(
        heartbeat_interval=0.05, heartbeat_timeout=0.3))
    lost: list[RunnerAddress] = []
    client.on_peer_lost(lost.append)
    try:
        with pytest.raises(TransportError) as info:
            async with asyncio.timeout(5.0):  # the request's own timeout is 60 s
                await client.request(peer, {"x": 1}, timeout=60.0)
        assert info.value.reason is Reason.PEER_UNAVAILABLE
        assert lost == [peer]
    finally:
        await client.close()
        for writer in writers:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_server_drops_a_client_that_stops_answering_pings() -> None:
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET, options=TransportOptions(
        heartbeat_interval=0.05, heartbeat_timeout=0.3))
    await srv.start(Handlers().on_request, Handlers().on_notify)
    try:
        reader, writer = await _raw_handshake(addr(srv))
        await _read_until_eof(reader)  # pings arrive, we never answer, it hangs up
        writer.close()
        await writer.wait_closed()
        await wait_until(lambda: srv.open_connections == 0)
    finally:
        await srv.close()


async def test_handshake_timeout_drops_a_mute_client(client: TcpTransport) -> None:
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET,
                       options=TransportOptions(connect_timeout=0.2))
    handlers = Handlers()
    await srv.start(handlers.on_request, handlers.on_notify)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", addr(srv).port)
        assert (await _read_frame(reader))["t"] == "challenge"
        await wait_until(lambda: srv.open_connections == 1)
        # Say nothing: the server must hang up on its own (EOF), long before
        # this deadline, while we still hold our end open.
        async with asyncio.timeout(5.0):
            assert await reader.read() == b""
        assert not writer.is_closing()
        await wait_until(lambda: srv.open_connections == 0)
        writer.close()
        await writer.wait_closed()
        # ... and it keeps serving.
        assert await client.request(addr(srv), {"ok": 1}, timeout=5.0) == {"echo": {"ok": 1}}
        assert handlers.callers == [None]
    finally:
        await srv.close()


async def test_connect_to_a_server_that_never_welcomes_times_out() -> None:
    mute, writers = await _silent_server(handshake=False)
    peer = RunnerAddress("127.0.0.1", mute.sockets[0].getsockname()[1])
    client = TcpTransport("127.0.0.1", 0, secret=SECRET,
                          options=TransportOptions(connect_timeout=0.2))
    try:
        with pytest.raises(TransportError) as info:
            await client.request(peer, {}, timeout=5.0)
        assert info.value.reason is Reason.PEER_UNAVAILABLE
    finally:
        await client.close()
        for writer in writers:
            writer.close()
        mute.close()
        await mute.wait_closed()


# -- TLS -----------------------------------------------------------------------


def _tls_options(tmp_path: Path, name: str, ca: Any) -> TransportOptions:
    cert = ca.issue_cert("127.0.0.1")
    paths = {k: tmp_path / f"{name}-{k}.pem" for k in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return TransportOptions(tls_cert=str(paths["cert"]), tls_key=str(paths["key"]),
                            tls_ca=str(paths["ca"]))


async def test_tls_round_trip_and_untrusted_client(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET, options=_tls_options(tmp_path, "s", ca))
    good = TcpTransport("127.0.0.1", 0, secret=SECRET, options=_tls_options(tmp_path, "g", ca))
    rogue = TcpTransport("127.0.0.1", 0, secret=SECRET,
                         options=_tls_options(tmp_path, "r", trustme.CA()))
    handlers = Handlers()
    peer = await srv.start(handlers.on_request, handlers.on_notify)
    try:
        body = {"secret": b"\x01" * 100_000}
        assert await good.request(peer, body, timeout=5.0) == {"echo": body}
        with pytest.raises(TransportError) as info:
            await rogue.request(peer, {}, timeout=5.0)
        assert info.value.reason in (Reason.AUTH_FAILED, Reason.PEER_UNAVAILABLE)
        assert await good.request(peer, {"n": 2}, timeout=5.0) == {"echo": {"n": 2}}
        assert len(handlers.callers) == 2
    finally:
        await good.close()
        await rogue.close()
        await srv.close()


# ---- owned tasks ----------------------------------------------------------------

async def test_a_failed_connect_is_the_callers_error_not_a_crash(client: TcpTransport) -> None:
    crashes: list[BaseException] = []
    client.use_tasks(TaskSet("covey-transport", on_crash=crashes.append))
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(TransportError) as info:
        await client.request(RunnerAddress("127.0.0.1", port), {}, timeout=5.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    await asyncio.sleep(0)  # the connect task's end is reported after the callers'
    assert crashes == []


async def test_handlers_run_in_the_given_task_set_and_close_leaves_none(
    client: TcpTransport,
) -> None:
    server = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    handlers = Handlers()
    tasks = TaskSet("covey-transport")
    server.use_tasks(tasks)
    await server.start(handlers.on_request, handlers.on_notify)
    try:
        call = asyncio.ensure_future(client.request(addr(server), {"wait": 1}, timeout=5.0))
        await wait_until(lambda: len(handlers.callers) == 1)
        assert len(tasks) == 1  # the handler, blocked on its gate
        handler = next(iter(tasks.tasks))
    finally:
        await server.close()
    assert len(tasks) == 0 and handler.cancelled()
    with pytest.raises(TransportError) as info:
        await call
    assert info.value.reason is Reason.PEER_UNAVAILABLE
