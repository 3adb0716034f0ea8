"""SSE cross-pod latency: publish on pod A -> receipt by 20 SSE clients on pod B.

Two uvicorn pods of ``bench.apps.realtime_bench_app`` (runner embedded, one
scratch PostgreSQL database). The bench process holds ``CLIENTS`` SSE
connections to pod B's ``GET /streams/latency`` (lean protocol clients,
:class:`bench.apps.realtime_clients.SseReader`: the receipt time is
``time.time()`` in ``data_received``). One ``POST /publish`` to pod A publishes
``N`` items at ``RATE`` per second from inside pod A, each stamped
``sent_at = time.time()`` right before its ``cluster.streams.publish`` (no HTTP
client in the measured path; same machine, same clock).

* ``p50_ms`` / ``p99_ms`` / ``max_ms``: receipt - ``sent_at`` over every
  (item, client) pair (targets 5 / 20): A stores the item (PostgreSQL), pushes
  it over the runner mesh to B, B writes it to its 20 responses.
* ``baseline_*``: the same series published on pod B itself (no mesh hop),
  right after: what the cross-pod hop adds is the difference.
* ``publish_p50_ms``: the ``publish`` call on A alone (store + push).
* ``complete``: every client received every item once, in order.

First ``WARMUP`` items are published on A and received (routes cached,
connections open, code hot).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING, Any

from ._realtime import Pod, get_json, ms, pods
from ._runners import log, scratch_database, server_settings

if TYPE_CHECKING:
    from bench.apps.realtime_clients import SseReader

STREAM = "latency"
CLIENTS = 20
RATE = 100.0
WARMUP = 50


def items_of(reader: SseReader, phase: str) -> list[tuple[int, float, float]]:
    """(n, sent_at, received) of the reader's items of ``phase``, in arrival order."""
    out = []
    for received, data in reader.events:
        item = json.loads(data)
        if item["phase"] == phase:
            out.append((item["n"], item["sent_at"], received))
    return out


async def series(pod: Pod, readers: list[SseReader], phase: str, count: int,
                 rate: float) -> dict[str, Any]:
    """Publish ``count`` items on ``pod``; wait until every reader has them."""
    marks = [len(r.events) for r in readers]
    answer = await get_json(
        pod, f"/publish?stream={STREAM}&count={count}&rate={rate:g}&phase={phase}",
        method="POST")
    deadline = time.monotonic() + 30
    while any(len(r.events) - m < count for r, m in zip(readers, marks, strict=True)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    lags: list[float] = []
    complete = True
    for reader in readers:
        items = items_of(reader, phase)
        complete = complete and [n for n, _, _ in items] == list(range(count))
        lags.extend(received - sent for _, sent, received in items)
    return {"lags": lags, "complete": complete, "calls": answer["calls"]}


async def measure(url: str, count: int) -> dict[str, Any]:
    from bench.apps.realtime_clients import close_sse, open_sse  # the repo root is on the path now

    async with pods(url, ["pod-a", "pod-b"]) as (pod_a, pod_b):
        readers = await open_sse(pod_b.port, f"/streams/{STREAM}", CLIENTS)
        try:
            await series(pod_a, readers, "warmup", WARMUP, RATE)
            log(f"{CLIENTS} SSE clients on pod B; {count} items at {RATE:g}/s published on "
                "pod A, then the same on pod B...")
            cross = await series(pod_a, readers, "cross", count, RATE)
            local = await series(pod_b, readers, "local", count, RATE)
        finally:
            await close_sse(readers)
    lags = cross["lags"]
    log(f"  cross-pod: {len(lags)} samples, p50 {ms(lags, 0.5)} ms, p99 {ms(lags, 0.99)} ms; "
        f"same pod: p50 {ms(local['lags'], 0.5)} ms")
    return {
        "p50_ms": ms(lags, 0.5), "p99_ms": ms(lags, 0.99), "max_ms": ms(lags, 1.0),
        "samples": len(lags), "expected_samples": count * CLIENTS,
        "complete": cross["complete"] and local["complete"],
        "baseline_p50_ms": ms(local["lags"], 0.5), "baseline_p99_ms": ms(local["lags"], 0.99),
        "baseline_max_ms": ms(local["lags"], 1.0), "baseline_samples": len(local["lags"]),
        "publish_p50_ms": ms(cross["calls"], 0.5), "publish_p99_ms": ms(cross["calls"], 0.99),
    }


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    count = 300 if quick else 3000
    async with scratch_database() as url:
        result = await measure(url, count)
    result.update(
        scenario="sse-latency", quick=quick, pods=2, clients=CLIENTS, items=count,
        rate_per_s=RATE, warmup=WARMUP, cpus=os.cpu_count(), postgres=settings,
        client="lean asyncio protocol in the bench process, receipt stamped in data_received",
        baseline="the same series published on pod B, where the clients are (no mesh hop)",
        clock="sent_at: time.time() on pod A before publish; receipt: time.time() in the "
              "bench process; same machine",
        targets={"p50_ms": 5, "p99_ms": 20})
    return result
