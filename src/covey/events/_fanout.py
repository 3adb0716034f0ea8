"""The events singleton: sequencing, the deliveries publishers could not make, retention.

One runner of the cluster runs it (the singleton ``covey.events``). In a loop:

1. ``storage.events.sequence()``: positions for committed events, in commit
   order (PostgreSQL; SQLite and memory number events as they store them);
2. for every registered group, the events after its cursor: an event stored
   without this group's delivery (its publisher did not know the group yet, or
   the group started at ``earliest``) or inside a replay gets one now
   (duplicates are dropped by the delivery's primary key), its owner is woken,
   and the cursor moves past them;
3. every minute, events older than the retention that every group has passed
   are deleted; every 5 s the group lag gauges are sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from covey.core import Clock, ClusterError, SnowflakeGenerator, metrics
from covey.core.runtime import sleep_or_wake
from covey.events._publisher import delivery
from covey.events._stats import GroupStats, group_stats
from covey.sharding.runtime import Envelope, Messenger
from covey.storage import EventGroup, Message, Saved, Storage

log = logging.getLogger("covey.events")

#: the singleton's name
EVENTS_SINGLETON = "covey.events"
#: events read per group and round
FANOUT_BATCH = 2000
#: the default retention of the log (seconds): 7 days
DEFAULT_RETENTION = 7 * 86400.0

_BUSY_SLEEP = 0.2
_IDLE_SLEEP = 1.0
_PURGE_EVERY = 60.0
_SAMPLE_EVERY = 5.0


class EventFanout:
    """The loop the events singleton runs (see the module docstring).

    Args:
        storage: the store.
        messenger: wakes the owners of the deliveries it stores.
        snowflake: ids of those deliveries.
        clock: time source.
        shards: shards per group.
        retention: seconds events are kept (once every group has passed them).
    """

    def __init__(self, storage: Storage, messenger: Messenger, snowflake: SnowflakeGenerator,
                 clock: Clock, shards: int, *, retention: float = DEFAULT_RETENTION,
                 max_count: int = 0) -> None:
        self._storage = storage
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self.retention = retention
        self.max_count = max_count
        self._wake = asyncio.Event()
        self._sampled: set[str] = set()

    def poke(self) -> None:
        """Run a round now (a publisher stored events a group may lack)."""
        self._wake.set()

    async def run(self) -> None:
        """Rounds until cancelled; a failing round is logged and tried again."""
        last_purge = last_sample = -float("inf")
        try:
            while True:
                busy = False
                try:
                    busy = await self.round()
                    now = self._clock.monotonic()
                    if now - last_purge >= _PURGE_EVERY:
                        last_purge = now
                        await self.purge()
                    if now - last_sample >= _SAMPLE_EVERY:
                        last_sample = now
                        await self.sample()
                except ClusterError as exc:
                    log.warning("events singleton round failed: %s", exc)
                self._wake.clear()
                await sleep_or_wake(self._clock, self._wake, _BUSY_SLEEP if busy else _IDLE_SLEEP)
        finally:  # another runner exports them now
            for group in self._sampled:
                for gauge in (metrics.EVENT_GROUP_LAG, metrics.EVENT_GROUP_LAG_SECONDS,
                              metrics.EVENT_DEAD_LETTERS):
                    with contextlib.suppress(KeyError):
                        gauge.remove(group)

    async def round(self) -> bool:
        """One pass over every group; whether any group had events to walk."""
        events = self._storage.events
        await events.sequence()
        busy = False
        for group in await events.groups():
            busy = await self.walk(group) or busy
        return busy

    async def walk(self, group: EventGroup) -> bool:
        """Deliver what ``group`` lacks after its cursor and move the cursor; whether
        there were events."""
        events = self._storage.events
        if group.replay and group.cursor < group.replay_until:
            # replaying: every event up to replay_until again (a key of their own)
            records = await events.read(group.cursor, topics=[group.topic],
                                        limit=FANOUT_BATCH)
            if not records:
                return False
            last = records[-1].position
        else:
            # the usual case: only the events their publisher stored without this
            # group's delivery are read (the store filters; payloads stay there)
            records, last = await events.unfanned(group.group, group.topic, group.cursor,
                                                  limit=FANOUT_BATCH)
            if last == group.cursor:
                return False
        messages: list[Message] = []
        for record in records:
            assert record.position is not None
            if group.replay and record.position <= group.replay_until:
                key = f"{record.id}/r{group.replay}"
            elif group.group not in record.groups:
                key = str(record.id)
            else:
                continue
            messages.append(delivery(record, group.group, self._snowflake.next_id(),
                                     self._shards, primary_key=key))
        if messages:
            results = await self._storage.messages.save_requests(messages)
            wake = [Envelope(m, persisted=True)
                    for m, r in zip(messages, results, strict=True) if isinstance(r, Saved)]
            if wake:
                try:
                    await self._messenger.push_many(wake)
                except ClusterError as exc:  # stored: the owners' reads find them
                    log.info("waking the owners of %d event deliveries failed: %s",
                             len(wake), exc)
        assert last is not None
        await events.advance_group(group.group, group.topic, last)
        return True

    async def purge(self) -> int:
        """Delete events older than the retention, and the oldest beyond the size
        limit, that every group of their topic has passed; log the lag that keeps
        the log over its size limit."""
        events = self._storage.events
        before = self._clock.now() - self.retention if math.isfinite(self.retention) else 0.0
        last = await events.last_position() if self.max_count else 0
        if self.max_count and last > self.max_count:
            # the size limit as a time: events published before the first one kept
            kept = await events.read(last - self.max_count, limit=1)
            if kept:
                before = max(before, kept[0].published_at)
        total = 0
        while before > 0:
            deleted = await events.purge(before, limit=1000)
            total += deleted
            if deleted < 1000:
                break
        if self.max_count:
            held = sum(t.events for t in await events.topics()) - self.max_count
            if held > 0:
                lagging = [g for g in await events.groups() if g.cursor < last]
                log.warning(
                    "the event log holds %d events over its limit of %d: groups that have "
                    "not passed them keep them (%s)", held, self.max_count,
                    ", ".join(f"{g.group}/{g.topic} at position {g.cursor} of {last}"
                              for g in lagging[:5]) or "none")
        return total

    async def sample(self) -> dict[str, GroupStats]:
        """Export the lag and dead-letter gauges of every group."""
        stats = await group_stats(self._storage, self._clock)
        for name, stat in stats.items():
            metrics.EVENT_GROUP_LAG.labels(name).set(stat.lag)
            metrics.EVENT_GROUP_LAG_SECONDS.labels(name).set(stat.lag_seconds)
            metrics.EVENT_DEAD_LETTERS.labels(name).set(stat.dead_letters)
            self._sampled.add(name)
        return stats
