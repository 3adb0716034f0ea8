"""LocalTransport: the in-process transport behaves like the TCP one where it matters."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from covey.core import Reason, RunnerAddress, SerializationError, TransportError, TransportOptions
from covey.core.runtime import TaskSet
from covey.sharding import LocalNetwork, LocalTransport
from covey.sharding.transport._frames import (
    FrameDecoder,
    FrameEncoder,
    FrameError,
    IncomingFrameTooLarge,
)

A = RunnerAddress("local", 1)
B = RunnerAddress("local", 2)
C = RunnerAddress("local", 3)


class Recorder:
    """Handlers that echo, optionally wait on a gate, and record notifications."""

    def __init__(self) -> None:
        self.callers: list[RunnerAddress | None] = []
        self.notes: list[dict[str, Any]] = []
        self.noted = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.gates: dict[int, asyncio.Event] = {}
        self.started = 0

    async def on_request(self, caller: RunnerAddress | None,
                         body: dict[str, Any]) -> dict[str, Any]:
        self.callers.append(caller)
        self.started += 1
        if body.get("boom"):
            raise ValueError(f"boom {body['boom']}")
        if self.gate is not None:
            await self.gate.wait()
        if "wait" in body:
            await self.gates.setdefault(body["wait"], asyncio.Event()).wait()
        if "sleep" in body:
            await asyncio.sleep(body["sleep"])
        answer: dict[str, Any] = {"echo": body, "n": len(self.callers)}
        if "pad" in body:
            answer["pad"] = "z" * body["pad"]
        return answer

    async def on_notify(self, caller: RunnerAddress | None, body: dict[str, Any]) -> None:
        self.notes.append(body)
        self.noted.set()


async def wait_for(predicate: Any, within: float = 5.0) -> None:
    """Wait until ``predicate()`` is true, failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.001)


@pytest.fixture
async def pair() -> Any:
    net = LocalNetwork()
    a, b = LocalTransport(net, A), LocalTransport(net, B)
    ra, rb = Recorder(), Recorder()
    await a.start(ra.on_request, ra.on_notify)
    await b.start(rb.on_request, rb.on_notify)
    yield net, a, b, ra, rb
    await a.close()
    await b.close()


async def test_request_response_round_trips_body_and_caller(pair: Any) -> None:
    _net, a, b, _ra, rb = pair
    body = {"s": "x", "i": 1, "f": 1.5, "b": b"\x00", "l": [1, None, True], "d": {"k": "v"}}
    answer = await a.request(B, body, timeout=1.0)
    assert answer == {"echo": body, "n": 1}
    assert rb.callers == [A]
    assert b.address == B


async def test_body_is_a_copy_like_on_the_wire(pair: Any) -> None:
    _net, a, _b, _ra, _rb = pair
    body = {"t": (1, 2)}  # tuples come back as lists, as msgpack makes them
    answer = await a.request(B, body, timeout=1.0)
    assert answer["echo"] == {"t": [1, 2]}


async def test_client_only_caller_is_none() -> None:
    net = LocalNetwork()
    server, client = LocalTransport(net, B), LocalTransport(net, A)
    rec = Recorder()
    await server.start(rec.on_request, rec.on_notify)
    assert client.address is None
    await client.request(B, {"x": 1}, timeout=1.0)
    assert rec.callers == [None]
    await server.close()
    await client.close()


async def test_concurrent_requests_complete_out_of_order(pair: Any) -> None:
    _net, a, _b, _ra, rb = pair
    done: list[int] = []

    async def call(k: int) -> dict[str, Any]:
        answer: dict[str, Any] = await a.request(B, {"wait": k}, timeout=5.0)
        done.append(k)
        return answer

    calls = [asyncio.create_task(call(k)) for k in range(200)]
    await wait_for(lambda: rb.started == 200)  # all 200 handlers run at once
    for k in reversed(range(200)):  # release the last first
        rb.gates[k].set()
        await wait_for(lambda k=k: k in done)
    answers = await asyncio.gather(*calls)
    assert [r["echo"]["wait"] for r in answers] == list(range(200))
    assert done == list(reversed(range(200)))


