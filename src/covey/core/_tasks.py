"""TaskSet: background tasks that live and die with their owner.

Every background loop and per-message task of a runner (the messenger's read
loop and deliveries, the transports' connections, cron ticks, singletons, job
runs) is spawned into a :class:`TaskSet`. The runner's supervisor owns the root
set and hands each component a named child at assembly, so:

- a task that dies of an unexpected exception is logged with its name and
  reported to the owner (``on_crash``), which stops the runner loudly instead
  of leaving it half alive;
- closing a set (the component's ``close``, or the supervisor's on stop)
  cancels and awaits everything in it and in its children: nothing outlives
  ``stop()``.

Tasks that are expected to fail (a handler's error, a peer that hangs up)
catch and report that themselves; reaching the set with an exception is a bug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("covey.tasks")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoopTick:
    """The last sign of life of one background loop (for the liveness probe).

    Attributes:
        name: the loop's name (``"covey-heartbeat"``).
        interval: how often it means to tick, in seconds.
        at: the clock's monotonic time of its last tick.
        busy_since: when it started waiting on work bounded elsewhere (storage,
            a handover); ``None`` while it sleeps until its next tick.
    """

    name: str
    interval: float
    at: float
    busy_since: float | None = None


class TaskSet:
    """A named set of tasks: tracked while they run, all cancelled on close.

    Args:
        name: shown in logs and task names (``"covey-messenger"``).
        on_crash: called with the exception of a task that died of one (not of
            cancellation); children inherit their parent's.
    """

    def __init__(self, name: str, *,
                 on_crash: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self._on_crash = on_crash
        self._tasks: set[asyncio.Task[Any]] = set()
        self._children: list[TaskSet] = []
        self._closed = False
        self._ticks: dict[str, LoopTick] = {}

    def child(self, name: str) -> TaskSet:
        """A set for one component, closed with this one (and crashing into it)."""
        child = TaskSet(name, on_crash=self._crashed)
        child._closed = self._closed
        self._children.append(child)
        return child

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this set.

        Raises:
            RuntimeError: the set is closed (the component was stopped); the
                coroutine is closed, not leaked.
        """
        if self._closed:
            coro.close()
            raise RuntimeError(f"task set {self.name!r} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=name or self.name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def tick(self, name: str, interval: float, now: float) -> None:
        """Record that loop ``name`` is about to sleep until its next round
        (``now``: the clock's monotonic time). A loop that stops ticking while
        idle fails the liveness probe (:mod:`covey.health`)."""
        self._ticks[name] = LoopTick(name, interval, now)

    def busy(self, name: str, now: float) -> None:
        """Record that loop ``name`` woke and now waits on I/O or a handover: it
        is not stalled while busy (a database outage must not fail liveness)."""
        tick = self._ticks.get(name)
        if tick is not None:
            self._ticks[name] = dataclasses.replace(tick, busy_since=now)

    def loop_ticks(self) -> list[LoopTick]:
        """The last tick of every loop of this set and its children."""
        found = list(self._ticks.values())
        for child in self._children:
            found += child.loop_ticks()
        return found

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._tasks) + sum(len(c) for c in self._children)

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        """The tasks running now, children's included (a copy)."""
        found = set(self._tasks)
        for child in self._children:
            found |= child.tasks
        return found

    async def close(self, grace: float = 0.0) -> None:
        """Refuse new tasks, let running ones finish within ``grace`` seconds,
        then cancel the rest and wait for them to end (children too)."""
        self._closed = True
        for child in self._children:
            child._closed = True
        running = self.tasks
        current = asyncio.current_task()
        if current is not None:
            running.discard(current)  # never cancel or wait for the caller itself
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        await self.cancel_all()

    async def cancel_all(self) -> None:
        """Cancel every running task (children's too) and wait until they end;
        the set stays open."""
        running = self.tasks
        current = asyncio.current_task()
        if current is not None:
            running.discard(current)  # never cancel or wait for the caller itself
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.critical("covey task %r crashed", task.get_name(), exc_info=error)
            self._crashed(error)

    def _crashed(self, error: BaseException) -> None:
        if self._on_crash is not None:
            self._on_crash(error)
