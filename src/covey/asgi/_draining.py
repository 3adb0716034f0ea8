"""The SIGTERM sequence of a web pod: stop being ready, keep serving, then exit.

Kubernetes removes a terminating pod from its Service *while* it sends SIGTERM,
so for a few seconds requests still arrive. uvicorn has no delayed shutdown: on
SIGTERM it stops accepting connections at once. :func:`drain_on_sigterm` puts
the missing step in front of it::

    SIGTERM ─┬─ readiness 503 at once, shards handed to the peers (cluster.drain())
             ├─ keep serving for drain_delay seconds (match the preStop sleep)
             └─ then uvicorn's own shutdown: stop accepting, finish in-flight
                requests (--timeout-graceful-shutdown); the lifespan shutdown
                stops the cluster: it deregisters and releases what is
                left; exit 0

The runner stays registered (serving nothing) until the lifespan shutdown: its
registration holds its snowflake machine id, which a pod starting meanwhile
could otherwise take while this one still makes ids (see
:meth:`covey.Cluster.drain`).

It chains the SIGTERM handler the server installed before the lifespan started
(uvicorn sets its handlers with ``signal.signal`` before running the lifespan
startup; see ``uvicorn.Server.capture_signals``), and restores it on exit. A
second SIGTERM during the delay skips the rest of it. Under uvicorn the exit is
asked for with ``server.should_exit`` (what uvicorn's own handler sets) rather
than by calling its handler, which would make uvicorn re-raise the signal after
shutting down and the process end with status -15 instead of 0. SIGINT (Ctrl+C)
is left to the server: it stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType
from typing import Any, Protocol

log = logging.getLogger("covey.asgi")

Handler = Callable[[int, FrameType | None], Any] | int | None


class DrainingCluster(Protocol):
    """What the SIGTERM sequence needs of a :class:`covey.Cluster`."""

    def drain(self) -> Awaitable[None]: ...


class _Drainer:
    def __init__(self, cluster: DrainingCluster, delay: float) -> None:
        self._cluster = cluster
        self._delay = delay
        self._loop = asyncio.get_running_loop()
        self._previous: Handler = None
        self._task: asyncio.Task[None] | None = None
        self._drained: asyncio.Task[None] | None = None
        self._exit_asked = False

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            log.info("not in the main thread: no SIGTERM drain sequence (tests, threads)")
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def restore(self) -> None:
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        if self._task is not None:  # a second SIGTERM: no more waiting
            log.warning("second SIGTERM: shutting down without the rest of the drain delay")
            self._loop.call_soon_threadsafe(self._ask_exit)
            return
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._sequence(), name="covey-sigterm-drain")

    async def _sequence(self) -> None:
        log.warning("SIGTERM: not ready any more; serving requests for %.1f s more "
                    "(drain delay), then shutting down", self._delay)
        self._drained = self._loop.create_task(self._drain(), name="covey-drain")
        await asyncio.sleep(self._delay)
        self._ask_exit()

    async def _drain(self) -> None:
        try:
            await self._cluster.drain()
        except Exception:  # the lifespan shutdown still stops the cluster
            log.warning("draining the cluster on SIGTERM failed", exc_info=True)

    def _ask_exit(self) -> None:
        if self._exit_asked:
            return
        self._exit_asked = True
        previous = self._previous
        server = getattr(previous, "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            log.info("drain delay over: asking the server to shut down")
            server.should_exit = True  # uvicorn: graceful shutdown, then exit 0
        elif callable(previous):
            previous(signal.SIGTERM, None)
        else:  # no server handler: what SIGTERM would have done without covey
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signal.SIGTERM)

    async def close(self) -> None:
        self.restore()
        for task in (self._task, self._drained):
            if task is None:
                continue
            if task is self._task:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # the drain step finishes before the cluster stops


@contextlib.asynccontextmanager
async def drain_on_sigterm(cluster: DrainingCluster, *, drain_delay: float) -> AsyncIterator[None]:
    """While inside, SIGTERM runs the drain sequence (module docstring) before the
    server's own shutdown. Enter it in the lifespan, after the cluster started.

    Args:
        cluster: a started :class:`covey.Cluster`.
        drain_delay: seconds to keep serving after SIGTERM (match the preStop sleep;
            0 drains and shuts down at once).
    """
    drainer = _Drainer(cluster, drain_delay)
    drainer.install()
    try:
        yield
    finally:
        await drainer.close()