async def test_handler_exception_is_remote_failure_and_server_keeps_serving(
    pair: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _net, a, _b, _ra, _rb = pair
    with caplog.at_level(logging.WARNING, logger="covey.transport"):
        with pytest.raises(TransportError) as info:
            await a.request(B, {"boom": "here"}, timeout=1.0)
    assert info.value.reason is Reason.REMOTE_FAILURE
    assert not info.value.retryable
    assert info.value.details["error_type"] == "ValueError"
    assert info.value.details["message"] == "boom here"
    assert (await a.request(B, {"ok": 1}, timeout=1.0))["echo"] == {"ok": 1}


async def test_timeout(pair: Any) -> None:
    _net, a, _b, _ra, rb = pair
    rb.gate = asyncio.Event()
    with pytest.raises(TransportError) as info:
        await a.request(B, {"x": 1}, timeout=0.05)
    assert info.value.reason is Reason.TIMEOUT
    assert info.value.retryable
    rb.gate.set()


async def test_kill_fails_pending_and_new_requests_and_fires_peer_lost(pair: Any) -> None:
    net, a, _b, _ra, rb = pair
    lost: list[RunnerAddress] = []
    a.on_peer_lost(lost.append)
    await a.request(B, {"x": 0}, timeout=1.0)  # establishes the "connection"
    rb.gate = asyncio.Event()
    pending = asyncio.create_task(a.request(B, {"x": 1}, timeout=30.0))
    await wait_for(lambda: rb.started == 2)
    net.kill(B)
    with pytest.raises(TransportError) as info:
        await pending
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    assert info.value.retryable
    assert lost == [B]
    with pytest.raises(TransportError) as info:
        await a.request(B, {"x": 2}, timeout=1.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    with pytest.raises(TransportError):
        await a.notify(B, {"x": 3})
    rb.gate.set()

    net.revive(B)
    assert (await a.request(B, {"x": 4}, timeout=1.0))["echo"] == {"x": 4}
    net.kill(B)
    assert lost == [B, B]


async def test_killed_runner_cannot_call_out(pair: Any) -> None:
    net, a, _b, _ra, _rb = pair
    net.kill(A)
    with pytest.raises(TransportError) as info:
        await a.request(B, {"x": 1}, timeout=1.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE


async def test_peer_lost_fires_only_for_peers_that_talked(pair: Any) -> None:
    net, a, b, _ra, _rb = pair
    c = LocalTransport(net, C)
    rc = Recorder()
    await c.start(rc.on_request, rc.on_notify)
    lost_a: list[RunnerAddress] = []
    lost_c: list[RunnerAddress] = []
    a.on_peer_lost(lost_a.append)
    c.on_peer_lost(lost_c.append)
    await a.request(B, {}, timeout=1.0)
    await b.close()  # a closing peer looks like a lost connection
    assert lost_a == [B]
    assert lost_c == []
    await c.close()


async def test_unknown_peer_is_unavailable(pair: Any) -> None:
    _net, a, _b, _ra, _rb = pair
    with pytest.raises(TransportError) as info:
        await a.request(C, {}, timeout=1.0)
    assert info.value.reason is Reason.PEER_UNAVAILABLE


async def test_unencodable_body_is_a_serialization_error(pair: Any) -> None:
    _net, a, _b, _ra, rb = pair
    with pytest.raises(SerializationError) as info:
        await a.request(B, {"x": object()}, timeout=1.0)
    assert info.value.reason is Reason.PAYLOAD_INVALID
    with pytest.raises(SerializationError):
        await a.notify(B, {"x": {1, 2}})
    assert rb.callers == []
    # The shared packer is not left in a bad state by the failure.
    assert (await a.request(B, {"x": 1}, timeout=1.0))["echo"] == {"x": 1}


async def test_unencodable_reply_is_remote_failure() -> None:
    net = LocalNetwork()
    server, client = LocalTransport(net, B), LocalTransport(net, A)

    async def bad(_caller: RunnerAddress | None, _body: dict[str, Any]) -> dict[str, Any]:
        return {"x": object()}

    await server.start(bad, Recorder().on_notify)
    with pytest.raises(TransportError) as info:
        await client.request(B, {}, timeout=1.0)
    assert info.value.reason is Reason.REMOTE_FAILURE
    assert info.value.details["error_type"] == "SerializationError"
    await server.close()
    await client.close()


async def test_frame_limit_outgoing_and_incoming() -> None:
    net = LocalNetwork()
    small = LocalTransport(net, A, options=TransportOptions(max_frame_bytes=1000))
    big = LocalTransport(net, B)
    rs, rb = Recorder(), Recorder()
    await small.start(rs.on_request, rs.on_notify)
    await big.start(rb.on_request, rb.on_notify)
    # Outgoing: refused locally, nothing delivered.
    with pytest.raises(TransportError) as info:
        await small.request(B, {"x": "y" * 2000}, timeout=1.0)
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    assert rb.callers == []
    # Incoming: the receiver's limit applies too.
    with pytest.raises(TransportError) as info:
        await big.request(A, {"x": "y" * 2000}, timeout=1.0)
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    assert rs.callers == []
    # A reply bigger than the caller accepts fails as frame_too_large.
    with pytest.raises(TransportError) as info:
        await small.request(B, {"pad": 2000}, timeout=1.0)
    assert info.value.reason is Reason.FRAME_TOO_LARGE
    assert (await small.request(B, {"x": 1}, timeout=1.0))["echo"] == {"x": 1}
    await small.close()
    await big.close()


async def test_notify_delivers_without_answer(pair: Any) -> None:
    _net, a, _b, _ra, rb = pair
    await a.notify(B, {"hello": "world"})
    await asyncio.wait_for(rb.noted.wait(), 1.0)
    assert rb.notes == [{"hello": "world"}]


async def test_close_fails_pending_and_cancels_handlers(pair: Any) -> None:
    _net, a, b, _ra, rb = pair
    rb.gate = asyncio.Event()
    pending = asyncio.create_task(a.request(B, {}, timeout=30.0))
    await wait_for(lambda: rb.started == 1)
    await b.close()
    with pytest.raises(TransportError) as info:
        await pending
    assert info.value.reason is Reason.PEER_UNAVAILABLE


async def test_duplicate_address_is_refused() -> None:
    net = LocalNetwork()
    first, second = LocalTransport(net, A), LocalTransport(net, A)
    rec = Recorder()
    await first.start(rec.on_request, rec.on_notify)
    with pytest.raises(Exception, match="already in use"):
        await second.start(rec.on_request, rec.on_notify)
    await first.close()
    await second.close()


def test_frame_decoder_reassembles_split_and_batched_frames() -> None:
    encoder = FrameEncoder(1 << 20)
    frames = [{"t": "req", "i": i, "b": {"x": "y" * i}} for i in range(50)]
    stream = b"".join(encoder.encode(f) for f in frames)
    for chunk in (1, 7, 64, len(stream)):
        decoder = FrameDecoder(1 << 20)
        out: list[dict[str, Any]] = []
        for start in range(0, len(stream), chunk):
            out.extend(decoder.feed(stream[start:start + chunk]))
        assert out == frames
        assert decoder.buffered == 0


def test_frame_decoder_refuses_oversized_header_and_garbage() -> None:
    with pytest.raises(IncomingFrameTooLarge) as info:
        FrameDecoder(1000).feed(b"\x40\x00\x00\x00")
    assert info.value.size == 1 << 30
    with pytest.raises(FrameError):
        FrameDecoder(1000).feed(b"\x00\x00\x00\x02\xc1\xc1")  # 0xc1 is never valid
    with pytest.raises(FrameError):
        FrameDecoder(1000).feed(b"\x00\x00\x00\x01\x05")  # an int, not a map


# ---- owned tasks ----------------------------------------------------------------

async def test_handlers_run_in_the_given_task_set_and_close_leaves_none(pair: Any) -> None:
    _, a, b, _, rb = pair
    crashes: list[BaseException] = []
    tasks = TaskSet("covey-transport", on_crash=crashes.append)
    b.use_tasks(tasks)
    call = asyncio.ensure_future(a.request(B, {"wait": 1}, timeout=5.0))
    await wait_for(lambda: len(tasks) == 1 and rb.started == 1)  # the handler, blocked
    handler = next(iter(tasks.tasks))
    await b.close()
    assert len(tasks) == 0 and handler.cancelled()
    with pytest.raises(TransportError) as info:
        await call
    assert info.value.reason is Reason.PEER_UNAVAILABLE
    assert crashes == []


async def test_a_transport_still_answers_after_its_owner_closed_the_set(pair: Any) -> None:
    _, a, b, _, _ = pair
    tasks = TaskSet("covey-transport")
    b.use_tasks(tasks)
    await tasks.close()  # the runner stops its tasks before it closes the transport
    assert await a.request(B, {"x": 1}, timeout=5.0) == {"echo": {"x": 1}, "n": 1}
