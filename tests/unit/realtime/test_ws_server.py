"""The WebSocket server on a real uvicorn: calls, streamed replies, cancels, pushes, both
codecs, and typed refusals of bad frames that leave the socket open."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import REGISTRY

from covey.realtime._ws_connection import Connection
from covey.realtime._ws_server import websocket_app

from .. import _waiting
from . import _ws_serving
from ._ws_serving import ChatImpl, Notice, Room, Served, raw, serving

pytestmark = pytest.mark.timeout(60)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": "websocket"}) or 0.0


@pytest.fixture
def room() -> Room:
    _ws_serving.ROOM = Room()
    return _ws_serving.ROOM


@pytest.fixture
async def served(room: Room) -> AsyncIterator[Served]:
    async with serving(websocket_app(ChatImpl)) as served:
        yield served


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_a_call_carries_the_same_values_in_both_codecs(served: Served, codec: str) -> None:
    protocol = f"covey.v1.{codec}"
    params = {"text": "hi", "at": "2026-01-02T03:04:05.123456Z", "amount": "12.50",
              "ref": "6f1c4b7e-55a4-4d0f-9a43-4d9e6c5e2a10"}
    async with raw(served.url(), protocols=(protocol,)) as client:
        assert client.ws.protocol == protocol
        await client.send({"t": "req", "id": 1, "m": "send", "p": params})
        reply = await client.recv_until("res")
    assert reply["id"] == 1
    assert reply["p"]["id"] == 1
    echo = reply["p"]["echo"]
    # pydantic's JSON mode in both codecs: the same strings for datetime, Decimal, UUID
    assert dt.datetime.fromisoformat(echo["at"]) == dt.datetime(2026, 1, 2, 3, 4, 5, 123456,
                                                                 tzinfo=dt.UTC)
    assert decimal.Decimal(echo["amount"]) == decimal.Decimal("12.50")
    assert uuid.UUID(echo["ref"]) == uuid.UUID(params["ref"])
    assert echo["text"] == "hi"


async def test_the_codec_can_be_chosen_by_query(served: Served) -> None:
    async with raw(served.url() + "?codec=msgpack", protocols=()) as client:
        assert client.ws.protocol is None  # nothing offered, nothing echoed
        await client.send({"t": "ping"})
        assert await client.recv() == {"t": "pong"}
    async with raw(served.url() + "?codec=xml", protocols=()) as client:
        assert (await client.closed())[0] == 1008


async def test_a_streamed_reply_comes_as_chunks_then_end(served: Served) -> None:
    async with raw(served.url()) as client:
        await client.send({"t": "req", "id": 7, "m": "history", "p": {"after": 10, "count": 3}})
        frames = [await client.recv() for _ in range(4)]
    assert frames == [{"t": "chunk", "id": 7, "p": {"seq": 11, "text": "m11"}},
                      {"t": "chunk", "id": 7, "p": {"seq": 12, "text": "m12"}},
                      {"t": "chunk", "id": 7, "p": {"seq": 13, "text": "m13"}},
                      {"t": "end", "id": 7}]


async def test_a_cancel_stops_a_stream_and_the_socket_serves_on(served: Served,
                                                                room: Room) -> None:
    async with raw(served.url()) as client:
        await client.send({"t": "req", "id": 1, "m": "history",
                           "p": {"after": 9_998, "count": 5}})
        assert (await client.recv())["p"]["seq"] == 9_999
        assert (await client.recv())["p"]["seq"] == 10_000
        await asyncio.wait_for(room.started.wait(), 10)  # the generator waits at the gate
        await client.send({"t": "cancel", "id": 1})
        assert await client.recv() == {"t": "end", "id": 1}
        await client.send({"t": "cancel", "id": 1})  # unknown by now: no answer
        await client.send({"t": "req", "id": 2, "m": "whoami"})
        assert await client.recv() == {"t": "res", "id": 2, "p": {"text": "None"}}
    assert room.cancelled == ["history"]


async def test_a_cancelled_call_never_answers(served: Served, room: Room) -> None:
    async with raw(served.url()) as client:
        await client.send({"t": "req", "id": 1, "m": "send", "p": {"text": "hold it"}})
        await asyncio.wait_for(room.started.wait(), 10)
        await client.send({"t": "cancel", "id": 1})
        assert await client.recv() == {"t": "end", "id": 1}
        room.gate.set()
        await client.send({"t": "ping"})
        assert await client.recv() == {"t": "pong"}  # and no "res" for call 1 before it
    assert room.cancelled == ["hold it"]


async def test_a_handler_pushes_a_typed_message(served: Served) -> None:
    async with raw(served.url(), protocols=("covey.v1.msgpack",)) as client:
        await client.send({"t": "req", "id": 3, "m": "send", "p": {"text": "notify"}})
        assert await client.recv() == {"t": "push", "n": "notice", "p": {"text": "you posted"}}
        assert (await client.recv())["t"] == "res"


async def test_deliver_from_another_task_reaches_the_socket(room: Room) -> None:
    connected: list[Connection] = []

    async def on_connect(connection: Connection) -> None:
        connected.append(connection)

    open_before, sent_before = sample("covey_realtime_connections"), sample(
        "covey_realtime_items_sent_total")
    async with serving(websocket_app(ChatImpl, on_connect=on_connect)) as served, \
            raw(served.url()) as client:
        await client.send({"t": "ping"})
        await client.recv_until("pong")
        assert sample("covey_realtime_connections") == open_before + 1
        (connection,) = connected
        assert connection.deliver("notice", b'{"text": "from json"}', mid="m-1")
        assert connection.deliver("notice", Notice(text="from a model"))
        assert not connection.deliver("nope", Notice(text="x"))  # not in the contract
        assert not connection.deliver("notice", b'{"txt": 1}')  # does not validate
        assert await client.recv() == {"t": "push", "n": "notice", "p": {"text": "from json"},
                                       "mid": "m-1"}
        assert await client.recv() == {"t": "push", "n": "notice",
                                       "p": {"text": "from a model"}}
        assert sample("covey_realtime_items_sent_total") == sent_before + 2
    await _waiting.until(lambda: sample("covey_realtime_connections") == open_before)


async def test_bad_frames_get_typed_errors_and_the_socket_stays_open(served: Served) -> None:
    async with raw(served.url()) as client:
        await client.ws.send_str("{not json")
        assert await client.recv() == {"t": "err", "id": None, "r": "frame_invalid",
                                       "msg": "the frame is not valid JSON"}
        for frame, call_id in [([1, 2], None), ({"t": "bogus", "id": 4}, 4),
                               ({"t": "req", "id": -1, "m": "send"}, None),
                               ({"t": "req", "id": 2**60, "m": "send"}, None),
                               ({"t": "req", "id": 1.5, "m": "send"}, None),
                               ({"t": "req", "id": 5, "m": 42}, 5),
                               ({"t": "res", "id": 6, "p": 1}, 6)]:
            await client.send(frame)
            error = await client.recv()
            assert (error["t"], error["id"], error["r"]) == ("err", call_id, "frame_invalid"), \
                frame
        await client.send({"t": "req", "id": 8, "m": "nope"})
        assert await client.recv() == {"t": "err", "id": 8, "r": "unknown_rpc",
                                       "msg": "unknown method 'nope'"}
        await client.send({"t": "req", "id": 9, "m": "send", "p": {"text": 5, "at": "later"}})
        error = await client.recv()
        assert (error["id"], error["r"]) == (9, "payload_invalid")
        assert error["d"]["fields"] == ["text", "at"]
        assert "text: Input should be a valid string" in error["msg"]
        await client.send({"t": "req", "id": 10, "m": "whoami", "p": {"unexpected": 1}})
        assert (await client.recv())["r"] == "payload_invalid"
        await client.send({"t": "auth", "token": "late"})
        assert (await client.recv())["r"] == "frame_invalid"
        # and the socket still serves
        await client.send({"t": "req", "id": 11, "m": "send", "p": {"text": "ok"}})
        assert (await client.recv())["p"]["id"] == 1


async def test_a_msgpack_socket_refuses_text_and_junk(served: Served) -> None:
    async with raw(served.url(), protocols=("covey.v1.msgpack",)) as client:
        await client.ws.send_str('{"t":"ping"}')
        assert (await client.recv())["r"] == "frame_invalid"
        await client.ws.send_bytes(b"\xc1\xc1\xc1")  # 0xc1 is never used in msgpack
        assert (await client.recv())["r"] == "frame_invalid"
        await client.ws.send_bytes(b"\x81\xa1t\xd4\x05\x00")  # an ext type as the frame type
        assert (await client.recv())["r"] == "frame_invalid"
        await client.send({"t": "ping"})
        assert await client.recv() == {"t": "pong"}


async def test_handler_errors_are_typed_and_do_not_leak(served: Served,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async with raw(served.url()) as client:
        await client.send({"t": "req", "id": 1, "m": "fail", "p": {"text": "typed"}})
        assert await client.recv() == {"t": "err", "id": 1, "r": "forbidden",
                                       "msg": "no such room", "d": {"room": "r1"}}
        await client.send({"t": "req", "id": 2, "m": "fail", "p": {"text": "crash"}})
        assert await client.recv() == {"t": "err", "id": 2, "r": "handler_failed",
                                       "msg": "fail raised ValueError"}
        await client.send({"t": "req", "id": 3, "m": "fail", "p": {"text": "fine now?"}})
        assert (await client.recv())["r"] == "handler_failed"  # the socket is still open
    assert any("fail raised" in r.getMessage() or "WebSocket method fail raised"
               in r.getMessage() for r in caplog.records)


async def test_a_plain_http_request_is_told_to_upgrade(served: Served) -> None:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{served.port}/rpc") as response:
        assert response.status == 426
        assert response.headers["upgrade"] == "websocket"
