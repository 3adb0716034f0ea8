"""The LISTEN connection that wakes a runner at another process's commit.

A send inside the application's own transaction stores the message through the
application's connection; its ``NOTIFY`` (delivered at commit) wakes the owner
here, so it runs the message at once instead of at its next safety poll.

The connection is kept open for the life of the storage: a lost one (the
database restarted, the session was terminated, the network dropped it) is
noticed through asyncpg's termination callback or a periodic bounded health
check, and reopened with backoff and jitter. Notifications sent while it was
down are gone, so after every reconnect the callbacks are called with ``None``:
read every shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from covey.core import Clock, ClusterError, ShardId, StorageOptions, metrics
from covey.core.runtime import sleep_or_wake
from covey.storage.postgres._errors import translated
from covey.storage.postgres._sessions import KEEPALIVE_SETTINGS, client_keepalive

log = logging.getLogger("covey.storage")

#: How often an open listener proves it still works (one round trip).
HEALTH_INTERVAL = 5.0
#: The first and the longest pause between two reconnect attempts.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 2.0

Wakeup = Callable[[ShardId | None], None]
Connect = Callable[[str], Awaitable[Any]]


class PostgresWakeups:
    """One LISTEN connection on ``channel``, reopened whenever it is lost.

    Args:
        url: the database URL.
        channel: the NOTIFY channel (one per schema).
        options: storage options (connect and lock timeouts bound every wait).
        clock: paces the health checks and the reconnect backoff.
        name: the connection's ``application_name`` (asked at each connect and
            health check, so a name learned later is applied).
        connect: opens a connection given its name (tests replace it).
    """

    def __init__(
        self, url: str, channel: str, options: StorageOptions, clock: Clock,
        name: Callable[[], str], *, connect: Connect | None = None,
    ) -> None:
        self._url = url
        self._channel = channel
        self._options = options
        self._clock = clock
        self._name = name
        self._open = connect or self._open_asyncpg
        self._callbacks: list[Wakeup] = []
        self._conn: Any = None
        self._lost = False
        self._wake = asyncio.Event()  # a loss, or a health check wanted now
        self._task: asyncio.Task[None] | None = None
        #: completed reconnects since start (observability and tests)
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        """Whether wake-ups arrive now."""
        return self._conn is not None and not self._conn.is_closed()

    async def listen(self, callback: Wakeup) -> None:
        """Add ``callback``; the first call connects (failing loudly if it cannot)."""
        self._callbacks.append(callback)
        if self._task is not None:
            return
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name="covey-wakeup-listener")

    def recheck(self) -> None:
        """Run the health check now (it also applies a new name)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop listening and reconnecting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._drop()
        self._callbacks.clear()

    # ---- the connection ------------------------------------------------------

    async def _open_asyncpg(self, name: str) -> Any:
        conn = await asyncpg.connect(
            self._url, timeout=self._options.connect_timeout,
            server_settings={**KEEPALIVE_SETTINGS, "application_name": name},
        )
        client_keepalive(conn)
        return conn

    async def _connect(self) -> None:
        timeout = self._options.connect_timeout
        with translated("listening for wake-ups"):
            # asyncpg bounds the connect itself; this also bounds what follows
            conn = await asyncio.wait_for(self._open(self._name()), timeout + 1)
            try:
                conn.add_termination_listener(self._terminated)
                await asyncio.wait_for(conn.add_listener(self._channel, self._deliver), timeout)
            except BaseException:
                conn.terminate()
                raise
        self._conn = conn
        self._lost = False
        metrics.WAKEUP_LISTENER_UP.set(1)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        metrics.WAKEUP_LISTENER_UP.set(0)
        if conn is not None and not conn.is_closed():
            conn.terminate()

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:  # not one dropped on purpose
            self._lost = True
            self._wake.set()

    async def _healthy(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        name = self._name()
        try:
            if conn.get_settings().application_name != name:
                query = conn.execute("SELECT set_config('application_name', $1, false)", name)
            else:
                query = conn.execute("SELECT 1")
            await asyncio.wait_for(query, self._options.lock_timeout)
        except Exception as exc:  # a hung or broken connection: reopen it
            log.warning("wake-up listener failed its health check: %s: %s",
                        type(exc).__name__, exc)
            return False
        return True

    # ---- the loop ------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while True:
            if self.connected and not self._lost:
                await sleep_or_wake(self._clock, self._wake, HEALTH_INTERVAL)
                self._wake.clear()
                if not self._lost and await self._healthy():
                    continue
            if self._conn is not None:
                log.warning("wake-up listener lost its connection; reconnecting")
                self._drop()
            try:
                await self._connect()
            except Exception as exc:  # unreachable, refused, timed out: try again later
                failures += 1
                delay = min(RECONNECT_FIRST * 2 ** (failures - 1), RECONNECT_MAX)
                (log.warning if failures == 1 else log.debug)(
                    "wake-up listener cannot reconnect (attempt %d, next in %.2f s): %s",
                    failures, delay, exc)
                await self._clock.sleep(delay * random.uniform(0.5, 1.0))
                continue
            failures = 0
            self.reconnects += 1
            log.info("wake-up listener reconnected; reading every shard")
            for callback in list(self._callbacks):
                try:
                    callback(None)  # wake-ups sent while it was down are lost
                except Exception:  # one bad callback must not end the reconnecting
                    log.exception("a wake-up callback failed")

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            shard = ShardId.parse(payload)
        except ClusterError:
            return
        for callback in list(self._callbacks):
            callback(shard)
