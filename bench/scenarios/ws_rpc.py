"""Typed WebSocket RPC on loopback: the round trip of one caller, and 64 concurrent.

One uvicorn pod of ``bench.apps.realtime_bench_app`` (``--ws websockets``,
runner embedded, scratch PostgreSQL database) serves the contract ``Echo``
(``echo(Ping) -> Pong``, returning at once; the per-connection rate limit
off). The bench process is the client, msgpack codec, each connection with a
user token (``rpc-<i>``), as an application's connections would have.

With the real client (``covey.realtime.connect``: pydantic in and out, call
table, deadlines):

* ``p50_ms`` / ``p99_ms``: ``SEQUENTIAL`` round trips one after the other by
  ONE caller (target p50 <= 1), after ``WARMUP`` calls.
* ``calls_per_s``: 64 concurrent callers for ``WINDOW`` seconds, each on a
  socket of its own (64 connections, one call in flight each: 64 users, which
  is what "64 concurrent" means for a server) (target >= 5000);
  ``concurrent_p50_ms`` / ``concurrent_p99_ms`` their round trips.
* ``one_socket_calls_per_s``: 64 callers sharing ONE connection (64 calls in
  flight on it: its ``max_in_flight``), for comparison.

With a lean client (:class:`bench.apps.realtime_clients.RawWebSocket`: frames
and msgpack by hand, no validation), to tell the server's share from the real
client's: ``raw_p50_ms`` / ``raw_p99_ms`` and ``raw_calls_per_s`` (same shapes).

``cpu``: CPU seconds of the pod and of the bench process in each concurrent
window: which side is the bottleneck (2 cores here).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import covey.realtime

from ._realtime import Pod, cpu_seconds, ms, pods
from ._runners import log, scratch_database, server_settings

CALLERS = 64
WARMUP = 1000

Call = Callable[[int], Awaitable[Any]]


async def sequential(call: Call, count: int) -> list[float]:
    """Round trips of ``count`` calls one after the other."""
    lags = []
    clock = time.perf_counter
    for n in range(count):
        started = clock()
        await call(n)
        lags.append(clock() - started)
    return lags


async def concurrent(calls: Sequence[Call], seconds: float,
                     pod: Pod) -> tuple[float, list[float], dict[str, float]]:
    """Each of ``calls`` called back to back for ``seconds``: (calls per second,
    round trips, CPU seconds of the pod and the bench process)."""
    lags: list[float] = []
    clock = time.perf_counter
    numbers = itertools.count()
    stop = clock() + seconds

    async def caller(call: Call) -> None:
        while clock() < stop:
            started = clock()
            await call(next(numbers))
            lags.append(clock() - started)

    pod_cpu, own_cpu = cpu_seconds(pod.process.pid), time.process_time()
    started = clock()
    await asyncio.gather(*(caller(c) for c in calls))
    elapsed = clock() - started
    cpu = {"pod": round(cpu_seconds(pod.process.pid) - pod_cpu, 2),
           "bench": round(time.process_time() - own_cpu, 2), "window_s": round(elapsed, 2)}
    return round(len(lags) / elapsed, 1), lags, cpu


async def real_client(pod: Pod, count: int, seconds: float) -> dict[str, Any]:
    from bench.apps.realtime_bench_app import Echo, Ping

    def caller(client: covey.realtime.Client[Echo]) -> Call:
        return lambda n: client.echo(Ping(n=n))

    clients = [await covey.realtime.connect(Echo, pod.ws, token=f"rpc-{i}", codec="msgpack")
               for i in range(CALLERS)]
    try:
        one = caller(clients[0])
        await sequential(one, WARMUP)
        lags = await sequential(one, count)
        log(f"  covey client, one caller: p50 {ms(lags, 0.5)} ms, p99 {ms(lags, 0.99)} ms")
        rate, busy, cpu = await concurrent([caller(c) for c in clients], seconds, pod)
        log(f"  covey client, {CALLERS} sockets: {rate} calls/s; cpu {cpu}")
        shared, _, shared_cpu = await concurrent([one] * CALLERS, seconds, pod)
        log(f"  covey client, {CALLERS} callers on one socket: {shared} calls/s; "
            f"cpu {shared_cpu}")
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return {"p50_ms": ms(lags, 0.5), "p99_ms": ms(lags, 0.99), "calls_per_s": rate,
            "concurrent_p50_ms": ms(busy, 0.5), "concurrent_p99_ms": ms(busy, 0.99),
            "one_socket_calls_per_s": shared,
            "cpu": {"sockets": cpu, "one_socket": shared_cpu}}


async def raw_client(pod: Pod, count: int, seconds: float) -> dict[str, Any]:
    from bench.apps.realtime_clients import RawWebSocket, open_raw_ws

    sockets: list[RawWebSocket] = []
    try:
        for i in range(CALLERS):
            sockets.append(await open_raw_ws(pod.port, f"rpc-raw-{i}"))
        await sequential(sockets[0].echo, WARMUP)
        lags = await sequential(sockets[0].echo, count)
        log(f"  lean client, one caller: p50 {ms(lags, 0.5)} ms, p99 {ms(lags, 0.99)} ms")
        rate, busy, cpu = await concurrent([s.echo for s in sockets], seconds, pod)
        log(f"  lean client, {CALLERS} sockets: {rate} calls/s; cpu {cpu}")
    finally:
        for sock in sockets:
            sock.close()
    return {"raw_p50_ms": ms(lags, 0.5), "raw_p99_ms": ms(lags, 0.99), "raw_calls_per_s": rate,
            "raw_concurrent_p50_ms": ms(busy, 0.5), "raw_concurrent_p99_ms": ms(busy, 0.99),
            "raw_cpu": cpu}


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    count, seconds = (2_000, 3.0) if quick else (20_000, 10.0)
    async with scratch_database() as url:
        async with pods(url, ["pod"]) as (pod,):
            log(f"one pod; {count} sequential calls, then {CALLERS} callers for {seconds:g} s; "
                "the covey client, then a lean one...")
            result = await real_client(pod, count, seconds)
            result.update(await raw_client(pod, count, seconds))
    result.update(
        scenario="ws-rpc", quick=quick, sequential_calls=count, warmup=WARMUP,
        window_s=seconds, codec="msgpack", server="uvicorn --http httptools --ws websockets",
        callers=f"{CALLERS} sockets, one caller (one call in flight) each",
        client="covey.realtime.connect; raw_*: a lean asyncio protocol (frames and msgpack "
               "by hand)", rate_limit="off (rate=None)", cpus=os.cpu_count(), postgres=settings,
        targets={"p50_ms": 1, "calls_per_s": 5000})
    return result
