"""The runner transport's listening port under hostile input (issue 8).

Each case drives the port with bytes no runner would send: garbage, huge length
prefixes, truncated frames, wrong secrets, replayed handshakes, and after a valid
handshake frames that are valid msgpack in the wrong shape. For every case the
test checks what an operator would notice: the connection is closed (or the
frame is answered with a typed ``err`` frame and the connection lives on), no
handler ever sees the input, no task is left behind, nothing is logged at ERROR,
and a good peer's request works right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from covey.core import Reason, RunnerAddress, TestClock, TransportError, TransportOptions
from covey.sharding import TcpTransport
from covey.sharding.transport._frames import FrameDecoder

SECRET = "s3cret"
# A short handshake bound: cases that leave a frame incomplete end quickly.
OPTIONS = TransportOptions(connect_timeout=0.5)
DEADLINE = 5.0
U64 = 2**64 - 1


class Recorder:
    """Echo handlers that record every body they are handed."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.notes: list[Any] = []

    async def on_request(self, caller: RunnerAddress | None, body: Any) -> dict[str, Any]:
        self.requests.append(body)
        return {"echo": body}

    async def on_notify(self, caller: RunnerAddress | None, body: Any) -> None:
        self.notes.append(body)


class Server:
    """A listening transport, a good client of it, and what its handlers saw."""

    def __init__(self, transport: TcpTransport, good: TcpTransport, seen: Recorder) -> None:
        self.transport = transport
        self.good = good
        self.seen = seen
        self.good_calls = 0
        self.baseline: set[asyncio.Task[Any]] = set()
        self.wires: list[Wire] = []  # closed at teardown, even after a failure

    @property
    def address(self) -> RunnerAddress:
        assert self.transport.address is not None
        return self.transport.address

    async def good_request(self) -> None:
        """A good peer's request works (over its one long-lived connection)."""
        self.good_calls += 1
        body = {"good": self.good_calls}
        assert await self.good.request(self.address, body, timeout=DEADLINE) == {"echo": body}

    async def assert_healthy(self, *, delivered: list[Any] | None = None) -> None:
        """No hostile connection left open, no task left behind, nothing (else)
        delivered to a handler, and a good peer is still served."""
        await wait_until(lambda: self.transport.open_connections == 1)  # the good one
        await wait_until(lambda: others() <= self.baseline)
        goods = [{"good": k} for k in range(1, self.good_calls + 1)]
        assert [b for b in self.seen.requests if b not in goods] == (delivered or [])
        assert self.seen.notes == []
        await self.good_request()
        assert self.transport.open_connections == 1


def others() -> set[asyncio.Task[Any]]:
    """The tasks alive besides the one asking."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], within: float = DEADLINE) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)


@pytest.fixture
async def server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Server]:
    seen = Recorder()
    transport = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    await transport.start(seen.on_request, seen.on_notify)
    good = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    srv = Server(transport, good, seen)
    caplog.set_level(logging.WARNING)
    try:
        await srv.good_request()
        srv.baseline = others()
        yield srv
        # Nothing the hostile input did may crash a protocol callback: asyncio
        # logs those at ERROR ("Fatal error: protocol.data_received() ...").
        errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        for wire in srv.wires:
            await wire.close()
        await good.close()
        await transport.close()


# -- raw wire helpers ----------------------------------------------------------


def frame(obj: Any) -> bytes:
    return raw(msgpack.packb(obj, use_bin_type=True))


def raw(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def mac_for(nonce: bytes, secret: str = SECRET) -> bytes:
    return hmac.new(secret.encode(), nonce, hashlib.sha256).digest()


class Wire:
    """A raw connection to the server that reads frames as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(1 << 20)
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, srv: Server) -> Wire:
        reader, writer = await asyncio.open_connection(srv.address.host, srv.address.port)
        wire = cls(reader, writer)
        srv.wires.append(wire)
        return wire

    async def next_frame(self) -> dict[str, Any] | None:
        """The next frame, or None at EOF."""
        async with asyncio.timeout(DEADLINE):
            while not self.frames:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.frames.extend(self.decoder.feed(data))
        return self.frames.pop(0)

    async def until_closed(self) -> list[dict[str, Any]]:
        """Every frame the server still sends before it hangs up on us."""
        got = []
        while (item := await self.next_frame()) is not None:
            got.append(item)
        return got

    async def challenge(self) -> bytes:
        first = await self.next_frame()
        assert first is not None and first["t"] == "challenge"
        nonce: bytes = first["n"]
        return nonce

    async def authenticate(self, **hello: Any) -> None:
        nonce = await self.challenge()
        self.send(frame({"t": "hello", "v": 1, "mac": mac_for(nonce), "a": None, **hello}))
        welcome = await self.next_frame()
        assert welcome is not None and welcome["t"] == "welcome"

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):  # the server reset it: fine
            await self.writer.wait_closed()


