"""Outgoing webhooks: deliveries per second and send -> receipt latency.

Two runners of ``bench.apps.webhooks_bench_app`` on a scratch PostgreSQL
database (300 shards, library defaults) make the attempts; the bench process, a
client-only member, registers one endpoint (``allow_private=True``,
``concurrency=200`` per runner) and sends. The endpoint is a separate uvicorn
process, ``bench.apps.webhook_receiver_app``, which verifies every request's
signature with ``covey.webhooks.verify`` and records ``time.time()`` on arrival
beside the payload's ``sent`` (the bench's ``time.time()`` before ``send``;
same machine, same clock). Every ``send`` is one message, one delivery job.

1. Warm-up: ``WARMUP`` messages, all received (connections, caches, code hot).
2. Throughput: N messages (1,000 with ``--quick``, 10,000), ``IN_FLIGHT``
   concurrent ``send`` calls. ``deliveries_per_s`` = N / (first send ->
   last receipt). ``send_s``: the sending alone.
3. Latency: ``RATE`` messages per second, paced (not saturating), each send in
   its own task. ``p50_ms``/``p99_ms``/``max_ms``: receipt - ``sent`` of the
   first receipt of each message; ``send_p50_ms``: the ``send`` call alone.

Completion is seen by polling the receiver's ``/stats`` every 50 ms (at most
50 ms on the window, which ends at the last receipt's own stamp anyway).
``retried``/``dead`` come from the delivery jobs' rows; ``duplicates`` and
``bad_signatures`` from the receiver. ``cpu``: CPU seconds of each process and
the machine's busy share during the throughput phase (from ``/proc``).
With ``BENCH_PROFILE_DIR`` set, the runners and the bench process are
profiled (cProfile) over the throughput phase; ``.prof`` files land there.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import covey
from covey.webhooks import generate_secret

from ._runners import (
    ROOT,
    caller_config,
    log,
    percentile,
    scratch_database,
    server_settings,
    start_runner,
    stop_runners,
    wait_balanced,
)

APP = "bench.apps.webhooks_bench_app:cluster"
RECEIVER = "bench.apps.webhook_receiver_app:app"
TYPE = "bench.tick"
WARMUP = 200
IN_FLIGHT = 100
RATE = 200.0
CONCURRENCY = 200
POLL = 0.05
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
JOBS_SQL = """
SELECT count(*) AS jobs, count(*) FILTER (WHERE processed AND NOT reply_is_error) AS delivered,
       count(*) FILTER (WHERE reply_is_error) AS dead,
       count(*) FILTER (WHERE failures > 0) AS retried, coalesce(max(starts), 0) AS max_starts
FROM covey.messages WHERE entity_type = 'covey.Job' AND tag = 'covey.webhook'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_receiver(port: int, secret: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, BENCH_WEBHOOK_SECRET=secret,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", RECEIVER, "--host", "127.0.0.1", "--port", str(port),
        "--lifespan", "off", "--no-access-log", "--log-level", "warning", "--http", "httptools",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL)


async def stop_receiver(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/stats")
    response.raise_for_status()
    return dict(response.json())


async def wait_received(http: httpx.AsyncClient, phase: str, count: int,
                        timeout: float) -> int:
    """Poll ``/stats`` until ``count`` messages of ``phase`` arrived; how many did."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            got = int((await stats(http))["received"].get(phase, 0))
            if got >= count or time.monotonic() > deadline:
                return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"the receiver did not answer in {timeout} s")
        await asyncio.sleep(POLL)


async def rows(http: httpx.AsyncClient, phase: str) -> list[tuple[float, float]]:
    response = await http.get("/records", params={"phase": phase})
    response.raise_for_status()
    return [(sent, received) for sent, received in response.json()["rows"]]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from ``/proc`` (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU so far, from ``/proc/stat``."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def ms(samples: Sequence[float], q: float) -> float:
    return round(percentile(samples, q) * 1000, 2)


class Sender:
    """Sends ``{"phase", "n", "sent"}`` messages through the caller's webhooks."""

    def __init__(self, caller: covey.Cluster) -> None:
        self.webhooks = caller.webhooks

    async def one(self, phase: str, n: int) -> float:
        sent = time.time()
        await self.webhooks.send(TYPE, {"phase": phase, "n": n, "sent": sent})
        return time.time() - sent

    async def flood(self, phase: str, total: int, in_flight: int) -> None:
        numbers = iter(range(total))

        async def worker() -> None:
            for n in numbers:
                await self.one(phase, n)

        await asyncio.gather(*(worker() for _ in range(in_flight)))

    async def paced(self, phase: str, total: int, rate: float) -> list[float]:
        tasks = []
        started = time.monotonic()
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one(phase, n)))
        return list(await asyncio.gather(*tasks))


