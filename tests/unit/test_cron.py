"""Cluster cron on the in-memory TestCluster, driven by a TestClock."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import Counter

import pytest
from prometheus_client import REGISTRY

import covey
from covey.core import ClusterError, TestClock
from covey.testing import TestCluster

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, on a whole second


async def step(clock: TestClock, seconds: float, by: float = 0.25) -> None:
    """Advance time in small steps, letting the runners work in between."""
    for _ in range(round(seconds / by)):
        await clock.advance(by)
        for _ in range(20):
            await asyncio.sleep(0)


def every_second(ran: list[float], **options: object):  # type: ignore[no-untyped-def]
    def configure(cluster: covey.Cluster) -> None:
        @cluster.cron("* * * * * *", name="tick", **options)  # type: ignore[arg-type]
        async def tick(t: covey.CronTick) -> None:
            ran.append(t.scheduled.timestamp())

    return configure


async def test_each_tick_runs_once_across_three_runners() -> None:
    clock = TestClock(START + 0.5)
    ran: list[float] = []
    async with TestCluster(runners=3, clock=clock, configure=every_second(ran)) as tc:
        await step(clock, 10)
        assert tc.runners  # started
    counts = Counter(ran)
    assert max(counts.values()) == 1  # no duplicates
    assert sorted(counts) == [START + i for i in range(1, 11)]  # no misses


async def test_ticks_survive_the_death_of_their_runner() -> None:
    clock = TestClock(START + 0.5)
    ran: list[float] = []
    async with TestCluster(runners=3, clock=clock, configure=every_second(ran)) as tc:
        await step(clock, 3)
        owner = next(i for i, r in enumerate(tc.runners)
                     if r.crons is not None and r.crons.shard_of("tick") in r.sharding.owned)
        await tc.kill(owner)
        await step(clock, 5)
    counts = Counter(ran)
    assert max(counts.values()) == 1
    assert sorted(counts) == [START + i for i in range(1, 9)]


async def test_missed_ticks_are_skipped_not_burst_after_downtime() -> None:
    clock = TestClock(START + 0.5)
    ran: list[float] = []
    configure = every_second(ran, skip_if_older_than=dt.timedelta(seconds=30))
    async with TestCluster(runners=1, clock=clock, configure=configure) as tc:
        await step(clock, 3)
        before = len(ran)
        await tc.stop_runner(0)  # the whole cluster is down...
        await clock.advance(120)  # ...for longer than skip_if_older_than
        await tc.add_runner()
        await step(clock, 3)
    after_restart = [t for t in ran[before:]]
    assert all(t > START + 120 for t in after_restart)  # nothing from the downtime ran
    assert 2 <= len(after_restart) <= 4  # the regular ticks after the restart, no burst


async def test_failures_are_counted_not_retried() -> None:
    clock = TestClock(START + 0.5)
    calls: list[float] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.cron("* * * * * *", name="bad")
        async def bad(t: covey.CronTick) -> None:
            calls.append(t.scheduled.timestamp())
            raise RuntimeError("nope")

    async with TestCluster(runners=2, clock=clock, configure=configure):
        await step(clock, 4)
    assert sorted(calls) == [START + i for i in range(1, 5)]  # each once, no retry


async def test_time_zone_and_minute_expressions() -> None:
    clock = TestClock(START + 0.5)
    ran: list[dt.datetime] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.cron("*/2 * * * *", name="two-minutes", tz="Europe/Paris")
        async def every_two(t: covey.CronTick) -> None:
            ran.append(t.scheduled)

    async with TestCluster(runners=2, clock=clock, configure=configure):
        await step(clock, 300, by=5)
    assert [t.minute for t in ran] == [2, 4]
    assert all(str(t.tzinfo) == "Europe/Paris" for t in ran)


def test_bad_expressions_and_zones_are_refused() -> None:
    cluster = covey.Cluster(covey.CoveyConfig(database_url="memory://"))
    with pytest.raises(ClusterError):
        cluster.cron("every day")(lambda t: asyncio.sleep(0))  # type: ignore[arg-type,return-value]
    with pytest.raises(ClusterError):
        cluster.cron("* * * * *", tz="Mars/Olympus")


def skipped_ticks(name: str) -> float:
    return REGISTRY.get_sample_value(
        "covey_cron_ticks_total", {"name": name, "outcome": "skipped"}) or 0.0


async def downtime(ran: list[float], *, from_previous: bool,
                   skip_if_older_than: float = 30) -> list[float]:
    """A 1-second cron whose only runner is down for 60 s of test-clock time;
    returns the ticks that ran after the restart, in the order they ran. The
    ticks before the stop are START+1..START+3; the restart is at START+63.5."""
    clock = TestClock(START + 0.5)
    configure = every_second(ran, skip_if_older_than=skip_if_older_than,
                             from_previous=from_previous)
    async with TestCluster(runners=1, clock=clock, configure=configure) as tc:
        await step(clock, 3)
        assert sorted(ran) == [START + 1, START + 2, START + 3]
        await tc.stop_runner(0)  # the whole cluster is down...
        await clock.advance(60)  # ...for longer than skip_if_older_than
        await tc.add_runner()
        await step(clock, 3)  # the catch-up runs at once; then START+64..66 on time
    return ran[3:]


async def test_from_previous_runs_the_ticks_missed_within_skip_if_older_than() -> None:
    skipped = skipped_ticks("tick")
    after_restart = await downtime([], from_previous=True)
    # The ticks of the last 30 s before the restart ran late, once each, in order,
    # then the schedule went on; the older ones (START+4..33) did not run...
    assert after_restart == [START + i for i in range(34, 67)]
    # ...and each was counted as skipped exactly once (stored ones and missed ones)
    assert skipped_ticks("tick") - skipped == 30


async def test_without_from_previous_no_missed_tick_runs() -> None:
    after_restart = await downtime([], from_previous=False)
    assert after_restart == [START + 64, START + 65, START + 66]  # from now on


async def test_from_previous_catch_up_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # The cap is MAX_CATCH_UP (1000) missed ticks; 20 here, to keep the downtime short.
    monkeypatch.setattr("covey.singletons._cron.MAX_CATCH_UP", 20)
    skipped = skipped_ticks("tick")
    after_restart = await downtime([], from_previous=True, skip_if_older_than=math.inf)
    # START+4..14 were stored before the stop (the look-ahead) and run late, as
    # inf never skips; of the 49 missed ones (15..63) only the newest 20 run.
    assert after_restart == [START + i for i in [*range(4, 15), *range(44, 67)]]
    assert skipped_ticks("tick") - skipped == 29  # START+15..43, never stored
