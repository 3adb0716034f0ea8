"""SSE at scale: memory per 1,000 idle connections, and one item fanned out to all.

One uvicorn pod of ``bench.apps.realtime_bench_app`` (runner embedded, scratch
PostgreSQL database). The bench process raises its ``RLIMIT_NOFILE`` soft
limit to the hard one before starting the pod (which inherits it), and opens
``N`` SSE connections to ``GET /streams/scale`` (5,000; 1,000 with
``--quick``: the same per-1,000 figure over fewer connections) as lean protocol
clients (:class:`bench.apps.realtime_clients.SseReader`: cheap for the bench,
receipt stamped with ``time.time()`` in ``data_received``).

1. Warm-up: ``WARMUP`` connections receive an item and close (code paths hot,
   pools open); then the pod's ``VmRSS`` (``GET /rss``) is the baseline.
2. ``N`` connections open (``CONNECT_CONCURRENCY`` at a time), every one
   answered 200 and counted by the pod's hub (``GET /stats``); after
   ``SETTLE`` seconds ``VmRSS`` again. ``rss_mb_per_1000`` = (RSS with them -
   baseline) / (N / 1000), in MiB (target <= 60).
3. ``ROUNDS`` times: one ``POST /publish`` (the pod stamps ``sent_at`` and
   publishes one item), wait until all ``N`` have it. ``fanout_p50_ms`` /
   ``fanout_p99_ms`` / ``fanout_max_ms``: receipt - ``sent_at`` over every
   (round, connection) (target p99 <= 1000); ``fanout_last_ms``: per round,
   when the last connection had it. ``fanout_cpu_s``: CPU seconds the pod and
   the bench process spent per round (which side the time went to), the pod's
   wall seconds in its garbage collector (``pod_gc``, from ``gc.callbacks``)
   and its full collections (``pod_gc2``) over the round.

With ``BENCH_PROFILE_DIR`` set, the pod is profiled (cProfile) over the
fan-out rounds; its ``.prof`` file lands there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from ._realtime import Pod, cpu_seconds, get_json, ms, pods, raise_nofile, rss_mib
from ._runners import log, scratch_database, server_settings, wait_until

if TYPE_CHECKING:
    from bench.apps.realtime_clients import SseReader

STREAM = "scale"
WARMUP = 20
CONNECT_CONCURRENCY = 100
SETTLE = 3.0
ROUNDS = 3
#: file descriptors kept free besides the connections (the database pools, logs)
FD_MARGIN = 200
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")


async def sse_count(pod: Pod) -> int:
    return int((await get_json(pod, "/stats"))["sse"])


async def fanout(pod: Pod, readers: list[SseReader], phase: str) -> list[float]:
    """Publish one item; the receipt - ``sent_at`` of every reader that got it."""
    marks = [len(r.events) for r in readers]
    await get_json(pod, f"/publish?stream={STREAM}&phase={phase}", method="POST")
    deadline = time.monotonic() + 30
    while any(len(r.events) == m for r, m in zip(readers, marks, strict=True)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    lags = []
    for reader in readers:
        for received, data in reader.events:
            item = json.loads(data)
            if item["phase"] == phase:
                lags.append(received - item["sent_at"])
    return lags


async def measure(url: str, connections: int) -> dict[str, Any]:
    from bench.apps.realtime_clients import close_sse, open_sse  # the repo root is on the path now

    async with pods(url, ["pod"]) as (pod,):
        path = f"/streams/{STREAM}"
        warm = await open_sse(pod.port, path, WARMUP)
        try:
            await fanout(pod, warm, "warmup")
        finally:
            await close_sse(warm)
        await wait_until(lambda: _is(pod, 0), 30, interval=0.2)
        await asyncio.sleep(1)
        before = await rss_mib(pod)
        log(f"pod RSS {before} MiB; opening {connections} SSE connections...")
        started = time.monotonic()
        readers = await open_sse(pod.port, path, connections, concurrency=CONNECT_CONCURRENCY)
        try:
            opened_s = time.monotonic() - started
            await wait_until(lambda: _is(pod, connections), 60, interval=0.2)
            await asyncio.sleep(SETTLE)
            during = await rss_mib(pod)
            log(f"  {connections} open in {opened_s:.1f} s; pod RSS {during} MiB")
            lags: list[float] = []
            last: list[float] = []
            received: list[int] = []
            cpu: list[dict[str, float]] = []
            if PROFILE_DIR:
                pod.process.send_signal(signal.SIGUSR1)
            for round_ in range(ROUNDS):
                pod_cpu, own_cpu = cpu_seconds(pod.process.pid), time.process_time()
                gc_before = await get_json(pod, "/stats")
                got = await fanout(pod, readers, f"round-{round_}")
                gc_after = await get_json(pod, "/stats")
                cpu.append({"pod": round(cpu_seconds(pod.process.pid) - pod_cpu, 2),
                            "bench": round(time.process_time() - own_cpu, 2),
                            "pod_gc": round(sum(gc_after["gc_s"]) - sum(gc_before["gc_s"]), 3),
                            "pod_gc2": gc_after["gc_collections"][2]
                            - gc_before["gc_collections"][2]})
                lags.extend(got)
                received.append(len(got))
                last.append(ms(got, 1.0))
                log(f"  round {round_ + 1}: {len(got)} of {connections} received, last after "
                    f"{last[-1]} ms; cpu {cpu[-1]}")
                await asyncio.sleep(1)
            if PROFILE_DIR:
                pod.process.send_signal(signal.SIGUSR1)
            after = await rss_mib(pod)
            still_open = sum(not r.lost.done() for r in readers)
        finally:
            await close_sse(readers)
    return {
        "rss_mb_per_1000": round((during - before) / (connections / 1000), 2),
        "rss_before_mb": before, "rss_with_connections_mb": during,
        "rss_after_fanout_mb": after, "connect_s": round(opened_s, 2),
        "fanout_p50_ms": ms(lags, 0.5), "fanout_p99_ms": ms(lags, 0.99),
        "fanout_max_ms": ms(lags, 1.0), "fanout_last_ms": last,
        "fanout_received": received, "fanout_cpu_s": cpu, "still_open": still_open,
    }


async def _is(pod: Pod, count: int) -> bool:
    return await sse_count(pod) == count


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    limit = raise_nofile()
    wanted = 1_000 if quick else 5_000
    connections = min(wanted, limit - FD_MARGIN)
    if connections < wanted:
        log(f"RLIMIT_NOFILE is {limit}: {connections} connections instead of {wanted}")
    async with scratch_database() as url:
        result = await measure(url, connections)
    result.update(
        scenario="sse-scale", quick=quick, connections=connections, rounds=ROUNDS,
        nofile_limit=limit, cpus=os.cpu_count(), postgres=settings,
        client="lean asyncio protocols in the bench process, receipt stamped in "
               "data_received",
        rss="VmRSS of the pod process (MiB); per 1000 = (with - before) / (connections/1000)",
        targets={"rss_mb_per_1000": 60, "fanout_p99_ms": 1000})
    return result
