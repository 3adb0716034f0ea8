"""Streams across the runners of a TestCluster: pushes over the mesh, the safety
re-read, resume, reset, overflow, tenants, drain and bad input."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from covey import RealtimeError, Reason, RequestContext, use_context
from covey.core import RealtimeOptions
from covey.realtime import Cursor, Reset, StreamMessage
from covey.realtime.runtime import Streams
from covey.testing import TestCluster


class Order(BaseModel):
    order_id: str
    status: str


def cluster(**options: Any) -> TestCluster:
    tc = TestCluster(runners=2)
    tc.config = replace(tc.config, realtime=RealtimeOptions(**options))
    return tc


async def take(sub: Any, n: int, timeout: float = 5.0) -> list[StreamMessage | Reset]:
    out: list[StreamMessage | Reset] = []

    async def read() -> None:
        async for item in sub:
            out.append(item)
            if len(out) == n:
                return

    await asyncio.wait_for(read(), timeout)
    return out


async def test_an_item_published_on_one_pod_reaches_a_subscriber_on_another() -> None:
    # a long safety poll: what arrives in time was pushed over the mesh
    async with cluster(poll_interval=60.0) as tc:
        a, b = tc.runners
        sub = await b.streams.subscribe("orders")
        cursors = [await a.streams.publish("orders", Order(order_id=str(i), status="paid"),
                                           event="order")
                   for i in range(50)]
        got = await take(sub, 50)
        assert [m.cursor for m in got if isinstance(m, StreamMessage)] == cursors
        first = got[0]
        assert isinstance(first, StreamMessage)
        assert first.event == "order"
        assert Order.model_validate_json(first.data) == Order(order_id="0", status="paid")
        assert [c.position for c in cursors] == list(range(1, 51))
        await sub.aclose()


async def test_a_lost_push_is_delivered_by_the_safety_re_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def lost(self: Streams, runner: str, body: Any) -> None:
        return None

    monkeypatch.setattr(Streams, "_notify", lost)
    async with cluster(poll_interval=0.1) as tc:
        a, b = tc.runners
        sub = await b.streams.subscribe("orders")
        for i in range(5):
            await a.streams.publish("orders", {"n": i})
        got = await take(sub, 5)
        assert [m.data for m in got] == [b'{"n":%d}' % i for i in range(5)]


async def test_a_gap_in_the_pushes_is_filled_from_the_store() -> None:
    async with cluster(poll_interval=60.0) as tc:
        a, b = tc.runners
        sub = await b.streams.subscribe("orders")
        store = tc.storage.streams
        key = sub.key
        # stored behind the hub's back (as if its push was lost), then one pushed
        from covey.storage import StreamEntry
        await store.append([StreamEntry(key, 1, b"1"), StreamEntry(key, 2, b"2")], now=0.0)
        await a.streams.publish("orders", 3)
        got = await take(sub, 3)
        assert [m.data for m in got] == [b"1", b"2", b"3"]


async def test_resuming_from_a_cursor_gives_what_followed_it_once() -> None:
    async with cluster() as tc:
        a, b = tc.runners
        cursors = [await a.streams.publish("feed", i) for i in range(10)]
        sub = await b.streams.subscribe("feed", after=str(cursors[3]))
        got = await take(sub, 6)
        assert [m.data for m in got] == [str(i).encode() for i in range(4, 10)]
        everything = await b.streams.subscribe("feed", after="0:0")
        assert len(await take(everything, 10)) == 10


async def test_a_cursor_out_of_retention_gets_a_reset_then_the_new_items() -> None:
    async with cluster(stream_keep=3) as tc:
        a, b = tc.runners
        first = await a.streams.publish("feed", 0)
        for i in range(1, 10):
            await a.streams.publish("feed", i)
        await tc.storage.streams.trim(keep=3, before=0.0)
        sub = await b.streams.subscribe("feed", after=first)
        reset = (await take(sub, 1))[0]
        assert isinstance(reset, Reset)
        assert reset.cursor.position == 10
        await a.streams.publish("feed", 10)
        assert [m.data for m in await take(sub, 1)] == [b"10"]
        # another epoch's cursor: a reset too
        stranger = await b.streams.subscribe("feed", after=Cursor(first.epoch + 1, 2))
        assert isinstance((await take(stranger, 1))[0], Reset)


async def test_a_subscriber_that_falls_behind_its_buffer_is_closed_with_its_cursor() -> None:
    async with cluster() as tc:
        a, b = tc.runners
        sub = await b.streams.subscribe("feed", max_items=5)
        got = []
        await a.streams.publish("feed", 0)
        got += await take(sub, 1)
        for i in range(1, 20):
            await a.streams.publish("feed", i)
        await asyncio.sleep(0.05)
        with pytest.raises(RealtimeError) as caught:
            await take(sub, 20)
        assert caught.value.reason is Reason.SLOW_CONSUMER
        assert sub.cursor == got[0].cursor
        resumed = await b.streams.subscribe("feed", after=sub.cursor)
        assert [m.data for m in await take(resumed, 19)] == [str(i).encode()
                                                              for i in range(1, 20)]


async def test_tenants_never_see_each_others_streams() -> None:
    async with cluster() as tc:
        a, b = tc.runners
        with use_context(RequestContext(tenant_id="acme")):
            acme = await b.streams.subscribe("orders")
        other = await b.streams.subscribe("orders", tenant="globex")
        await a.streams.publish("orders", "for acme", tenant="acme")
        await a.streams.publish("orders", "for globex", tenant="globex")
        assert [m.data for m in await take(acme, 1)] == [b'"for acme"']
        assert [m.data for m in await take(other, 1)] == [b'"for globex"']
        await asyncio.sleep(0.1)
        assert acme.cursor.position == 1 and other.cursor.position == 1


async def test_draining_ends_every_subscriber() -> None:
    async with cluster() as tc:
        _, b = tc.runners
        sub = await b.streams.subscribe("feed")
        reader = asyncio.ensure_future(take(sub, 1))
        await asyncio.sleep(0.01)
        b.streams.hub.stop_all()
        assert await asyncio.wait_for(reader, 2.0) == []  # the iteration ended
        assert sub.closed
        late = await b.streams.subscribe("feed")  # a pod that drains takes no new ones
        assert await take(late, 1) == []


@pytest.mark.parametrize(("call", "field"), [
    (lambda s: s.publish("bad name", 1), "stream"),
    (lambda s: s.publish("", 1), "stream"),
    (lambda s: s.publish("x", 1, event="bad\nevent"), "event"),
    (lambda s: s.publish("x", object()), "item"),
    (lambda s: s.publish("x", "y" * 300_000), "item"),
    (lambda s: s.publish("x", 1, id=-5), "id"),
    (lambda s: s.subscribe("x/y"), "stream"),
])
async def test_bad_input_is_refused_and_nothing_is_stored(call: Any, field: str) -> None:
    async with cluster() as tc:
        a = tc.runners[0]
        with pytest.raises(RealtimeError) as caught:
            await call(a.streams)
        assert caught.value.reason is Reason.INVALID_ARGUMENT
        assert caught.value.details["field"] == field
        assert await tc.storage.streams.stream_stats() == (0, 0)


async def test_a_malformed_cursor_is_refused() -> None:
    async with cluster() as tc:
        for bad in ("x", "1", "1:2:3", "-1:2", "1:" + "9" * 30):
            with pytest.raises(RealtimeError) as caught:
                await tc.runners[0].streams.subscribe("x", after=bad)
            assert caught.value.reason is Reason.CURSOR_INVALID
