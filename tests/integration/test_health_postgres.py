"""Readiness on PostgreSQL: the database becomes unreachable and comes back.

A TCP proxy sits between covey and the PostgreSQL server (the machine's server
is never stopped): cutting it resets every connection and refuses new ones, as
a stopped server does; blocking it holds every byte, as a firewall dropping the
port does. ``/readyz`` must turn within 5 s of either and back within 5 s of
the restore (the issue's bounds), while ``/livez`` never fails.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

import covey
from covey.core import CoveyConfig, ShardingOptions, StorageOptions
from tests.conftest import drop_schema

pytestmark = pytest.mark.postgres

FLIP_BOUND = 5.0  # seconds, from the acceptance criteria


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the database; :meth:`cut` or :meth:`block`
    makes it unreachable, :meth:`restore` reachable again."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._up = True
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.transport.abort()  # as a server that is not there: reset at once
            return
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.ensure_future(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()  # blocked: held, not lost (TCP keeps it)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            self._writers.discard(sink)

    def cut(self) -> None:
        """Reset every connection and refuse new ones (the database is gone)."""
        self._up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def block(self) -> None:
        """Hold every byte and every new connection (a port that drops packets)."""
        self._flowing.clear()

    def restore(self) -> None:
        self._up = True
        self._flowing.set()

    async def close(self) -> None:
        self.cut()
        for pump in list(self._pumps):
            pump.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


@pytest.fixture
async def proxied(pg_database: str) -> AsyncIterator[tuple[TcpProxy, str, str]]:
    parts = urlsplit(pg_database)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    schema = f"health_{uuid.uuid4().hex[:12]}"
    try:
        yield proxy, _via(pg_database, proxy.port), schema
    finally:
        await proxy.close()
        await drop_schema(pg_database, schema)


async def _seconds_until(condition: object, bound: float, live: covey.Cluster) -> float:
    """Seconds until ``condition()`` holds (failing past ``bound``); liveness is
    checked all along and must never fail."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not condition():  # type: ignore[operator]
        probe = live.health.live()
        assert probe.ok, probe.body
        assert loop.time() - began <= bound, f"not within {bound} s"
        await asyncio.sleep(0.05)
    return loop.time() - began


@pytest.mark.parametrize("outage", ["cut", "block"])
async def test_readiness_follows_the_database_while_liveness_stays_up(
        proxied: tuple[TcpProxy, str, str], outage: str) -> None:
    proxy, url, schema = proxied
    config = CoveyConfig(
        database_url=url, shards=8,
        storage=StorageOptions(schema=schema, connect_timeout=2.0, lock_timeout=2.0),
        sharding=ShardingOptions(call_timeout=5.0),
    )  # health: the defaults (checks every 2 s, 1 s timeout, unready after 2 misses)
    cluster = covey.Cluster(config)
    async with cluster:
        health = cluster.health
        await _seconds_until(lambda: health.report().body["status"] == "pass", 10.0, cluster)
        report = health.report()
        assert health.ready().ok
        assert report.body["checks"]["postgres:responseTime"][0]["status"] == "pass"
        assert report.body["checks"]["postgres:lockConnection"][0]["status"] == "pass"

        proxy.cut() if outage == "cut" else proxy.block()
        await _seconds_until(lambda: not health.ready().ok, FLIP_BOUND, cluster)
        # the outage goes on: readiness stays down, liveness stays up
        for _ in range(2):
            await health.check_now()
            assert not health.ready().ok
            assert health.live().ok
        report = health.report()
        assert not report.ok
        ping = report.body["checks"]["postgres:responseTime"][0]
        assert ping["status"] == "fail"
        assert ping["output"]  # the error text

        proxy.restore()
        await _seconds_until(lambda: health.ready().ok, FLIP_BOUND, cluster)
        report = health.report()
        assert report.body["checks"]["postgres:responseTime"][0]["status"] == "pass"
        assert report.body["checks"]["postgres:responseTime"][0]["lastError"]
