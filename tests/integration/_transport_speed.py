"""Transport speed between two processes (run by hand; not a test).

    .venv/bin/python tests/integration/_transport_speed.py [seconds-per-phase]

Starts an echo server in a child process and, from this process, measures the p50
latency of sequential requests (concurrency 1) and the throughput with 64
concurrent callers over the one shared connection. Prints JSON.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from covey.core import RunnerAddress, TransportOptions
from covey.sharding._tcp_transport import TcpTransport

SECRET = "bench"
BODY = {"k": "req", "e": "Account/acct-42", "t": "balance_of", "p": b"\x01" * 64}


async def serve() -> None:
    async def on_request(_caller: RunnerAddress | None, body: dict[str, Any]) -> dict[str, Any]:
        return body

    async def on_notify(_caller: RunnerAddress | None, _body: dict[str, Any]) -> None:
        return None

    server = TcpTransport("127.0.0.1", 0, secret=SECRET, options=TransportOptions())
    address = await server.start(on_request, on_notify)
    print(address.port, flush=True)
    # Serve until the parent closes our stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()


async def measure(seconds: float) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    port = int(await child.stdout.readline())
    peer = RunnerAddress("127.0.0.1", port)
    client = TcpTransport("127.0.0.1", 0, secret=SECRET, options=TransportOptions())
    try:
        for _ in range(2000):  # warm up
            await client.request(peer, BODY, timeout=5.0)

        latencies: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            await client.request(peer, BODY, timeout=5.0)
            latencies.append(time.perf_counter() - start)

        count = 0
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await client.request(peer, BODY, timeout=5.0)
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(64)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
        child.stdin.close()
        await child.wait()
    latencies.sort()
    return {
        "c1_p50_ms": round(statistics.median(latencies) * 1000, 3),
        "c1_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "c1_calls": len(latencies),
        "c64_calls_per_s": round(count / elapsed),
    }


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.run(serve())
    else:
        duration = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
        print(json.dumps(asyncio.run(measure(duration))))
