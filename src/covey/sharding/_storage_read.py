"""The owner's storage read: stored messages of its shards, run when due.

A runner reads the unprocessed messages of the shards it holds when it acquires
them, when a delayed message comes due (a delivery timer), when poked (a
wake-up notification, work left over) and on a slow safety poll, which also
re-learns when the next delayed message comes due. Each message read runs as a
task of its own; at most ``poll_batch`` of them at a time, and the read refills
whenever half of them are done (a backlog drains steadily, not in waves).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from covey.core import Clock, ShardingOptions, StorageError
from covey.core.runtime import TaskSet, sleep_or_wake
from covey.sharding._completion import Completion
from covey.sharding._envelope import Envelope
from covey.sharding._sharding import Sharding
from covey.storage import Storage

log = logging.getLogger("covey.messages")

_MAX_TIMER_SLEEP = 3600.0  # a delivery timer re-reads a later time on waking


class StorageReader:
    """The storage read loop and the delivery timers of one runner.

    Args:
        options: the safety poll interval and the batch size.
        storage: where the messages are.
        sharding: the shards this runner holds.
        clock: the time source of the poll and of the timers.
        completion: runs what is read (and knows what runs already).
        spawn: runs one message as a task of the messenger's set.
    """

    def __init__(self, options: ShardingOptions, storage: Storage, sharding: Sharding,
                 clock: Clock, completion: Completion,
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._options = options
        self._storage = storage
        self._sharding = sharding
        self._clock = clock
        self._completion = completion
        self._spawn = spawn
        self._need_due = False
        self._read_wake = asyncio.Event()
        self._timers: list[float] = []
        self._timer_wake = asyncio.Event()
        self._read_pending = 0
        self._refill_at = options.poll_batch // 2

    def start(self, tasks: TaskSet) -> None:
        """Run the read loop and the timer loop in ``tasks``."""
        tasks.spawn(self._read_loop(), name="covey-storage-read")
        tasks.spawn(self._timer_loop(), name="covey-delivery-timers")

    def poke(self) -> None:
        """Read storage now (a wake-up arrived, or work waits there)."""
        self._read_wake.set()

    def resync(self) -> None:
        """Read storage now and re-learn due times (wake-ups may have been missed)."""
        self._need_due = True
        self.poke()

    def schedule(self, due: float) -> None:
        """Read storage again at ``due`` (a delayed message comes due then)."""
        if not isinstance(due, int | float) or not math.isfinite(due):  # could never sleep
            log.warning("ignored a delivery timer for %r: not a finite time", due)
            return
        heapq.heappush(self._timers, due)
        self._timer_wake.set()

    async def _timer_loop(self) -> None:
        while True:
            if not self._timers:
                self._timer_wake.clear()
                await self._timer_wake.wait()
                continue
            delay = self._timers[0] - self._clock.now()
            if delay > 0:
                self._timer_wake.clear()
                await sleep_or_wake(self._clock, self._timer_wake, min(delay, _MAX_TIMER_SLEEP))
                continue
            while self._timers and self._timers[0] <= self._clock.now():
                heapq.heappop(self._timers)
            self.poke()

    async def _read_loop(self) -> None:
        while True:
            await sleep_or_wake(self._clock, self._read_wake, self._options.poll_interval)
            if not self._read_wake.is_set():
                self._need_due = True  # the safety poll also re-learns due times
            self._read_wake.clear()
            try:
                await self._read_once()
            except StorageError as exc:
                log.warning("storage read failed: %s", exc)

    async def _read_once(self) -> None:
        while True:
            shards = [s for s in self._sharding.owned if self._sharding.epoch_of(s) is not None]
            # at most poll_batch read messages under way: read only what fits
            room = self._options.poll_batch - self._read_pending
            if not shards or room <= 0:
                return
            # leased by the read: a message under way is not handed out again
            messages = await self._storage.messages.unprocessed(shards, limit=room)
            fresh = 0
            for message in messages:
                if self._completion.seen(message.id):
                    continue
                fresh += 1
                self._read_pending += 1
                self._spawn(self._process_read(Envelope(message, persisted=True, read=True)))
            if messages and not fresh:
                # every one is under way here already (pushed): reading on would walk
                # a backlog the pushes are working through; the next wake-up or the
                # safety poll reads again
                return
            if len(messages) < room:
                if self._need_due:
                    self._need_due = False
                    due = await self._storage.messages.next_due(shards)
                    if due is not None:
                        self.schedule(due)
                return

    async def _process_read(self, envelope: Envelope) -> None:
        try:
            await self._completion.run_quietly(envelope)
        finally:
            self._read_pending -= 1
            if self._read_pending in (self._refill_at, 0):
                # half the batch done (or all of it): refill while the rest runs,
                # so a backlog drains steadily rather than in waves
                self.poke()