async def authenticated(srv: Server) -> Wire:
    wire = await Wire.open(srv)
    await wire.authenticate()
    return wire


def deep_payload(levels: int) -> bytes:
    """A ``req`` frame whose body nests ``levels`` one-element arrays (raw msgpack)."""
    return raw(b"\x83\xa1t\xa3req\xa1i\x01\xa1b\x81\xa1d" + b"\x91" * levels + b"\xc0")


def bad_utf8(where: str) -> bytes:
    """A frame with a msgpack *str* that is not UTF-8, as the kind, a key or a value."""
    junk = b"\xa2\xff\xfe"
    if where == "kind":
        return raw(b"\x81\xa1t" + junk)
    if where == "key":
        return raw(b"\x83\xa1t\xa3req\xa1i\x01\xa1b\x81" + junk + b"\x01")
    return raw(b"\x83\xa1t\xa3req\xa1i\x01\xa1b\x81\xa1s" + junk)


# -- before the handshake ---------------------------------------------------------

BEFORE_HANDSHAKE = {
    "http request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "4 GiB length prefix": b"\xff\xff\xff\xff" + b"\x00" * 64,
    "empty payload": raw(b""),
    "not msgpack": raw(b"\xc1\xc1\xc1"),
    "a list, not a map": frame([1, 2, 3]),
    "kind not text": frame({"t": 7}),
    "kind not UTF-8": bad_utf8("kind"),
    "request before hello": frame({"t": "req", "i": 1, "b": {"x": 1}}),
    "note before hello": frame({"t": "note", "b": {"x": 1}}),
    "welcome from a client": frame({"t": "welcome", "m": 10}),
    "challenge from a client": frame({"t": "challenge", "n": b"\x00" * 16}),
    "unknown kind": frame({"t": "zap"}),
    "4,000 levels of nesting": deep_payload(4000),
    "truncated frame, then quiet": raw(b"\x81\xa1t\xa3req")[:-3],
}


@pytest.mark.parametrize("data", BEFORE_HANDSHAKE.values(), ids=BEFORE_HANDSHAKE.keys())
async def test_garbage_before_the_handshake_is_hung_up_on(server: Server, data: bytes) -> None:
    wire = await Wire.open(server)
    await wire.challenge()
    wire.send(data)
    assert await wire.until_closed() == []
    await wire.close()
    await server.assert_healthy()


async def test_truncated_frame_then_close(server: Server) -> None:
    for authenticate in (False, True):
        wire = await Wire.open(server)
        if authenticate:
            await wire.authenticate()
        wire.send(frame({"t": "req", "i": 1, "b": {"x": b"y" * 500}})[:200])
        await wire.close()
        await server.assert_healthy()


def _hello(**fields: Any) -> Callable[[bytes], dict[str, Any]]:
    def build(nonce: bytes) -> dict[str, Any]:
        hello: dict[str, Any] = {"t": "hello", "v": 1, "mac": mac_for(nonce), "a": None}
        hello.update(fields)
        return hello
    return build


DENIED_HELLOS: dict[str, Callable[[bytes], dict[str, Any]]] = {
    "wrong secret": lambda n: {"t": "hello", "v": 1, "mac": mac_for(n, "guess"), "a": None},
    "mac as text": _hello(mac="0123456789abcdef0123456789abcdef"),
    "mac missing": lambda n: {"t": "hello", "v": 1, "a": None},
    "mac of another nonce": lambda n: _hello(mac=mac_for(b"\x00" * 16))(n),
}

