"""A started single-runner cluster (memory storage) with something in every view."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

import covey
from covey.core import CoveyConfig, HealthOptions
from covey.dashboard import Dashboard, DashboardRequest
from covey.jobs import Retry


class Email(BaseModel):
    to: str


class OrderPlaced(covey.Event, topic="orders", key="order_id"):
    order_id: str


class Cart(covey.Entity, type="Cart"):
    @covey.rpc()
    async def ping(self) -> str:
        return "pong"


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait for ``predicate()`` (sync or async) to be true, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@dataclass
class Shop:
    """The application under the dashboard: what its handlers saw."""

    cluster: covey.Cluster
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: set[str] = field(default_factory=set)
    sent: list[str] = field(default_factory=list)
    signals: list[Any] = field(default_factory=list)


def build(**config: Any) -> Shop:
    cluster = covey.Cluster(CoveyConfig(database_url="memory://", shards=4,
                                        health=HealthOptions(interval=0.05), **config))
    shop = Shop(cluster)
    cluster.register(Cart)

    @cluster.job("email.send", retry=Retry(max_attempts=1))
    async def send(job: covey.JobContext, msg: Email) -> str:
        if msg.to in shop.fail:
            raise ConnectionError(f"smtp down for {msg.to}")
        shop.sent.append(msg.to)
        return f"sent to {msg.to}"

    @cluster.job("slow")
    async def slow(job: covey.JobContext, msg: Email) -> None:
        await shop.gate.wait()

    @cluster.workflow("checkout")
    async def checkout(ctx: covey.WorkflowContext, order: str) -> str:
        got = await ctx.recv("paid")
        shop.signals.append(got)
        return f"{order} paid {got}"

    @cluster.subscribe(OrderPlaced, group="billing", start="earliest",
                       retry=Retry(max_attempts=1))
    async def bill(event: OrderPlaced, ctx: covey.EventContext) -> None:
        if event.order_id.startswith("bad"):
            raise ValueError(f"cannot bill {event.order_id}")

    @cluster.cron("* * * * *", name="nightly")
    async def nightly(tick: covey.CronTick) -> None:
        return None

    @cluster.singleton(name="sweeper", expected_interval=60.0)
    async def sweeper(ctx: covey.SingletonContext[Any]) -> None:
        ctx.beat()
        await asyncio.Event().wait()

    return shop


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    shop = build()
    async with shop.cluster:
        try:
            yield shop
        finally:
            shop.gate.set()  # a running "slow" job ends: the stop need not wait for it


def operator_header(request: DashboardRequest) -> str | None:
    """The test's authorization hook: the ``x-operator`` header names the operator."""
    return request.headers.get("x-operator") or None


def client_for(app: Dashboard, operator: str | None = "alice",
               root: str = "") -> httpx.AsyncClient:
    headers = {"x-operator": operator} if operator else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, root_path=root),
                             base_url="http://dash", headers=headers)


@pytest.fixture
async def dash(shop: Shop) -> AsyncIterator[httpx.AsyncClient]:
    app = shop.cluster.dashboard(authorize=operator_header)
    async with client_for(app) as client:
        yield client