async def throughput(sender: Sender, http: httpx.AsyncClient, total: int,
                     pids: dict[str, int], runners: Sequence[Any]) -> dict[str, Any]:
    profile = cProfile.Profile() if PROFILE_DIR else None
    if profile is not None:
        for runner in runners:
            runner.signal(signal.SIGUSR1)
        profile.enable()
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    busy_before = machine_busy()
    started_wall, started = time.time(), time.monotonic()
    await sender.flood("throughput", total, IN_FLIGHT)
    send_s = time.monotonic() - started
    got = await wait_received(http, "throughput", total, timeout=300)
    window = time.monotonic() - started
    busy_after = machine_busy()
    cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 2) for name, pid in pids.items()}
    if profile is not None and PROFILE_DIR:
        profile.disable()
        profile.dump_stats(str(Path(PROFILE_DIR) / f"bench-{os.getpid()}.prof"))
        for runner in runners:
            runner.signal(signal.SIGUSR1)
    last = max(received for _, received in await rows(http, "throughput"))
    elapsed = last - started_wall
    total_jiffies = busy_after[1] - busy_before[1]
    cpu["machine_busy"] = round((busy_after[0] - busy_before[0]) / total_jiffies, 2) \
        if total_jiffies else 0.0
    cpu["window_s"] = round(window, 3)
    log(f"  throughput: {got} of {total} received in {elapsed:.2f} s "
        f"(sent in {send_s:.2f} s); cpu {cpu}")
    return {"throughput_sent": total, "throughput_delivered": got,
            "deliveries_per_s": round(got / elapsed, 1), "elapsed_s": round(elapsed, 3),
            "send_s": round(send_s, 3), "sends_per_s": round(total / send_s, 1), "cpu": cpu}


async def latency(sender: Sender, http: httpx.AsyncClient, count: int) -> dict[str, Any]:
    send_calls = await sender.paced("latency", count, RATE)
    got = await wait_received(http, "latency", count, timeout=120)
    lags = [received - sent for sent, received in await rows(http, "latency")]
    log(f"  latency: {got} of {count} received; p50 {ms(lags, 0.5)} ms")
    return {"latency_sent": count, "latency_delivered": got, "rate_per_s": RATE,
            "p50_ms": ms(lags, 0.5), "p99_ms": ms(lags, 0.99), "max_ms": ms(lags, 1.0),
            "send_p50_ms": ms(send_calls, 0.5), "send_p99_ms": ms(send_calls, 0.99)}


async def measure(url: str, total: int, count: int) -> dict[str, Any]:
    port, secret = free_port(), str(generate_secret())
    receiver = await start_receiver(port, secret)
    runners = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            await wait_received(http, "none", 0, timeout=20)  # listening
            runners.append(await start_runner(url, app=APP))  # the first one migrates
            runners.append(await start_runner(url, app=APP))
            async with covey.Cluster(caller_config(url), client_only=True) as caller:
                conn = await asyncpg.connect(url)
                try:
                    await wait_balanced(conn, caller, runners)
                    await caller.webhooks.add_endpoint(
                        f"http://127.0.0.1:{port}/hook", types=TYPE, secret=secret,
                        allow_private=True, concurrency=CONCURRENCY)
                    sender = Sender(caller)
                    log(f"{WARMUP} warm-up messages, then {total} as fast as possible "
                        f"({IN_FLIGHT} sends in flight), then {count} at {RATE:g}/s...")
                    await sender.flood("warmup", WARMUP, 20)
                    await wait_received(http, "warmup", WARMUP, timeout=60)
                    pids = {"receiver": receiver.pid, "bench": os.getpid()}
                    pids.update({f"runner{i}": r.process.pid for i, r in enumerate(runners)})
                    result = await throughput(sender, http, total, pids, runners)
                    result.update(await latency(sender, http, count))
                    jobs = dict(await conn.fetchrow(JOBS_SQL))
                finally:
                    await conn.close()
            final = await stats(http)
    finally:
        await stop_runners(runners)
        await stop_receiver(receiver)
    result.update(
        sent=total + count, delivered=result["throughput_delivered"] + result["latency_delivered"],
        warmup=WARMUP, bad_signatures=final["bad_signatures"], duplicates=final["duplicates"],
        jobs=jobs["jobs"], retried=jobs["retried"], dead=jobs["dead"],
        max_starts=jobs["max_starts"], in_flight=IN_FLIGHT, endpoint_concurrency=CONCURRENCY)
    return result


async def run(quick: bool) -> dict[str, Any]:
    settings = await server_settings()
    async with scratch_database() as url:
        result = await measure(url, 1_000 if quick else 10_000, 200 if quick else 2_000)
    result.update(scenario="webhooks", quick=quick, runners=2, shards=caller_config("x").shards,
                  cpus=os.cpu_count(), postgres=settings,
                  clock="time.time() in the bench and the receiver, same machine",
                  targets={"deliveries_per_s": 1000, "p50_ms": 10})
    return result
