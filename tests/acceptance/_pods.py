"""Web pods of ``examples/fastapi_app.py`` under uvicorn, and a cuttable PostgreSQL link.

- :class:`PgProxy`: a TCP proxy between the pods and PostgreSQL, in a thread of
  its own. :meth:`PgProxy.cut` closes its listening socket (new connections are
  refused) and aborts every open connection (the pods' sessions drop);
  :meth:`PgProxy.restore` listens again on the same port. The machine's
  PostgreSQL server itself is never touched.
- :class:`Pod`: one ``uvicorn examples.fastapi_app:app`` process on a port of
  its own, with a runner embedded, configured by ``COVEY_*`` variables.
- :class:`Balancer`: a load balancer as Kubernetes builds one from readiness:
  it polls every pod's ``/readyz`` and routes only to pods that answered 200;
  a request that gets a 503 is sent again after its ``Retry-After``, one that
  fails to connect (the pod stopped listening) is sent again at once, each time
  to a ready pod (GETs only: they are safe to repeat).

Also used by ``bench/scenarios/readiness.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.fastapi_app:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def via(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    if parts.password:
        user = f"{parts.username}:{parts.password}@"
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, parts.query, ""))


class PgProxy:
    """A TCP proxy to PostgreSQL that can be cut and restored (module docstring)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()

    def url(self, database_url: str) -> str:
        return via(database_url, self.port)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def start(self) -> PgProxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def cut(self) -> None:
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port,
                                                  reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._links.update((writer, up_writer))
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._links.discard(end)
                end.transport.abort()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@dataclass
class Pod:
    """One uvicorn process of the example app."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def pod_env(database_url: str, *, secret: str, shards: int, **extra: str) -> dict[str, str]:
    """A pod's environment on ``database_url``: this process's minus ``COVEY_*``, plus
    the cluster's settings and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVEY_")}
    env.update({"COVEY_DATABASE_URL": database_url, "COVEY_SHARDS": str(shards),
                "COVEY_CLUSTER_SECRET": secret, "COVEY_RUNNER_PORT": "0",
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **extra})
    return env