CLOSED_HELLOS: dict[str, Callable[[bytes], dict[str, Any]]] = {
    "address as text": _hello(a="127.0.0.1:9000"),
    "address too short": _hello(a=["127.0.0.1"]),
    "port as text": _hello(a=["127.0.0.1", "9000"]),
    "host as int": _hello(a=[1, 9000]),
    "host as bytes": _hello(a=[b"127.0.0.1", 9000]),
    "empty host": _hello(a=["", 9000]),
    "port above 65535": _hello(a=["127.0.0.1", 70000]),
    "negative port": _hello(a=["127.0.0.1", -1]),
    "port 2**64-1": _hello(a=["127.0.0.1", U64]),
    "version as text": _hello(v="1"),
    "unknown version": _hello(v=99),
    "frame limit as text": _hello(m="16MiB"),
    "frame limit zero": _hello(m=0),
}


@pytest.mark.parametrize("hello", DENIED_HELLOS.values(), ids=DENIED_HELLOS.keys())
async def test_a_hello_without_the_secret_is_denied(
    server: Server, hello: Callable[[bytes], dict[str, Any]]
) -> None:
    wire = await Wire.open(server)
    wire.send(frame(hello(await wire.challenge())))
    assert [f["t"] for f in await wire.until_closed()] == ["denied"]
    await wire.close()
    await server.assert_healthy()


@pytest.mark.parametrize("hello", CLOSED_HELLOS.values(), ids=CLOSED_HELLOS.keys())
async def test_a_malformed_hello_is_hung_up_on(
    server: Server, hello: Callable[[bytes], dict[str, Any]]
) -> None:
    wire = await Wire.open(server)
    wire.send(frame(hello(await wire.challenge())))
    assert await wire.until_closed() == []
    await wire.close()
    await server.assert_healthy()


async def test_a_replayed_handshake_is_refused(server: Server) -> None:
    # Captured from one connection, replayed on another: the nonce differs.
    first = await Wire.open(server)
    captured = frame({"t": "hello", "v": 1, "mac": mac_for(await first.challenge()), "a": None})
    first.send(captured)
    assert (await first.next_frame() or {}).get("t") == "welcome"
    replay = await Wire.open(server)
    await replay.challenge()
    replay.send(captured)
    assert [f["t"] for f in await replay.until_closed()] == ["denied"]
    await replay.close()
    # Replayed on the authenticated connection itself: a protocol error.
    first.send(captured)
    assert await first.until_closed() == []
    await first.close()
    await server.assert_healthy()


# -- after a valid handshake ------------------------------------------------------

CLOSED_AFTER_HANDSHAKE = {
    "unknown kind": frame({"t": "zap", "i": 1}),
    "kind as int": frame({"t": 1}),
    "kind as None": frame({"t": None}),
    "a list, not a map": frame(["req", 1, {}]),
    "second hello": frame({"t": "hello", "v": 1, "mac": b"x" * 32, "a": None}),
    "challenge": frame({"t": "challenge", "n": b"\x00" * 16}),
    "welcome": frame({"t": "welcome", "m": 5}),
    "denied": frame({"t": "denied", "m": "no"}),
    "req id None": frame({"t": "req", "i": None, "b": {"x": 1}}),
    "req id missing": frame({"t": "req", "b": {"x": 1}}),
    "req id text": frame({"t": "req", "i": "1", "b": {"x": 1}}),
    "req id float": frame({"t": "req", "i": 1.5, "b": {"x": 1}}),
    "req id bool": frame({"t": "req", "i": True, "b": {"x": 1}}),
    "req id list": frame({"t": "req", "i": [1], "b": {"x": 1}}),
    "req id map": frame({"t": "req", "i": {"a": 1}, "b": {"x": 1}}),
    "req id bytes": frame({"t": "req", "i": b"\x01", "b": {"x": 1}}),
    "note body None": frame({"t": "note", "b": None}),
    "note body missing": frame({"t": "note"}),
    "note body text": frame({"t": "note", "b": "x"}),
    "note body list": frame({"t": "note", "b": [1]}),
    "note body int keys": frame({"t": "note", "b": {1: "x"}}),
    "res id list": frame({"t": "res", "i": [1], "b": {}}),
    "res id map": frame({"t": "res", "i": {"a": 1}, "b": {}}),
    "res id text": frame({"t": "res", "i": "1", "b": {}}),
    "err id list": frame({"t": "err", "i": [1], "r": "timeout", "m": "x"}),
    "err id text": frame({"t": "err", "i": "1", "r": "timeout", "m": "x"}),
    "10,000 levels of nesting": deep_payload(10_000),
    "kind not UTF-8": bad_utf8("kind"),
    "key not UTF-8": bad_utf8("key"),
    "text value not UTF-8": bad_utf8("value"),
    "list as a map key": raw(b"\x82\xa1t\xa4note\x91\x01\x02"),
}


