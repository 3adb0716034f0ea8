"""The pod of the dashboard's browser test (``test_dashboard_browser.py``).

Each pod is ``uvicorn tests.acceptance.dashboard_pod:create_app --factory`` with
``COVEY_DATABASE_URL`` naming the test's database: a cluster member with an
embedded runner that declares

- jobs ``report`` (always succeeds), ``doomed`` (always fails: dead-lettered
  after its two attempts) and ``gated`` (fails while the file named by
  ``DASHBOARD_GATE_FILE`` does not exist, so a retry from the dead-letter
  succeeds once the test creates it);
- workflow ``approval``: a step, ``recv("approve")``, a step;
- event group ``pinger`` on ``Ping`` events: a ``poison`` ping fails both
  attempts and is dead-lettered;
- entity ``Counter``, cron ``tick`` (every 2 s) and singleton ``keeper``;

and serves

- ``/dash``: ``cluster.dashboard(authorize=...)`` behind HTTP Basic auth: any
  user name with password ``DASHBOARD_TOKEN`` is that operator;
- ``POST /hooks/sink`` (204) and ``POST /hooks/broken`` (500): webhook receivers;
- ``/favicon.ico`` (204: the site's, so the browser logs no 404);
- ``/readyz`` and the rest of ``covey.asgi.install``.

:func:`declare` is called by the test's client-only cluster too, so it starts
workflows through the same declarations. :func:`start_pod` starts a pod.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import os
from pathlib import Path

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

import covey
import covey.asgi
from covey.dashboard import DashboardRequest

from ._pods import Pod, pod_env, start_uvicorn

TOKEN = "dashboard-token"  # the pods' Basic auth password (DASHBOARD_TOKEN)
#: two fast attempts: dead letters form in well under a second
FAST_RETRY = covey.Retry(max_attempts=2, backoff=covey.exponential(0.05, 0.1), jitter=False)


class Work(BaseModel):
    """The payload of every test job."""

    key: str


class Approval(BaseModel):
    """The payload of the ``approval`` workflow."""

    order: str


class Ping(covey.Event, topic="dash.pings", key="key"):
    """What the ``pinger`` group handles; a ``poison`` ping always fails."""

    key: str
    poison: bool = False


class Counter(covey.Entity, type="Counter", max_idle=600):  # active for the whole test
    """An entity to see active on the entities view."""

    count: int = 0

    @covey.rpc
    async def bump(self) -> int:
        self.count += 1
        return self.count


async def prepare(order: str) -> str:
    return f"prepared {order}"


async def ship(order: str) -> str:
    return f"shipped {order}"


def declare(cluster: covey.Cluster) -> covey.Workflow:
    """Declare the jobs, the workflow and the entity on ``cluster``; the workflow."""

    @cluster.job("report")
    async def report(job: covey.JobContext, work: Work) -> str:
        return f"report {work.key}"

    @cluster.job("doomed", retry=FAST_RETRY)
    async def doomed(job: covey.JobContext, work: Work) -> None:
        raise RuntimeError(f"the printer is on fire ({work.key}, attempt {job.attempt})")

    @cluster.job("gated", retry=FAST_RETRY)
    async def gated(job: covey.JobContext, work: Work) -> str:
        if not await asyncio.to_thread(Path(os.environ["DASHBOARD_GATE_FILE"]).exists):
            raise ConnectionError(f"gate closed for {work.key} (attempt {job.attempt})")
        return f"through the gate {work.key}"

    @cluster.workflow("approval")
    async def approval(ctx: covey.WorkflowContext, request: Approval) -> str:
        await ctx.step(prepare, request.order, name="prepare")
        verdict = await ctx.recv("approve")
        await ctx.step(ship, request.order, name="ship")
        return f"{request.order}: {verdict}"

    cluster.register(Counter)
    return approval


def declare_runner_work(cluster: covey.Cluster) -> None:
    """What only the pods run: the event group, the cron and the singleton."""

    @cluster.subscribe(Ping, group="pinger", start="earliest", retry=FAST_RETRY)
    async def pinger(event: Ping, ctx: covey.EventContext) -> None:
        if event.poison:
            raise ValueError(f"poisoned ping {event.key}")

    @cluster.cron("*/2 * * * * *", name="tick")
    async def tick(tick: covey.CronTick) -> None:
        return None

    @cluster.singleton("keeper", expected_interval=1.0)
    async def keeper(ctx: covey.SingletonContext[None]) -> None:
        while True:
            ctx.beat()
            await asyncio.sleep(0.3)  # cancelled when the singleton moves or the pod stops


def authorize(request: DashboardRequest) -> str | None:
    """HTTP Basic: any user name with the pods' token is that operator; else None."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    token = os.environ.get("DASHBOARD_TOKEN", TOKEN)
    return user if user and hmac.compare_digest(password, token) else None


def create_app() -> Starlette:
    """The pod: a cluster from ``COVEY_*`` and the routes of the module docstring."""
    cluster = covey.Cluster.from_env()
    declare(cluster)
    declare_runner_work(cluster)

    async def sink(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    async def broken(request: Request) -> Response:
        await request.body()
        return Response("receiver down", status_code=500)

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # the browser asks the site's root for one

    app = Starlette(routes=[
        Mount("/dash", app=cluster.dashboard(authorize=authorize)),
        Route("/hooks/sink", sink, methods=["POST"]),
        Route("/hooks/broken", broken, methods=["POST"]),
        Route("/favicon.ico", favicon),
    ], lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster)
    return app


# ---- starting pods (the test) ----------------------------------------------------

APP = "tests.acceptance.dashboard_pod:create_app"
SECRET = "dashboard-secret"
#: short timings: no balancer in front, nothing to wait for
POD_ENV = {
    "COVEY_DRAIN_DELAY": "0.5",
    "COVEY_SHARDING_SHUTDOWN_GRACE": "2",
    "COVEY_LOG_LEVEL": "INFO",  # the dashboard's audit lines go to the pod's output
}


def covey_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a pod (or of the test's client) on ``database_url``."""
    return pod_env(database_url, secret=SECRET, shards=12,
                   COVEY_WEBHOOKS_ALLOW_PRIVATE="true", **extra)


def start_pod(name: str, database_url: str, workdir: Path, gate_file: Path) -> Pod:
    """Start ``uvicorn`` with this app on a free port (not waiting for it: see
    ``_pods.wait_ready``); its output goes to ``workdir/<name>.log``."""
    env = covey_env(database_url, POD_NAME=name, DASHBOARD_TOKEN=TOKEN,
                    DASHBOARD_GATE_FILE=str(gate_file), **POD_ENV)
    return start_uvicorn(name, APP, env, workdir, graceful_shutdown=3, factory=True)
