"""The PostgreSQL wake-up listener's recovery logic, with fake connections.

A hung connection (no error, no answer) is only found by the health check; a
server that refuses connections is retried with bounded backoff on the clock.
The real thing (a terminated session) is in tests/integration.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from covey.core import ShardId, StorageOptions, TestClock
from covey.storage.postgres._wakeups import HEALTH_INTERVAL, RECONNECT_MAX, PostgresWakeups


class FakeConnection:
    """Enough of an asyncpg connection for the listener."""

    def __init__(self, name: str, *, hangs: bool = False) -> None:
        self.name = name
        self.hangs = hangs
        self.closed = False
        self.on_close: list[Callable[[Any], None]] = []
        self.listeners: dict[str, Callable[..., None]] = {}

    def is_closed(self) -> bool:
        return self.closed

    def add_termination_listener(self, callback: Callable[[Any], None]) -> None:
        self.on_close.append(callback)

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        self.listeners[channel] = callback

    def get_settings(self) -> SimpleNamespace:
        return SimpleNamespace(application_name=self.name)

    async def execute(self, query: str, *args: object) -> str:
        if self.hangs:
            await asyncio.Event().wait()  # a half-open socket: no error, no answer
        if args:
            self.name = str(args[0])
        return "SELECT 1"

    def terminate(self) -> None:
        self.closed = True

    def lose(self) -> None:
        """The server ended the session (what asyncpg reports on termination)."""
        self.closed = True
        for callback in self.on_close:
            asyncio.get_running_loop().call_soon(callback, self)


class FakeServer:
    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.refuse = 0  # refuse this many connects
        self.attempts = 0
        self.hang_next = False

    async def connect(self, name: str) -> FakeConnection:
        self.attempts += 1
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError("connection refused")
        conn = FakeConnection(name, hangs=self.hang_next)
        self.hang_next = False
        self.opened.append(conn)
        return conn


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def tick(clock: TestClock, seconds: float) -> None:
    """Advance the clock once the listener waits on it."""
    await until(lambda: clock.sleepers > 0)
    await clock.advance(seconds)


def up() -> float | None:
    return REGISTRY.get_sample_value("covey_wakeup_listener_up")


def listener(server: FakeServer, clock: TestClock, name: list[str]) -> PostgresWakeups:
    options = StorageOptions(lock_timeout=0.05, connect_timeout=1.0)
    return PostgresWakeups("postgresql://fake", "covey_x", options, clock,
                           lambda: name[0], connect=server.connect)


async def test_a_hung_listener_is_found_by_the_health_check_and_replaced() -> None:
    server, clock, name = FakeServer(), TestClock(), ["covey-listen"]
    server.hang_next = True
    wakeups = listener(server, clock, name)
    woken: list[ShardId | None] = []
    await wakeups.listen(woken.append)
    try:
        assert wakeups.connected and up() == 1.0
        await tick(clock, HEALTH_INTERVAL)
        await until(lambda: None in woken)  # replaced, and asked for a full read
        assert server.opened[0].closed and not server.opened[1].closed
        assert wakeups.connected and up() == 1.0 and wakeups.reconnects == 1
        # notifications arrive on the new connection
        server.opened[1].listeners["covey_x"](None, 1, "covey_x", "default:4")
        assert woken[-1] == ShardId("default", 4)
    finally:
        await wakeups.close()
    assert not wakeups.connected and up() == 0.0


async def test_health_check_applies_a_name_learned_after_connecting() -> None:
    server, clock, name = FakeServer(), TestClock(), ["covey-listen"]
    wakeups = listener(server, clock, name)
    await wakeups.listen(lambda shard: None)
    try:
        name[0] = "covey-listen:10.0.0.1:7001"  # the runner registered meanwhile
        wakeups.recheck()  # what the registration does: no need to wait for the clock
        await until(lambda: server.opened[0].name == name[0])
        assert wakeups.reconnects == 0
        name[0] = "covey-listen:10.0.0.1:7002"  # and the periodic check applies it too
        await tick(clock, HEALTH_INTERVAL)
        await until(lambda: server.opened[0].name == name[0])
        assert wakeups.reconnects == 0 and len(server.opened) == 1
    finally:
        await wakeups.close()


async def test_refused_reconnects_back_off_on_the_clock_until_the_server_is_back() -> None:
    server, clock, name = FakeServer(), TestClock(), ["covey-listen"]
    wakeups = listener(server, clock, name)
    woken: list[ShardId | None] = []
    await wakeups.listen(woken.append)
    try:
        server.refuse = 1000  # the server is down
        server.opened[0].lose()
        await until(lambda: server.attempts >= 2)
        assert not wakeups.connected and up() == 0.0
        # it waits on the clock between attempts: no busy loop while time stands still
        attempts = server.attempts
        for _ in range(50):
            await asyncio.sleep(0)
        assert server.attempts == attempts
        for _ in range(20):  # every pause is bounded: time moving means attempts go on
            before = server.attempts
            await tick(clock, RECONNECT_MAX)
            await until(lambda: server.attempts > before)  # noqa: B023 - awaited at once
        assert woken == []
        server.refuse = 0  # back
        await tick(clock, RECONNECT_MAX)
        await until(lambda: woken == [None])
        assert wakeups.connected and up() == 1.0
    finally:
        await wakeups.close()
