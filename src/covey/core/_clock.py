"""Time, behind an interface so tests can advance it instead of sleeping.

All covey code reads time through a :class:`Clock`: ``now()`` is wall-clock
seconds since the Unix epoch (stored in the database, compared across pods), and
``sleep()`` waits. :class:`TestClock` never moves by itself; ``advance()`` moves
it and wakes every sleeper whose deadline has passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable


class Timer(Protocol):
    """A callback scheduled with :meth:`Clock.call_later`."""

    def cancel(self) -> bool | None:
        """Do not run the callback (no effect once it ran)."""
        ...


@runtime_checkable
class Clock(Protocol):
    """A source of time."""

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` in the event loop once ``seconds`` have passed.

        Cheaper than a task that sleeps: for timeouts on hot paths.
        """
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(seconds, 0.0))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(max(seconds, 0.0), callback)


class TestClock:
    """A clock that moves only when told to.

    Args:
        start: the initial wall-clock time in seconds since the epoch.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01Z
        self._now = start
        self._origin = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._origin

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._counter), future))
        await future

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: None if f.cancelled() else callback())
        heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), next(self._counter),
                                        future))
        return future

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order as time passes them."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
            # let the woken task run before time moves further
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = target
        await asyncio.sleep(0)

    async def jump(self, seconds: float) -> None:
        """Move time forward at once, as after a machine's suspend: every sleeper due
        by then wakes once, at the new time. Unlike :meth:`advance`, a periodic loop
        runs once, not once per period, so a test passes days in milliseconds (a
        durable sleep of a workflow); leases that lapsed meanwhile have lapsed (a
        ``TestCluster`` settles again: ``await cluster.settle()``)."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            future = heapq.heappop(self._sleepers)[2]
            if not future.done():
                future.set_result(None)
        for _ in range(20):  # let the woken tasks run
            await asyncio.sleep(0)

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones excluded)."""
        return sum(1 for *_, f in self._sleepers if not f.done())


async def sleep_or_wake(clock: Clock, event: asyncio.Event, seconds: float) -> None:
    """Wait until ``seconds`` pass on ``clock`` or ``event`` is set (it is not cleared)."""
    if event.is_set():
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waiter.cancel()


def being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (not just something it awaits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
