"""Shared parts of the real-time scenarios: uvicorn pods of
``bench.apps.realtime_bench_app`` on a scratch database, and small figures.

Each pod is ``python -m uvicorn ... --http httptools --ws websockets`` with a
runner embedded (30 shards: the real-time paths use no shard; fewer locks to
settle), its output in a log file of a temporary directory (shown when it fails
to start). :func:`pods` starts them, waits for ``/readyz`` and for the shards to
settle, and SIGKILLs whatever still runs on exit, failure included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ._runners import ROOT, SECRET, log, percentile, shard_locks, wait_until

APP = "bench.apps.realtime_bench_app:make_app"
SHARDS = 30


@dataclass
class Pod:
    """One uvicorn process of the benchmark app."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_nofile() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (children
    inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_pod(name: str, url: str, workdir: Path, **env: str) -> Pod:
    """Start a pod (not waiting for it)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    environment.update({
        "COVEY_DATABASE_URL": url,
        "COVEY_SHARDS": str(SHARDS),
        "COVEY_CLUSTER_SECRET": SECRET,
        "COVEY_RUNNER_HOST": "127.0.0.1",
        "COVEY_RUNNER_PORT": "0",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **env,
    })
    path = workdir / f"{name}.log"
    with path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", APP, "--factory", "--host", "127.0.0.1",
             "--port", str(port), "--http", "httptools", "--ws", "websockets",
             "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    return Pod(name, port, process, path)


async def wait_ready(pod: Pod, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(pod.http + "/readyz", timeout=2)).status_code == 200:
                    return
            if not pod.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{pod.name} did not become ready:\n{pod.output()}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def pods(url: str, names: Sequence[str], **env: str) -> AsyncIterator[list[Pod]]:
    """Pods of the app on database ``url``, ready and holding their shards;
    SIGKILLed on exit."""
    with tempfile.TemporaryDirectory(prefix="covey-rt-bench-") as workdir:
        started: list[Pod] = []
        try:
            for name in names:  # one after the other: the first one migrates
                started.append(start_pod(name, url, Path(workdir), **env))
                await wait_ready(started[-1])
            conn = await asyncpg.connect(url)
            try:
                async def settled() -> bool:
                    locks = await shard_locks(conn)
                    return len(locks) == len(started) and sum(locks.values()) == SHARDS

                await wait_until(settled, 60, interval=0.1)
            finally:
                await conn.close()
            yield started
        except BaseException:
            for pod in started:
                if pod.alive:
                    continue
                log(f"{pod.name} exited {pod.process.returncode}:\n{pod.output()}")
            raise
        finally:
            for pod in started:
                pod.kill()


async def get_json(pod: Pod, path: str, *, method: str = "GET",
                   timeout: float = 120) -> dict[str, Any]:
    """One request to ``pod``; its JSON answer."""
    async with httpx.AsyncClient(timeout=timeout) as http:
        response = await http.request(method, pod.http + path)
        response.raise_for_status()
        return dict(response.json())


async def rss_mib(pod: Pod) -> float:
    return round(float((await get_json(pod, "/rss"))["rss_kib"]) / 1024, 1)


def ms(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (seconds), in milliseconds."""
    return round(percentile(samples, q) * 1000, 2) if samples else float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from ``/proc`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
