"""The pod of the ``dashboard`` benchmark: the dashboard mounted in a Starlette app.

``uvicorn bench.apps.dashboard_bench_app:make_app --factory`` with ``COVEY_*``
variables (cwd = repo root, the repo root on ``PYTHONPATH``). With
``BENCH_CLIENT_ONLY=1`` the pod is a client-only member (it runs nothing: the
store stays as seeded while the views are measured); otherwise it embeds a
runner that runs what :func:`declare` and :func:`declare_runner_work` declare
(the benchmark's template phase). Routes:

- ``/dash``: ``cluster.dashboard(development=True)``;
- ``POST /hooks/sink`` (204) and ``POST /hooks/broken`` (500): webhook receivers;
- ``/readyz`` and the rest of :func:`covey.asgi.install`.

Importing the module has no side effect: the benchmark declares the same jobs,
workflow and event on its own client-only member.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

import covey
import covey.asgi
from covey.core import CoveyConfig

#: two fast attempts: dead letters form in well under a second
FAST_RETRY = covey.Retry(max_attempts=2, backoff=covey.exponential(0.05, 0.1), jitter=False)


class Work(BaseModel):
    """The payload of every benchmark job."""

    key: str


class Order(BaseModel):
    """The payload of the ``order`` workflow."""

    order: str


class OrderPlaced(covey.Event, topic="bench.orders", key="key"):
    """What the ``mailer`` group handles; a ``poison`` one always fails."""

    key: str
    poison: bool = False


async def prepare(order: str) -> str:
    return f"prepared {order}"


async def ship(order: str) -> str:
    return f"shipped {order}"


def declare(cluster: covey.Cluster) -> covey.Workflow:
    """The jobs ``report`` (succeeds) and ``doomed`` (fails twice: dead) and the
    workflow ``order`` (a step, ``recv("approve")``, a step); the workflow."""

    @cluster.job("report")
    async def report(job: covey.JobContext, work: Work) -> str:
        return f"report {work.key}"

    @cluster.job("doomed", retry=FAST_RETRY)
    async def doomed(job: covey.JobContext, work: Work) -> None:
        raise RuntimeError(f"the printer is on fire ({work.key}, attempt {job.attempt})")

    @cluster.workflow("order")
    async def order(ctx: covey.WorkflowContext, request: Order) -> str:
        await ctx.step(prepare, request.order, name="prepare")
        verdict = await ctx.recv("approve")
        await ctx.step(ship, request.order, name="ship")
        return f"{request.order}: {verdict}"

    return order


def declare_runner_work(cluster: covey.Cluster) -> None:
    """The event group ``mailer``, the cron ``rollup`` and the singleton ``keeper``."""

    @cluster.subscribe(OrderPlaced, group="mailer", start="earliest", retry=FAST_RETRY)
    async def mailer(event: OrderPlaced, ctx: covey.EventContext) -> None:
        if event.poison:
            raise ValueError(f"poisoned order {event.key}")

    @cluster.cron("*/2 * * * * *", name="rollup")
    async def rollup(tick: covey.CronTick) -> None:
        return None

    @cluster.singleton("keeper", expected_interval=1.0)
    async def keeper(ctx: covey.SingletonContext[None]) -> None:
        while True:
            ctx.beat()
            await asyncio.sleep(0.3)  # cancelled when the singleton moves or the pod stops


def make_app() -> Starlette:
    """The pod (module docstring)."""
    client_only = os.environ.get("BENCH_CLIENT_ONLY") == "1"
    cluster = covey.Cluster(CoveyConfig.from_env(), client_only=client_only)
    declare(cluster)
    declare_runner_work(cluster)

    async def sink(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    async def broken(request: Request) -> Response:
        await request.body()
        return Response("receiver down", status_code=500)

    app = Starlette(routes=[
        Mount("/dash", app=cluster.dashboard(development=True)),
        Route("/hooks/sink", sink, methods=["POST"]),
        Route("/hooks/broken", broken, methods=["POST"]),
    ], lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster)
    return app
