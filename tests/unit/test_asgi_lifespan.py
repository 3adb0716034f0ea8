"""The app's lifespan runs the cluster; SIGTERM drains before the server shuts down.

The lifespan runs here in the test's own (main-thread) event loop, with a fake
server whose SIGTERM handler stands in for uvicorn's (``Server.handle_exit``,
installed before the lifespan starts). The signal is real: ``os.kill`` on this
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

import covey
import covey.asgi
from covey.core import ClusterError, CoveyConfig, Reason, RunnerAddress, ShardingOptions
from covey.sharding import LocalNetwork, LocalTransport

from ._entities import Account

FAST = ShardingOptions(heartbeat_interval=0.2, runner_ttl=5.0, membership_interval=0.05,
                       lock_refresh_interval=0.5, poll_interval=0.5, shutdown_grace=1.0,
                       call_timeout=5.0)


class FakeServer:
    """What the drain sequence finds of uvicorn: ``handle_exit`` and ``should_exit``."""

    def __init__(self) -> None:
        self.should_exit = False
        self.handled: list[int] = []

    def handle_exit(self, sig: int, frame: object) -> None:
        self.handled.append(sig)  # uvicorn re-raises these after shutting down: exit -15
        self.should_exit = True


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    previous = signal.signal(signal.SIGTERM, fake.handle_exit)
    try:
        yield fake
    finally:
        signal.signal(signal.SIGTERM, previous)


def make_cluster() -> covey.Cluster:
    cluster = covey.Cluster(CoveyConfig(database_url="memory://", shards=4, sharding=FAST),
                            transport=LocalTransport(LocalNetwork(), RunnerAddress("web", 1)))
    cluster.register(Account)
    return cluster


def make_app(cluster: covey.Cluster, **install: Any) -> FastAPI:
    app = FastAPI(lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster, **install)

    @app.get("/work")
    async def work() -> dict[str, str]:
        return {"done": "yes"}

    return app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_sigterm_drains_keeps_serving_then_asks_the_server_to_exit(
        server: FakeServer) -> None:
    cluster = make_cluster()
    app = make_app(cluster, drain_delay=0.5)
    async with app.router.lifespan_context(app), client(app) as http:
        assert (await http.get("/readyz")).status_code == 200
        assert cluster.sharding.owned  # the runner serves shards
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: cluster.health.draining)
        ready = await http.get("/readyz")
        assert ready.status_code == 503  # readiness fails at once
        # still serving during the drain delay, and the server was not told yet; the
        # runner keeps its registration (its machine id) until the lifespan shutdown
        assert cluster.address in [r.address for r in
                                   await cluster.storage.runners.live_runners(max_age=60)]
        assert (await http.get("/work")).status_code == 200
        assert (await http.get("/livez")).status_code == 200
        assert not server.should_exit
        await until(lambda: server.should_exit)
        # asked through should_exit, not by calling uvicorn's handler: no -15 exit
        assert server.handled == []
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit  # restored
    assert not cluster._serving  # stopped by the lifespan's shutdown


async def test_a_second_sigterm_skips_the_rest_of_the_drain_delay(server: FakeServer) -> None:
    cluster = make_cluster()
    app = make_app(cluster, drain_delay=600)
    async with app.router.lifespan_context(app):
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: cluster.health.draining)
        assert not server.should_exit
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: server.should_exit)


async def test_without_sigterm_the_lifespan_just_starts_and_stops(server: FakeServer) -> None:
    cluster = make_cluster()
    app = make_app(cluster)
    async with app.router.lifespan_context(app), client(app) as http:
        assert signal.getsignal(signal.SIGTERM) != server.handle_exit  # chained
        account = await http.get("/work")
        assert account.status_code == 200
        assert not cluster.health.draining
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit
    assert not server.should_exit


async def test_a_lifespan_of_your_own_composes_with_the_clusters(server: FakeServer) -> None:
    cluster = make_cluster()
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        async with cluster.lifespan(app):
            events.append("started")
            yield {"greeting": "hello"}
            events.append("stopping")

    app = FastAPI(lifespan=lifespan)
    covey.asgi.install(app, cluster)
    async with app.router.lifespan_context(app) as state:
        assert state == {"greeting": "hello"}
        assert cluster.sharding.owned
    assert events == ["started", "stopping"]


async def test_an_app_whose_lifespan_does_not_start_the_cluster_fails_at_startup() -> None:
    cluster = make_cluster()
    app = FastAPI()  # forgot lifespan=cluster.lifespan
    covey.asgi.install(app, cluster)
    with pytest.raises(ClusterError) as caught:
        async with app.router.lifespan_context(app):
            pass
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert "lifespan=cluster.lifespan" in str(caught.value)
