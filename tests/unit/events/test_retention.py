"""The events singleton's purge: by age and by size, never past a group's cursor."""

from __future__ import annotations

import logging

import pytest

from covey.core import CoveyConfig, SnowflakeGenerator, TestClock
from covey.events.runtime import EventFanout
from covey.storage import EventRecord
from covey.storage.memory import InMemoryStorage


def _event(n: int) -> EventRecord:
    return EventRecord(id=1000 + n, topic="orders", type="Placed", version=1, key=f"k{n}",
                       payload=b"p", published_at=float(n))


async def test_the_size_limit_purges_the_oldest_events_every_group_has_passed(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = TestClock(start=100.0)
    config = CoveyConfig(database_url="memory://", shards=4)
    async with InMemoryStorage(shards=4, options=config.storage, clock=clock) as storage:
        await storage.events.append([_event(n) for n in range(1, 11)], [])
        group = await storage.events.register_group("billing", "orders", start="earliest",
                                                    now=clock.now())
        fanout = EventFanout(storage, None, SnowflakeGenerator(1), clock, 4,  # type: ignore[arg-type]
                             retention=float("inf"), max_count=4)
        # the group has passed 3 events only: it keeps the rest, and the purge says so
        await storage.events.advance_group(group.group, group.topic, 3)
        with caplog.at_level(logging.WARNING, logger="covey.events"):
            assert await fanout.purge() == 3
        assert "billing/orders at position 3 of 10" in caplog.text
        assert [e.position for e in await storage.events.read(0)] == list(range(4, 11))
        # once it has passed them all: the newest 4 stay (publish time 7..10)
        await storage.events.advance_group(group.group, group.topic, 10)
        assert await fanout.purge() == 3
        assert [e.position for e in await storage.events.read(0)] == [7, 8, 9, 10]


async def test_age_retention_purges_only_old_events() -> None:
    clock = TestClock(start=100.0)
    config = CoveyConfig(database_url="memory://", shards=4)
    async with InMemoryStorage(shards=4, options=config.storage, clock=clock) as storage:
        await storage.events.append([_event(n) for n in range(1, 6)], [])
        fanout = EventFanout(storage, None, SnowflakeGenerator(1), clock, 4,  # type: ignore[arg-type]
                             retention=97.5)
        assert await fanout.purge() == 2  # published at 1 and 2: older than 100 - 97.5
        assert [e.position for e in await storage.events.read(0)] == [3, 4, 5]