@pytest.mark.parametrize("data", CLOSED_AFTER_HANDSHAKE.values(),
                         ids=CLOSED_AFTER_HANDSHAKE.keys())
async def test_a_frame_of_the_wrong_shape_closes_the_connection(
    server: Server, data: bytes
) -> None:
    wire = await authenticated(server)
    wire.send(data)
    wire.send(frame({"t": "req", "i": 2, "b": {"never": "answered"}}))
    assert await wire.until_closed() == []
    await wire.close()
    await server.assert_healthy()


async def test_a_4_gib_length_prefix_gets_frame_too_large_then_close(server: Server) -> None:
    wire = await authenticated(server)
    wire.send(b"\xff\xff\xff\xff" + b"\x00" * 1000)
    frames = await wire.until_closed()
    assert [(f["t"], f["r"], f["x"]["size"]) for f in frames] == [
        ("err", Reason.FRAME_TOO_LARGE.value, 2**32 - 1)]
    await wire.close()
    await server.assert_healthy()


BAD_BODIES = {
    "None": None,
    "missing": ...,
    "text": "x",
    "int": 5,
    "list": [1, 2],
    "bytes": b"x",
    "int keys": {1: "x"},
    "bytes keys": {b"k": 1},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_request_with_a_bad_body_gets_a_typed_error_and_the_connection_lives(
    server: Server, body: Any
) -> None:
    wire = await authenticated(server)
    request: dict[str, Any] = {"t": "req", "i": 41}
    if body is not ...:
        request["b"] = body
    wire.send(frame(request))
    answer = await wire.next_frame()
    assert answer is not None
    assert (answer["t"], answer["i"], answer["r"]) == ("err", 41, Reason.PAYLOAD_INVALID.value)
    wire.send(frame({"t": "req", "i": 42, "b": {"fine": 1}}))
    assert await wire.next_frame() == {"t": "res", "i": 42, "b": {"echo": {"fine": 1}}}
    await wire.close()
    await server.assert_healthy(delivered=[{"fine": 1}])


async def test_stray_answers_and_odd_but_valid_frames_keep_the_connection(
    server: Server,
) -> None:
    wire = await authenticated(server)
    for stray in (
        {"t": "res", "i": 12345, "b": {"late": 1}},       # an answer nobody waits for
        {"t": "res", "i": U64, "b": {}},
        {"t": "err", "i": 999, "r": ["x"], "m": {"y": 1}, "x": "z"},
        {"t": "err", "i": None, "r": None, "m": None, "x": None},
        {"t": "err", "i": None, "r": 5, "m": "x" * 3000, "x": [1]},
        {"t": "pong", "junk": [1, 2]},
    ):
        wire.send(frame(stray))
    wire.send(frame({"t": "ping", "junk": {"a": 1}}))
    assert await wire.next_frame() == {"t": "pong"}
    # Huge (but msgpack-legal) ints are fine as ids and inside bodies.
    body = {"n": U64, "neg": -(2**63), "s": "é"}
    wire.send(frame({"t": "req", "i": U64, "b": body}))
    assert await wire.next_frame() == {"t": "res", "i": U64, "b": {"echo": body}}
    await wire.close()
    await server.assert_healthy(delivered=[body])


# -- hypothesis: arbitrary frames after the handshake -------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-(2**63), U64)
            | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=3) | st.integers(0, 9), inner,
                                     max_size=3)),
    max_leaves=8,
)
_kinds = st.sampled_from(["req", "res", "err", "note", "ping", "pong", "hello",
                          "challenge", "welcome", "denied", "zap", ""]) | _values
_frames = st.fixed_dictionaries(
    {"t": _kinds},
    optional={"i": _values, "b": _values, "r": _values, "m": _values, "x": _values,
              "n": _values, "a": _values, "v": _values, "mac": _values},
)


def _well_formed_body(body: Any) -> bool:
    return type(body) is dict and all(type(k) is str for k in body)


