"""The peer queues' worker processes of the ``peers`` benchmark.

``python -m bench.apps.peer_workers SYSTEM`` (cwd = repo root, the repo root on
``PYTHONPATH``) runs one worker of SYSTEM until killed, configured by
environment variables:

* ``BENCH_PEER_URL``: the scratch PostgreSQL database (procrastinate,
  pgqueuer) or the Redis broker URL (celery);
* ``BENCH_PEER_QUEUE``: the queue name (celery);
* ``BENCH_PEER_CONCURRENCY``: jobs one worker runs at a time;
* ``BENCH_STAMP_PORT``: a UDP port on 127.0.0.1 where the bench process counts
  datagrams.

Each system declares the same two jobs as ``bench.apps.jobs_bench_app``:

* ``noop``: does nothing (throughput). Celery's also sends one datagram ``done``,
  because Celery keeps no durable record of a finished task without a result
  backend (the PostgreSQL queues' completions are counted in their tables).
* ``stamp``: sends ``"<n> <time.time()>"`` taken first thing in the handler
  (latency: the bench compares it with its own ``time.time()`` before the
  enqueue call; same machine, same clock).

The worker prints ``peer worker ready`` on stdout once it is about to serve
(Celery's own ``ready.`` log line plays that part for celery).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from typing import Any

URL = os.environ.get("BENCH_PEER_URL", "")
QUEUE = os.environ.get("BENCH_PEER_QUEUE", "bench")
CONCURRENCY = int(os.environ.get("BENCH_PEER_CONCURRENCY", "10"))
STAMP_TO = ("127.0.0.1", int(os.environ.get("BENCH_STAMP_PORT", "9")))
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def send_stamp(n: int) -> None:
    """The stamp datagram: ``n`` and ``time.time()`` on entry."""
    _sock.sendto(f"{n} {time.time()!r}".encode(), STAMP_TO)


def ready() -> None:
    print("peer worker ready", flush=True)


async def procrastinate_worker() -> None:
    import procrastinate

    # A pool as big as the concurrency, plus the LISTEN connection and one spare
    # (procrastinate's docs: each concurrent sub-worker holds a connection).
    connector = procrastinate.PsycopgConnector(
        conninfo=URL, min_size=2, max_size=CONCURRENCY + 2)
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    async def noop(n: int) -> None:
        return None

    @app.task(name="stamp")
    async def stamp(n: int) -> None:
        send_stamp(n)

    async with app.open_async():
        ready()
        await app.run_worker_async(concurrency=CONCURRENCY, install_signal_handlers=False)


async def pgqueuer_worker() -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, PgQueuer

    conn = await asyncpg.connect(URL)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        send_stamp(int(job.payload or b"0"))

    ready()
    # pgqueuer's default batch_size=10; a cap on jobs in flight close to the other
    # systems' (pgqueuer refuses a cap below twice the batch size, hence 20).
    await pgq.run(max_concurrent_tasks=max(CONCURRENCY, 20))


def celery_worker() -> None:
    from celery import Celery  # type: ignore[import-untyped]

    app = Celery("bench", broker=URL)
    app.conf.update(
        task_ignore_result=True,  # no result backend: nothing reads results
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="noop")  # type: ignore[untyped-decorator]
    def noop(n: int) -> None:
        _sock.sendto(b"done", STAMP_TO)

    @app.task(name="stamp")  # type: ignore[untyped-decorator]
    def stamp(n: int) -> None:
        send_stamp(n)

    pool = os.environ.get("BENCH_CELERY_POOL", "threads")
    app.worker_main(["worker", f"--pool={pool}", f"--concurrency={CONCURRENCY}",
                     "--loglevel=INFO", "--without-gossip", "--without-mingle",
                     "--without-heartbeat", f"--queues={QUEUE}"])


def main(argv: list[str]) -> int:
    system = argv[1]
    runners: dict[str, Any] = {"procrastinate": procrastinate_worker,
                               "pgqueuer": pgqueuer_worker}
    if system == "celery":
        celery_worker()
    else:
        asyncio.run(runners[system]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
