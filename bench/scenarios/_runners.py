"""Shared helpers of the multi-process scenarios: scratch database, runner
processes (``python -m covey run bench.apps.bench_app:cluster``), a client-only
caller, shard-lock polling and percentiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

import covey
from covey.core import CoveyConfig

ROOT = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("COVEY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
APP = "bench.apps.bench_app:cluster"
SHARDS = 300
SECRET = "bench-secret"
if str(ROOT) not in sys.path:  # ``bench.apps`` lives under the repo root
    sys.path.insert(0, str(ROOT))
bench_app: Any = importlib.import_module("bench.apps.bench_app")
Bench = bench_app.Bench
LOCKS_SQL = (
    "SELECT pid, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " GROUP BY pid"
)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    base, _, rest = url.rpartition("/")
    query = "?" + rest.split("?", 1)[1] if "?" in rest else ""
    return f"{base}/{name}{query}"


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def server_settings() -> dict[str, str]:
    conn = await asyncpg.connect(SERVER)
    try:
        return {s: await conn.fetchval(f"SHOW {s}")
                for s in ("server_version", "synchronous_commit", "fsync")}
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A fresh database on ``COVEY_TEST_DATABASE_URL``, dropped on exit."""
    name = f"covey_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(SERVER)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(SERVER, name)
    finally:
        admin = await asyncpg.connect(SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


# ---- runner processes ----------------------------------------------------


@dataclass
class Runner:
    """One ``covey run`` process; its output lines are kept with arrival times."""

    process: asyncio.subprocess.Process
    address: str = ""
    lines: list[tuple[float, str]] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            self.process.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    def log_after(self, wall: float) -> list[tuple[float, str]]:
        """(log timestamp, line) of every logging line stamped after ``wall``."""
        out = []
        for _, line in self.lines:
            stamp = _log_time(line)
            if stamp is not None and stamp >= wall:
                out.append((stamp, line.rstrip()))
        return out


def _log_time(line: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def runner_env(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "COVEY_DATABASE_URL": url,
        "COVEY_SHARDS": str(SHARDS),
        "COVEY_CLUSTER_SECRET": SECRET,
        "COVEY_RUNNER_PORT": "0",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    return env


async def start_runner(url: str, timeout: float = 30, app: str = APP) -> Runner:
    """Start a runner of ``app`` and return once it prints ``covey runner HOST:PORT ready``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "covey", "run", app, "--log-level", "INFO",
        cwd=ROOT, env=runner_env(url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    runner = Runner(process)
    try:
        await asyncio.wait_for(_read_until_ready(runner), timeout)
    except (TimeoutError, RuntimeError) as exc:
        runner.signal(signal.SIGKILL)
        await runner.wait()
        output = "".join(t for _, t in runner.lines)
        raise RuntimeError(f"runner did not start:\n{output}") from exc
    runner.pump = asyncio.create_task(_pump(runner))
    return runner


async def _read_until_ready(runner: Runner) -> None:
    assert runner.process.stdout is not None
    while True:
        raw = await runner.process.stdout.readline()
        if not raw:
            raise RuntimeError("runner exited")
        line = raw.decode(errors="replace")
        runner.lines.append((time.time(), line))
        if line.startswith("covey runner ") and " ready" in line:
            runner.address = line.split()[2]
            return


async def _pump(runner: Runner) -> None:
    assert runner.process.stdout is not None
    async for raw in runner.process.stdout:
        runner.lines.append((time.time(), raw.decode(errors="replace")))


async def stop_runners(runners: Sequence[Runner]) -> None:
    """SIGKILL whatever still runs and reap it."""
    for runner in runners:
        runner.signal(signal.SIGKILL)
    for runner in runners:
        with contextlib.suppress(Exception):
            await runner.wait(10)
        if runner.pump is not None:
            runner.pump.cancel()


# ---- the caller ----------------------------------------------------------


def caller_config(url: str) -> CoveyConfig:
    return CoveyConfig(database_url=url, shards=SHARDS, cluster_secret=SECRET)


@contextlib.asynccontextmanager
async def cluster_of_two(
    url: str, app: str = APP
) -> AsyncIterator[tuple[list[Runner], covey.Cluster]]:
    """Two runner processes of ``app`` and a client-only caller, balanced; torn
    down on exit."""
    runners: list[Runner] = []
    try:
        runners.append(await start_runner(url, app=app))  # the first one migrates the schema
        runners.append(await start_runner(url, app=app))
        async with covey.Cluster(caller_config(url), client_only=True) as caller:
            conn = await asyncpg.connect(url)
            try:
                await wait_balanced(conn, caller, runners)
            finally:
                await conn.close()
            yield runners, caller
    finally:
        await stop_runners(runners)


async def shard_locks(conn: asyncpg.Connection) -> dict[int, int]:
    """Advisory locks held in this database, per backend pid."""
    return {r["pid"]: r["n"] for r in await conn.fetch(LOCKS_SQL)}


def live_addresses(caller: covey.Cluster) -> set[str]:
    return {str(r.address) for r in caller.sharding.live}


async def wait_balanced(conn: asyncpg.Connection, caller: covey.Cluster,
                        runners: Sequence[Runner], timeout: float = 60) -> float:
    """Until the caller sees exactly ``runners`` and each holds its shards."""
    want = {r.address for r in runners}

    async def balanced() -> bool:
        if live_addresses(caller) != want:
            return False
        locks = await shard_locks(conn)
        return len(locks) == len(runners) and sum(locks.values()) == SHARDS

    return await wait_until(balanced, timeout)


async def wait_until(predicate: Callable[[], Any], timeout: float,
                     interval: float = 0.02) -> float:
    """Poll ``predicate`` (sync or async); return the seconds it took."""
    started = time.monotonic()
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)
