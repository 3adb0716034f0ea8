"""The pod application of the real-time benchmarks (``sse-latency``, ``sse-scale``,
``ws-rpc``, ``ws-reconnect``).

Served by uvicorn with a runner embedded, configured by ``COVEY_*`` variables::

    uvicorn bench.apps.realtime_bench_app:make_app --factory --http httptools \\
        --ws websockets --log-level warning

(cwd = repo root, the repo root on ``PYTHONPATH``). Routes:

- ``GET /streams/<name>``: ``cluster.sse()`` (no authorization: every stream is public);
- ``WS /rpc``: ``cluster.websocket(EchoImpl)``: the :class:`Echo` contract; the
  bearer token, when there is one, is the connection's user (so
  ``send_to_user`` reaches it); the per-connection rate limit is off (the
  benchmark measures the round trip, not the limiter);
- ``POST /publish?stream=&count=&rate=&phase=``: publishes ``count`` items
  (paced at ``rate`` per second, each stamped ``sent_at = time.time()`` right
  before its ``cluster.streams.publish``) and answers once all are published,
  with the publish calls' durations: a publisher on this pod with no HTTP client
  in the measured path;
- ``GET /rss``: this process's ``VmRSS`` (KiB); ``GET /stats``: open SSE
  subscribers and user connections here, and the garbage collector's
  collections and seconds so far per generation (``gc.callbacks``);
- ``/readyz`` and the rest of :func:`covey.asgi.install`.

Profiling (only when ``BENCH_PROFILE_DIR`` is set): the first ``SIGUSR1``
starts cProfile, the next one stops it and writes ``pod-<pid>.prof`` there.

Importing the module has no side effect: the clients import :class:`Echo`,
:class:`Ping`, :class:`Pong` and :class:`Note` from it.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

from bench.apps._profiling import install_profiler
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute

import covey
import covey.asgi
from covey.realtime import Contract, Handshake, Principal, method, push

#: the stream item's padding, so an item is about the size of a small real update
PAD = "x" * 64


class Ping(BaseModel):
    """A call's argument."""

    n: int


class Pong(BaseModel):
    """Its result."""

    n: int


class Note(BaseModel):
    """A message sent to a user (``send_to_user``)."""

    user: str
    n: int
    sent_at: float


class Echo(Contract):
    """The benchmark's contract: one method that only returns, one push."""

    @method
    async def echo(self, ping: Ping) -> Pong:
        """Answer ``ping`` at once."""
        ...

    message = push(Note)


class EchoImpl(Echo):
    """The server's implementation."""

    async def echo(self, ping: Ping) -> Pong:
        return Pong(n=ping.n)


def authenticate(handshake: Handshake) -> Principal:
    """The bearer token names the user (anonymous without one)."""
    return Principal(user=handshake.token)


def rss_kib() -> int:
    """This process's resident set size, in KiB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class GcClock:
    """Collections and seconds spent in them, per generation (a ``gc.callbacks`` hook)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.collections[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started


def make_app() -> Starlette:
    """The pod: a cluster from ``COVEY_*`` variables and its routes (module docstring)."""
    install_profiler("pod")  # only with BENCH_PROFILE_DIR set
    cluster = covey.Cluster.from_env()
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)

    async def publish(request: Request) -> JSONResponse:
        stream = request.query_params.get("stream", "bench")
        count = int(request.query_params.get("count", "1"))
        rate = float(request.query_params.get("rate", "0"))  # 0: back to back
        phase = request.query_params.get("phase", "")
        loop = asyncio.get_running_loop()
        started = loop.time()
        calls: list[float] = []
        for n in range(count):
            if rate > 0:
                delay = started + n / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_at = time.time()
            await cluster.streams.publish(
                stream, {"n": n, "phase": phase, "sent_at": sent_at, "pad": PAD})
            calls.append(time.time() - sent_at)
        return JSONResponse({"published": count, "calls": calls})

    async def rss(request: Request) -> JSONResponse:
        return JSONResponse({"rss_kib": rss_kib()})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"sse": cluster.streams.hub.connections,
                             "users": cluster.presence.connections,
                             "gc_collections": gc_clock.collections,
                             "gc_s": [round(s, 4) for s in gc_clock.seconds]})

    app = Starlette(routes=[
        Mount("/streams", app=cluster.sse()),
        WebSocketRoute("/rpc", cluster.websocket(EchoImpl, authenticate=authenticate,
                                                 rate=None)),
        Route("/publish", publish, methods=["POST"]),
        Route("/rss", rss),
        Route("/stats", stats),
    ], lifespan=cluster.lifespan)
    covey.asgi.install(app, cluster)
    return app