# One server for all examples (it must keep serving across them); derandomized so
# a run is reproducible; no deadline or too_slow check: the 2-core CI box is busy.
@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(hostile=_frames)
async def test_any_frame_after_the_handshake_is_answered_ignored_or_hung_up_on(
    server: Server, hostile: dict[str, Any]
) -> None:
    sentinel = {"sentinel": server.good_calls}
    wire = await authenticated(server)
    before = len(server.seen.requests)
    wire.send(frame(hostile))
    wire.send(frame({"t": "req", "i": -7, "b": sentinel}))
    answered = False
    while (got := await wire.next_frame()) is not None:
        if got == {"t": "res", "i": -7, "b": {"echo": sentinel}}:
            answered = True
            break
        # Anything else the server sends back is a typed answer to our frame.
        assert got["t"] in ("res", "err", "pong"), got
        if got["t"] == "err":
            assert got["r"] in {r.value for r in Reason}
    await wire.close()
    delivered = server.seen.requests[before:]
    assert all(_well_formed_body(b) for b in delivered), delivered
    assert all(_well_formed_body(b) for b in server.seen.notes), server.seen.notes
    # The sentinel is answered exactly when the connection survived our frame.
    assert (sentinel in delivered) is answered
    del server.seen.requests[before:]  # well-formed, so fine; keep the check simple
    server.seen.notes.clear()
    await server.assert_healthy()


async def test_random_bytes_before_the_handshake() -> None:
    """Seeded random byte strings, each on a fresh connection, never reach a handler."""
    rng = random.Random(8)
    seen = Recorder()
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET,
                       options=TransportOptions(connect_timeout=0.3))
    address = await srv.start(seen.on_request, seen.on_notify)
    try:
        async def one(data: bytes) -> None:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(data)
            async with asyncio.timeout(DEADLINE):
                await reader.read()  # the server hangs up (error or handshake timeout)
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(one(rng.randbytes(rng.randrange(1, 3000)))
                               for _ in range(40)))
        await wait_until(lambda: srv.open_connections == 0)
        assert seen.requests == [] and seen.notes == []
    finally:
        await srv.close()


# -- the outgoing side: a peer we dialled answers in the wrong shape -------------------


