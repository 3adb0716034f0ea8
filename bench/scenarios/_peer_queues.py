"""The peer job queues of the ``peers`` scenario: procrastinate, pgqueuer, Celery.

Each :class:`Peer` knows how to prepare its store, start its worker processes
(``bench.apps.peer_workers``), enqueue a batch or one job, and count finished
jobs. :func:`measure_peer` runs the same two measurements on every peer that
``jobs-throughput`` and ``jobs-latency`` run on covey. See ``peers.py`` for the
settings and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from ._runners import ROOT, log, percentile

BATCH = 500
IN_FLIGHT = 4
POLL = 0.05
WORKERS = 2
REDIS_URL = os.environ.get("COVEY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


class Stamps(asyncio.DatagramProtocol):
    """The UDP sink of the workers' datagrams: ``done`` counts, ``n t`` stamps."""

    def __init__(self) -> None:
        self.done = 0
        self.stamps: dict[int, float] = {}
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data == b"done":
            self.done += 1
            return
        n, t = data.split()
        self.stamps[int(n)] = float(t)
        self.arrived.set()


@contextlib.asynccontextmanager
async def stamp_sink() -> AsyncIterator[tuple[Stamps, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # room for every datagram of a run even if this loop falls behind
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Stamps, sock=sock)
    try:
        yield protocol, sock.getsockname()[1]
    finally:
        transport.close()


class Peer:
    """One peer queue on its own scratch store."""

    name = ""
    concurrency = 0
    ready_marker = "peer worker ready"

    def __init__(self, url: str, stamps: Stamps) -> None:
        self.url = url
        self.stamps = stamps

    async def setup(self) -> None:
        raise NotImplementedError

    async def teardown(self) -> None:
        raise NotImplementedError

    async def enqueue(self, ns: Sequence[int], task: str) -> None:
        raise NotImplementedError

    async def finished(self) -> int:
        raise NotImplementedError

    def worker_env(self, port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"BENCH_PEER_URL": self.url, "BENCH_STAMP_PORT": str(port),
                    "BENCH_PEER_CONCURRENCY": str(self.concurrency),
                    "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
        return env


class Procrastinate(Peer):
    name = "procrastinate"
    concurrency = 10

    async def setup(self) -> None:
        import procrastinate

        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(
            conninfo=self.url, min_size=2, max_size=IN_FLIGHT + 1))
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        self.conn = await asyncpg.connect(self.url)

    async def teardown(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.conn.close()
            await self.app.close_async()

    async def enqueue(self, ns: Sequence[int], task: str) -> None:
        deferrer = self.app.configure_task(task)
        if len(ns) == 1:
            await deferrer.defer_async(n=ns[0])
        else:
            kwargs: list[dict[str, Any]] = [{"n": n} for n in ns]
            await deferrer.batch_defer_async(*kwargs)

    async def finished(self) -> int:
        return int(await self.conn.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"))


class Pgqueuer(Peer):
    name = "pgqueuer"
    concurrency = 10

    async def setup(self) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = await asyncpg.connect(self.url)
        await Queries(AsyncpgDriver(self.conn)).install()
        # the enqueue connections: one per batch in flight, like the others' pools
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=IN_FLIGHT)
        self.enqueued = 0

    async def teardown(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.pool.close()
            await self.conn.close()

    async def enqueue(self, ns: Sequence[int], task: str) -> None:
        from pgqueuer import AsyncpgDriver, Queries

        async with self.pool.acquire() as conn:
            await Queries(AsyncpgDriver(conn)).enqueue(
                [task] * len(ns), [str(n).encode() for n in ns], [0] * len(ns))
        self.enqueued += len(ns)

    async def finished(self) -> int:
        # pgqueuer deletes a job's row when it completes (and logs it elsewhere)
        left = await self.conn.fetchval("SELECT count(*) FROM pgqueuer")
        return self.enqueued - int(left)


class CeleryPeer(Peer):
    name = "celery"
    concurrency = 10
    ready_marker = " ready."

    async def setup(self) -> None:
        from celery import Celery  # type: ignore[import-untyped]

        self.queue = f"covey-bench-{uuid.uuid4().hex[:8]}"
        self.app = Celery("bench", broker=self.url)
        self.app.conf.update(task_ignore_result=True, task_default_queue=self.queue)
        self.base = 0

    async def teardown(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.delete(self.queue, f"_kombu.binding.{self.queue}", "unacked",
                          "unacked_index", "unacked_mutex", "_kombu.binding.celery.pidbox")
        finally:
            client.close()
        with contextlib.suppress(AttributeError):
            self.app.close()

    def worker_env(self, port: int) -> dict[str, str]:
        env = super().worker_env(port)
        env["BENCH_PEER_QUEUE"] = self.queue
        return env

    async def enqueue(self, ns: Sequence[int], task: str) -> None:
        def send() -> None:
            # Celery has no batch enqueue: one message per task, all through one
            # producer connection (its docs' way to send many).
            with self.app.producer_or_acquire() as producer:
                for n in ns:
                    self.app.send_task(task, args=(n,), producer=producer)

        await asyncio.to_thread(send)

    async def finished(self) -> int:
        return self.stamps.done - self.base


PEERS: dict[str, type[Peer]] = {"procrastinate": Procrastinate, "pgqueuer": Pgqueuer,
                                "celery": CeleryPeer}
MODULES = {"procrastinate": "procrastinate", "pgqueuer": "pgqueuer", "celery": "celery"}


async def start_worker(peer: Peer, port: int, timeout: float = 30) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.apps.peer_workers", peer.name, cwd=ROOT,
        env=peer.worker_env(port), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []

    async def until_ready() -> None:
        assert process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                raise RuntimeError("worker exited:\n" + "".join(lines))
            lines.append(raw.decode(errors="replace"))
            if peer.ready_marker in lines[-1]:
                return

    try:
        await asyncio.wait_for(until_ready(), timeout)
    except BaseException:
        await stop_workers([process])
        raise
    return process


async def drain(process: asyncio.subprocess.Process) -> None:
    """Read (and drop) the worker's output, so a full pipe never blocks it."""
    assert process.stdout is not None
    while await process.stdout.read(65536):
        pass


async def stop_workers(processes: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGKILL each worker's process group (Celery's prefork children too)."""
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 10)


async def wait_finished(peer: Peer, target: int, started: float, limit: float = 600) -> None:
    while await peer.finished() < target:
        if time.monotonic() - started > limit:
            raise TimeoutError(f"{peer.name}: only {await peer.finished()} of {target} done")
        await asyncio.sleep(POLL)


async def throughput(peer: Peer, total: int, warm: int) -> dict[str, Any]:
    await peer.enqueue(range(-warm, 0), "noop")  # warm-up, as for covey
    await wait_finished(peer, warm, time.monotonic())
    base = await peer.finished()
    batches = [list(range(i, min(i + BATCH, total))) for i in range(0, total, BATCH)]
    started = time.monotonic()

    async def submitter() -> None:
        while batches:
            await peer.enqueue(batches.pop(), "noop")

    await asyncio.gather(*(submitter() for _ in range(IN_FLIGHT)))
    submit_s = time.monotonic() - started
    await wait_finished(peer, base + total, started)
    elapsed = time.monotonic() - started
    return {"jobs_per_s": round(total / elapsed), "elapsed_s": round(elapsed, 3),
            "submit_jobs_per_s": round(total / submit_s)}


async def latency(peer: Peer, count: int, warmup: int) -> dict[str, Any]:
    stamps = peer.stamps
    starts: list[float] = []
    for n in range(-warmup, count):
        stamps.arrived.clear()
        before = time.time()
        await peer.enqueue([n], "stamp")
        deadline = time.monotonic() + 30
        while n not in stamps.stamps:
            await asyncio.wait_for(stamps.arrived.wait(), max(0.0, deadline - time.monotonic()))
            stamps.arrived.clear()
        if n >= 0:
            starts.append(stamps.stamps[n] - before)
    return {"start_p50_ms": round(percentile(starts, 0.5) * 1000, 2),
            "start_p99_ms": round(percentile(starts, 0.99) * 1000, 2),
            "start_max_ms": round(max(starts) * 1000, 2)}


async def measure_peer(name: str, url: str, total: int, count: int, warmup: int,
                       warm: int) -> dict[str, Any]:
    """Throughput then latency of one peer, with ``WORKERS`` worker processes on
    ``url`` (a scratch database, or the Redis URL for celery)."""
    async with stamp_sink() as (stamps, port):
        peer = PEERS[name](url, stamps)
        workers: list[asyncio.subprocess.Process] = []
        drains: list[asyncio.Task[None]] = []
        try:
            await peer.setup()
            for _ in range(WORKERS):
                workers.append(await start_worker(peer, port))
                drains.append(asyncio.create_task(drain(workers[-1])))
            log(f"{name}: {total} jobs ({BATCH} a batch, {IN_FLIGHT} in flight), then "
                f"{count} one at a time...")
            result = await throughput(peer, total, warm)
            result.update(await latency(peer, count, warmup))
        finally:
            await stop_workers(workers)
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)
            await peer.teardown()
    log(f"  {name}: {result}")
    return result