def start_uvicorn(name: str, app: str, env: dict[str, str], workdir: Path, *,
                  graceful_shutdown: float, factory: bool = False) -> Pod:
    """Start ``uvicorn app`` on a free port (not waiting for it: see
    :func:`wait_ready`); its output goes to ``workdir/<name>.log``."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", app, *(["--factory"] if factory else []),
             "--host", "127.0.0.1", "--port", str(port),
             "--timeout-graceful-shutdown", str(graceful_shutdown), "--no-access-log"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Pod(name, port, process, log)


def start_pod(name: str, database_url: str, workdir: Path, *,
              graceful_shutdown: float = 10, **env: str) -> Pod:
    """Start a pod (not waiting for it: see :func:`wait_ready`)."""
    environment = pod_env(database_url, secret="pods-secret", shards=30,
                          COVEY_SHARDING_SHUTDOWN_GRACE="5", **env)
    return start_uvicorn(name, APP, environment, workdir, graceful_shutdown=graceful_shutdown)


async def probe(http: httpx.AsyncClient, pod: Pod, path: str) -> int:
    """The status of ``GET path`` on ``pod`` (0: no answer)."""
    try:
        return (await http.get(pod.url + path, timeout=2.0)).status_code
    except httpx.HTTPError:
        return 0


async def wait_ready(pods: Sequence[Pod], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        for pod in pods:
            while await probe(http, pod, "/readyz") != 200:
                if pod.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{pod.name} did not become ready:\n{pod.output()}")
                await asyncio.sleep(0.1)


class HttpClient:
    """A minimal HTTP/1.1 client with keep-alive connections per pod.

    httpx costs a few milliseconds of CPU per request; at 200 requests/s on a
    shared 2-core machine the client alone would starve the pods it measures.
    ``GET`` only, ``Content-Length`` bodies (what uvicorn sends for these routes).
    """

    def __init__(self) -> None:
        self._idle: dict[int, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def get(self, pod: Pod, path: str, *,
                  timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)``; ``OSError`` when the connection fails.

        A kept-alive connection the server closed while it sat idle (uvicorn's
        keep-alive timeout) fails before any byte of the answer: like every HTTP
        client, the request is sent again on a new connection.
        """
        idle = self._idle.setdefault(pod.port, [])
        while idle:
            try:
                return await self._on(idle.pop(), pod, path, timeout)
            except ConnectionError as exc:
                stale = exc.__cause__
                if not (isinstance(stale, asyncio.IncompleteReadError) and not stale.partial):
                    raise
        connection = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", pod.port), timeout)
        return await self._on(connection, pod, path, timeout)

    async def _on(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                  pod: Pod, path: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
        reader, writer = connection
        idle = self._idle.setdefault(pod.port, [])
        try:
            async with asyncio.timeout(timeout):
                writer.write(f"GET {path} HTTP/1.1\r\nhost: pod\r\n\r\n".encode())
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            writer.transport.abort()
            raise ConnectionError(f"{type(exc).__name__} from {pod.name}") from exc
        except BaseException:
            writer.transport.abort()
            raise
        if headers.get("connection") == "close":
            writer.transport.abort()
        else:
            idle.append((reader, writer))
        return int(head[0].split()[1]), headers, body

    def close(self) -> None:
        for idle in self._idle.values():
            for _, writer in idle:
                writer.transport.abort()
        self._idle.clear()


@dataclass
class Outcome:
    """What the client of the balancer saw."""

    sent: int = 0
    ok: int = 0
    failed: list[str] = field(default_factory=list)  # final non-2xx / errors
    retries_503: int = 0
    retries_connect: int = 0


class Balancer:
    """Routes to ready pods only; retries per the module docstring.

    Args:
        pods: the pods behind it.
        period: how often each pod's ``/readyz`` is polled.
        attempts: the most tries of one request.
    """

    def __init__(self, pods: Sequence[Pod], *, period: float = 0.5, attempts: int = 10) -> None:
        self.pods = list(pods)
        self.ready = {pod.name: True for pod in pods}
        self.seen: dict[str, list[int]] = {pod.name: [] for pod in pods}  # /readyz statuses
        self.period = period
        self.attempts = attempts
        self.outcome = Outcome()
        self._turn = itertools.count()
        self.http = HttpClient()

    async def poll(self) -> None:
        """Poll readiness until cancelled (run it as a task)."""
        while True:
            for pod in self.pods:
                try:
                    status, _, _ = await self.http.get(pod, "/readyz", timeout=2.0)
                except OSError:
                    status = 0
                self.ready[pod.name] = status == 200
                if not self.seen[pod.name] or self.seen[pod.name][-1] != status:
                    self.seen[pod.name].append(status)
            await asyncio.sleep(self.period)

    def _pick(self, avoid: str | None) -> Pod:
        ready = [p for p in self.pods if self.ready[p.name]] or self.pods
        preferred = [p for p in ready if p.name != avoid] or ready
        return preferred[next(self._turn) % len(preferred)]

    async def get(self, path: str) -> None:
        self.outcome.sent += 1
        avoid: str | None = None
        last = ""
        for _ in range(self.attempts):
            pod = self._pick(avoid)
            try:
                status, headers, body = await self.http.get(pod, path)
            except OSError as exc:  # not listening any more, connection closed
                self.outcome.retries_connect += 1
                last, avoid = f"{pod.name}: {type(exc).__name__}: {exc}", pod.name
                continue
            if status == 503 and "retry-after" in headers:
                self.outcome.retries_503 += 1
                last, avoid = f"{pod.name}: 503 {body[:200]!r}", pod.name
                await asyncio.sleep(float(headers["retry-after"]))
                continue
            if 200 <= status < 300:
                self.outcome.ok += 1
                return
            last = f"{pod.name}: {status} {body[:300]!r}"
            break
        self.outcome.failed.append(last)

    async def close(self) -> None:
        self.http.close()


async def load(balancer: Balancer, rate: float, seconds: float, paths: Sequence[str]) -> None:
    """Send ``rate`` GETs per second for ``seconds``, each on a schedule of its own
    (a slow answer does not slow the rate), and wait for every one."""
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for n in itertools.count():
        at = start + n / rate
        if at - start >= seconds:
            break
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(balancer.get(paths[n % len(paths)])))
    await asyncio.gather(*tasks)