async def _fake_peer(answer: Callable[[int], bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame({"t": "challenge", "n": b"\x00" * 16}))
        decoder = FrameDecoder(1 << 20)
        try:
            while data := await reader.read(65536):
                for got in decoder.feed(data):
                    if got["t"] == "hello":
                        writer.write(frame({"t": "welcome", "m": 1 << 20}))
                    elif got["t"] == "req":
                        writer.write(answer(got["i"]))
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


WRONG_ANSWERS: dict[str, Callable[[int], bytes]] = {
    "res body text": lambda i: frame({"t": "res", "i": i, "b": "x"}),
    "res body None": lambda i: frame({"t": "res", "i": i, "b": None}),
    "res body list": lambda i: frame({"t": "res", "i": i, "b": [1]}),
    "res body int keys": lambda i: frame({"t": "res", "i": i, "b": {1: 2}}),
    "res id list": lambda i: frame({"t": "res", "i": [i], "b": {}}),
    "err id map": lambda i: frame({"t": "err", "i": {"i": i}, "r": "timeout", "m": "x"}),
    "note body text": lambda i: frame({"t": "note", "b": "x"}),
}


@pytest.mark.parametrize("answer", WRONG_ANSWERS.values(), ids=WRONG_ANSWERS.keys())
async def test_a_wrong_shaped_answer_fails_the_request_with_a_typed_error(
    answer: Callable[[int], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    fake = await _fake_peer(answer)
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    try:
        peer = RunnerAddress("127.0.0.1", fake.sockets[0].getsockname()[1])
        with pytest.raises(TransportError) as info:
            await client.request(peer, {"q": 1}, timeout=DEADLINE)
        assert info.value.reason is Reason.PEER_UNAVAILABLE
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await client.close()
        fake.close()
        await fake.wait_closed()


async def test_a_malformed_error_frame_still_fails_the_request_with_a_typed_error() -> None:
    fake = await _fake_peer(lambda i: frame({"t": "err", "i": i, "r": ["?"], "m": None,
                                            "x": "not a map"}))
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    try:
        peer = RunnerAddress("127.0.0.1", fake.sockets[0].getsockname()[1])
        with pytest.raises(TransportError) as info:
            await client.request(peer, {"q": 1}, timeout=DEADLINE)
        assert info.value.reason is Reason.REMOTE_FAILURE
        assert client.open_connections == 1  # the connection itself is fine
    finally:
        await client.close()
        fake.close()
        await fake.wait_closed()


# -- many hostile connections: counted, and logged without flooding -----------------


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("covey_transport_rejected_total", {"reason": reason}) or 0.0


REASONS = ("auth_failed", "malformed", "frame_too_large", "handshake_timeout")


async def _bad_connection(address: RunnerAddress, kind: str, k: int = 0) -> None:
    reader, writer = await asyncio.open_connection(address.host, address.port)
    wire = Wire(reader, writer)
    try:
        nonce = await wire.challenge()
        if kind == "auth_failed":
            wire.send(frame({"t": "hello", "v": 1, "mac": mac_for(nonce, "guess"), "a": None}))
        elif kind == "malformed":
            wire.send(b"GET / HTTP/1.1\r\n\r\n" if k % 2 else raw(b"\xc1"))
        elif kind == "frame_too_large":
            wire.send(frame({"t": "hello", "v": 1, "mac": mac_for(nonce), "a": None}))
            assert (await wire.next_frame() or {}).get("t") == "welcome"
            wire.send(b"\xff\xff\xff\xff")
        # handshake_timeout: say nothing
        await wire.until_closed()
    finally:
        await wire.close()


async def test_two_hundred_bad_connections_log_a_handful_of_warnings_and_count_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Recorder()
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET,
                       options=TransportOptions(connect_timeout=0.3))
    address = await srv.start(seen.on_request, seen.on_notify)
    good = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS)
    before = {reason: rejected(reason) for reason in REASONS}
    gate = asyncio.Semaphore(25)

    async def bad(k: int) -> None:
        async with gate:
            await _bad_connection(address, REASONS[k % len(REASONS)], k // len(REASONS))

    try:
        with caplog.at_level(logging.WARNING, logger="covey.transport"):
            await asyncio.gather(*(bad(k) for k in range(200)))
            await wait_until(lambda: srv.open_connections == 0)
        counted = {reason: rejected(reason) - before[reason] for reason in REASONS}
        assert counted == dict.fromkeys(REASONS, 50.0)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert 1 <= len(warnings) <= len(REASONS), [r.getMessage() for r in warnings]
        assert await good.request(address, {"ok": 1}, timeout=DEADLINE) == {"echo": {"ok": 1}}
        assert seen.requests == [{"ok": 1}]
    finally:
        await good.close()
        await srv.close()


async def test_suppressed_refusals_are_summarised_with_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = TestClock()
    seen = Recorder()
    srv = TcpTransport("127.0.0.1", 0, secret=SECRET, options=OPTIONS, clock=clock)
    address = await srv.start(seen.on_request, seen.on_notify)
    try:
        with caplog.at_level(logging.WARNING, logger="covey.transport"):
            for _ in range(10):
                await _bad_connection(address, "auth_failed")
            assert len(caplog.records) == 1
            assert "wrong cluster secret" in caplog.records[0].getMessage()
            await clock.advance(61)
            await _bad_connection(address, "auth_failed")
            messages = [r.getMessage() for r in caplog.records]
            assert len(messages) == 3, messages
            assert "9 more" in messages[1] and "auth_failed" in messages[1]
            for _ in range(3):
                await _bad_connection(address, "auth_failed")
            assert len(caplog.records) == 3
            await srv.close()  # what is still held back is summarised on close
            messages = [r.getMessage() for r in caplog.records]
            assert len(messages) == 4 and "3 more" in messages[3], messages
    finally:
        await srv.close()


async def test_a_summary_comes_on_its_own_after_the_window() -> None:
    """With no further refusal, the held-back count is still logged after the window."""
    from covey.sharding.transport._rejections import RejectionLog

    logged: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = Catch(logging.WARNING)
    logging.getLogger("covey.transport").addHandler(handler)
    log = RejectionLog(window=0.05)
    try:
        for _ in range(5):
            log.record("10.0.0.9", "malformed", "10.0.0.9:4000: garbage")
        assert len(logged) == 1
        await wait_until(lambda: len(logged) == 2)
        assert "4 more" in logged[1] and "10.0.0.9" in logged[1]
    finally:
        log.close()
        logging.getLogger("covey.transport").removeHandler(handler)
