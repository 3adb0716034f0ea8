"""The SSE endpoint over a real cluster's subscriptions (``cluster.sse()``): the
direct write loop covey's own subscriptions get — items and bursts in order,
heartbeats when idle, ``retry:`` when the pod drains, a disconnect that frees the
subscriber, and a frozen client released."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import covey
from covey.core import RealtimeOptions
from covey.testing import TestCluster
from tests.unit._waiting import until
from tests.unit.realtime._fake_streams import Served, frames, rest, serving, take
from tests.unit.realtime.test_sse_frozen import frozen_client


@pytest.fixture
async def pod() -> AsyncIterator[tuple[TestCluster, covey.Cluster, Served]]:
    tc = TestCluster(runners=2)
    tc.config = replace(tc.config, realtime=RealtimeOptions(heartbeat=0.3, send_timeout=1.0))
    async with tc:
        member = tc.runners[1]
        app = Starlette(routes=[Mount("/streams", app=member.sse())])
        async with serving(app) as served:
            yield tc, member, served


async def test_items_and_bursts_arrive_in_order_with_heartbeats_when_idle(
        pod: tuple[TestCluster, covey.Cluster, Served]) -> None:
    tc, _, served = pod
    publisher = tc.runners[0]
    async with aiohttp.ClientSession() as http, \
            http.get(f"{served.url}/streams/orders?after=0:0") as response:
        assert response.status == 200
        stream = frames(response)
        await publisher.streams.publish("orders", {"n": 0}, event="order")
        first = await take(stream, 1)
        assert first[0].startswith("id: ") and "event: order" in first[0]
        await asyncio.gather(*(publisher.streams.publish("orders", {"n": n})
                               for n in range(1, 200)))
        got: list[str] = []
        while len(got) < 199:  # a heartbeat may come in between on a slow machine
            got += [f for f in await take(stream, 1) if not f.startswith(":")]
        positions = [int(f.split("\n")[0].split(":")[2]) for f in got]
        assert positions == sorted(positions) == list(range(2, 201))
        idle = await take(stream, 2, timeout=5)
        assert idle == [": ping", ": ping"]


async def test_draining_sends_retry_and_closes(
        pod: tuple[TestCluster, covey.Cluster, Served]) -> None:
    _, member, served = pod
    async with aiohttp.ClientSession() as http, \
            http.get(f"{served.url}/streams/orders") as response:
        await until(lambda: member.streams.hub.connections == 1)
        await member.drain()
        assert (await rest(frames(response)))[-1].startswith("retry: ")


async def test_a_client_that_leaves_frees_its_subscriber(
        pod: tuple[TestCluster, covey.Cluster, Served]) -> None:
    _, member, served = pod
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/streams/orders") as response:
            assert response.status == 200
            await until(lambda: member.streams.hub.connections == 1)
        await until(lambda: member.streams.hub.connections == 0)


async def test_a_frozen_client_is_released(
        pod: tuple[TestCluster, covey.Cluster, Served]) -> None:
    tc, member, served = pod
    sock = await frozen_client(served.url, "/streams/firehose")
    try:
        await until(lambda: member.streams.hub.connections == 1)
        big = "x" * 200_000
        for _ in range(60):  # far more than the socket buffers hold
            await tc.runners[0].streams.publish("firehose", big)
            if member.streams.hub.connections == 0:
                break
        await until(lambda: member.streams.hub.connections == 0, timeout=10)
    finally:
        sock.close()
