"""The pod of the real-time acceptance tests (``test_realtime.py``).

Each pod is ``uvicorn tests.acceptance.realtime_pod:create_app --factory`` with
``COVEY_DATABASE_URL`` naming the test's database: a cluster member with an
embedded runner, serving

- ``GET /streams/<name>``: every stream over SSE (``cluster.sse()``, anyone may read);
- ``WS /rpc``: the :class:`Inbox` contract; token ``u-<uid>`` is user ``<uid>``
  (a test scheme: a real app verifies a signed token), anything else 4401;
- ``POST /users/<uid>/notices?seq=<n>&store=1``: ``send_to_user(uid, Notice)``,
  answering ``{"outcome": ...}``;
- ``GET /rss``: this process's resident memory (``VmRSS``, kB), ``GET /stats``:
  that and the real-time metrics of this process;
- ``/readyz`` and the rest of ``covey.asgi.install``.

The app is built by a factory so that the tests can import :class:`Inbox`
without building a cluster in their own process. ``POD_NAME`` names the pod in
what it answers. :func:`start_pod` starts one from a test (``POD_ENV``: its
short timings).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

import covey
import covey.asgi
from covey.realtime import Contract, Handshake, Principal, method, push

from ._pods import Pod, pod_env, start_uvicorn


class Notice(BaseModel):
    """What ``send_to_user`` hands to a user's connections."""

    seq: int
    sender: str


class Me(BaseModel):
    """Who a connection is, and which pod serves it."""

    user: str | None
    pod: str


class Inbox(Contract):
    """A user's live inbox: who am I, and the notices pushed to me."""

    @method
    async def whoami(self) -> Me:
        """The connection's user and the pod it is on."""
        ...

    notice = push(Notice, description="A notice sent to this connection's user.")


class InboxImpl(Inbox):
    """The pod's implementation of :class:`Inbox`."""

    async def whoami(self) -> Me:
        return Me(user=self.connection.principal.user, pod=pod_name())


def pod_name() -> str:
    return os.environ.get("POD_NAME", "pod")


def authenticate(handshake: Handshake) -> Principal | None:
    """Token ``u-<uid>`` is user ``<uid>`` (the tests' scheme); anything else is refused."""
    token = handshake.token or ""
    return Principal(user=token[2:]) if token.startswith("u-") and len(token) > 2 else None


def rss_kb() -> int:
    """This process's resident set size in kB (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def stats() -> dict[str, Any]:
    """The figures the tests watch, read from this process's metrics."""
    return {
        "pod": pod_name(),
        "rss_kb": rss_kb(),
        "sse_connections": _sample("covey_realtime_connections", kind="sse"),
        "ws_connections": _sample("covey_realtime_connections", kind="websocket"),
        "sse_slow_disconnects": _sample("covey_realtime_slow_disconnects_total", kind="sse"),
        "sse_overflows": _sample("covey_realtime_buffer_overflows_total", kind="sse"),
        "sse_reconnects": _sample("covey_realtime_reconnects_total", kind="sse"),
        "sse_items_sent": _sample("covey_realtime_items_sent_total", kind="sse"),
    }


def create_app() -> Starlette:
    """The pod: a cluster from ``COVEY_*`` and the routes of the module docstring."""
    cluster = covey.Cluster.from_env()

    async def send_notice(request: Request) -> JSONResponse:
        user = request.path_params["user"]
        seq = int(request.query_params.get("seq", "0"))
        outcome = await cluster.send_to_user(
            user, Notice(seq=seq, sender=pod_name()), push="notice", id=f"notice-{seq}",
            store=request.query_params.get("store") == "1")
        return JSONResponse({"outcome": outcome, "pod": pod_name()})

    async def rss(request: Request) -> JSONResponse:
        return JSONResponse({"rss_kb": rss_kb()})

    async def stats_endpoint(request: Request) -> JSONResponse:
        return JSONResponse(stats())

    app = Starlette(routes=[
        Mount("/streams", app=cluster.sse()),
        WebSocketRoute("/rpc", cluster.websocket(InboxImpl, authenticate=authenticate)),
        Route("/users/{user}/notices", send_notice, methods=["POST"]),
        Route("/rss", rss),
        Route("/stats", stats_endpoint),
    ], lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster)
    return app


# ---- starting pods (the tests) ---------------------------------------------------

APP = "tests.acceptance.realtime_pod:create_app"
SECRET = "realtime-secret"
#: the pods' settings: a send timeout well within the 10 s bound of a frozen
#: client's release, short route leases (a dead pod's routes go quickly) and
#: safety re-reads, and room for the 10,000 items of one test
POD_ENV = {
    "COVEY_REALTIME_SEND_TIMEOUT": "5",
    "COVEY_REALTIME_ROUTE_TTL": "3",
    "COVEY_REALTIME_POLL_INTERVAL": "0.5",
    "COVEY_REALTIME_HEARTBEAT": "5",
    "COVEY_REALTIME_STREAM_KEEP": "20000",
    "COVEY_SHARDING_SHUTDOWN_GRACE": "2",
}


def covey_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a pod or publisher process on ``database_url``."""
    return pod_env(database_url, secret=SECRET, shards=30, **extra)


def start_pod(name: str, database_url: str, workdir: Path) -> Pod:
    """Start ``uvicorn`` with this app on a free port (not waiting for it: see
    ``_pods.wait_ready``); its output goes to ``workdir/<name>.log``."""
    env = covey_env(database_url, POD_NAME=name, **POD_ENV)
    return start_uvicorn(name, APP, env, workdir, graceful_shutdown=5, factory=True)
