"""Readiness follows the database: two uvicorn pods of ``examples/fastapi_app.py``.

The pods reach a scratch PostgreSQL database through a TCP proxy (the one of
``tests/acceptance/_pods.py``); cutting it refuses new connections and drops the
open ones, as a stopped server does. Three rounds of: cut, wait until both pods
answer ``/readyz`` 503, restore, wait until both answer 200.

* ``readiness_flip_s``: cut to both pods 503, median of the rounds (bound: 5).
* ``ready_again_s``: restore to both pods 200, median of the rounds (bound: 5).
* ``livez_non_200``: ``/livez`` answers other than 200 seen during the rounds (0).
* ``otel_overhead_pct`` (and the rest of its result, prefixed ``otel_``):
  :func:`scenarios.otel_overhead.measure`, tracing on vs off on persisted-RPC
  throughput, in the same run (bound: 25).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ._runners import log, scratch_database, server_settings

ROUNDS = 3
BOUND = 30.0  # seconds: give up on a round (the result then shows it)


async def _until(http: httpx.AsyncClient, pods: list[Any], status: int,
                 livez: list[int]) -> float:
    from tests.acceptance._pods import probe

    start = time.monotonic()
    while time.monotonic() - start < BOUND:
        seen = await asyncio.gather(*(probe(http, pod, "/readyz") for pod in pods))
        livez.extend(await asyncio.gather(*(probe(http, pod, "/livez") for pod in pods)))
        if all(s == status for s in seen):
            return round(time.monotonic() - start, 3)
        await asyncio.sleep(0.05)
    return BOUND


async def flips(quick: bool) -> dict[str, Any]:
    """The readiness rounds (module docstring)."""
    from tests.acceptance._pods import PgProxy, start_pod, wait_ready

    flip: list[float] = []
    again: list[float] = []
    livez: list[int] = []
    async with scratch_database() as url:
        proxy = PgProxy(url).start()
        workdir = Path(tempfile.mkdtemp(prefix="covey-readiness-"))
        pods = [start_pod(name, proxy.url(url), workdir) for name in ("pod-a", "pod-b")]
        try:
            await wait_ready(pods)
            async with httpx.AsyncClient() as http:
                for round_ in range(ROUNDS):
                    await asyncio.sleep(0.5 if quick else 3)  # settled, checks running
                    proxy.cut()
                    flip.append(await _until(http, pods, 503, livez))
                    await asyncio.sleep(0.5 if quick else 3)  # an outage, not a blip
                    proxy.restore()
                    again.append(await _until(http, pods, 200, livez))
                    log(f"round {round_ + 1}: 503 after {flip[-1]} s, 200 again after "
                        f"{again[-1]} s")
        finally:
            for pod in pods:
                pod.stop()
            proxy.close()
    return {
        "readiness_flip_s": statistics.median(flip), "ready_again_s": statistics.median(again),
        "readiness_flip_rounds": flip, "ready_again_rounds": again,
        "livez_non_200": sum(1 for s in livez if s != 200), "pods": 2, "rounds": ROUNDS,
    }


async def otel(quick: bool) -> dict[str, Any]:
    """``otel_overhead.measure``, its keys prefixed (``otel_overhead_pct`` as it is)."""
    from . import otel_overhead

    measured = await otel_overhead.measure(quick)
    return {key if key.startswith("otel_") else f"otel_{key}": value
            for key, value in measured.items()}


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    result = await flips(quick)
    log(f"readiness: {result}")
    result.update(await otel(quick))
    result.update(scenario="readiness", quick=quick, postgres=settings)
    return result
