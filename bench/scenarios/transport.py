"""The runner-to-runner transport alone, between two processes (no database).

An echo :class:`~covey.sharding.TcpTransport` runs in a child
process; this process is a client-only caller sending a small request body (the
size of a volatile entity call) over the one shared connection.

* ``p50_ms`` / ``p99_ms``: sequential requests (concurrency 1) after a warm-up.
* ``calls_per_s``: 64 concurrent callers over a fixed window.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import msgpack

from covey.core import RunnerAddress, TransportOptions
from covey.sharding import TcpTransport

from ._runners import log, percentile

SECRET = "bench"
BODY = {"k": "req", "e": "Account/acct-42", "t": "balance_of", "p": b"\x01" * 64}
CONCURRENCY = 64

# The echo server: prints its port, serves until its stdin is closed.
_SERVER = r"""
import asyncio, sys
from covey.core import TransportOptions
from covey.sharding import TcpTransport

async def main():
    async def on_request(caller, body):
        return body
    async def on_notify(caller, body):
        return None
    server = TcpTransport("127.0.0.1", 0, secret=sys.argv[1], options=TransportOptions())
    address = await server.start(on_request, on_notify)
    print(address.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()

asyncio.run(main())
"""


async def latency(client: TcpTransport, peer: RunnerAddress, count: int) -> dict[str, Any]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await client.request(peer, BODY, timeout=5.0)
        samples.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(samples, 0.5), 3),
            "p99_ms": round(percentile(samples, 0.99), 3), "latency_samples": count}


async def throughput(client: TcpTransport, peer: RunnerAddress,
                     window: float) -> dict[str, Any]:
    completed = 0
    end = time.perf_counter() + window

    async def caller() -> None:
        nonlocal completed
        while time.perf_counter() < end:
            await client.request(peer, BODY, timeout=5.0)
            completed += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return {"calls_per_s": round(completed / elapsed, 1), "calls": completed}


async def run(quick: bool) -> dict[str, Any]:
    count, warmup, window = (1000, 500, 2.0) if quick else (5000, 2000, 10.0)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, SECRET,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=TransportOptions())
    try:
        async with asyncio.timeout(30):
            peer = RunnerAddress("127.0.0.1", int(await child.stdout.readline()))
        for _ in range(warmup):
            await client.request(peer, BODY, timeout=5.0)
        log(f"transport latency ({count} sequential requests)...")
        result = await latency(client, peer, count)
        log(f"  {result}\ntransport throughput ({window}s window, {CONCURRENCY} callers)...")
        result.update(await throughput(client, peer, window))
        log(f"  {result['calls_per_s']} calls/s")
    finally:
        await client.close()
        child.stdin.close()
        async with asyncio.timeout(30):
            await child.wait()
    result.update(scenario="transport", quick=quick, concurrency=CONCURRENCY,
                  warmup_requests=warmup, window_s=window, cpus=os.cpu_count(),
                  body_bytes=len(msgpack.packb(BODY, use_bin_type=True)))
    return result
