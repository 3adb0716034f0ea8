"""Retention: the background purge of processed messages, on the TestCluster.

One runner (the owner of the retention shard) purges processed messages older
than ``StorageOptions.retention`` every ``purge_interval``, counts them in
``covey_messages_purged_total``, keeps unprocessed messages and dead-lettered
jobs, and survives a failing purge.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel

import covey
from covey.core import (
    ConfigError,
    CoveyConfig,
    EntityError,
    JobError,
    Reason,
    StorageError,
    TestClock,
)
from covey.storage.memory import InMemoryStorage
from covey.testing import TestCluster

RETENTION = 30.0
INTERVAL = 5.0


class Entry(BaseModel):
    key: str


class Ledger(covey.Entity, type="Ledger"):
    @covey.rpc(persisted=True, primary_key=lambda e: e.key)
    async def record(self, entry: Entry) -> str:
        return entry.key

    @covey.rpc(persisted=True)
    async def reject(self, entry: Entry) -> None:
        raise ValueError(f"no {entry.key}")


def purged_total() -> float:
    return REGISTRY.get_sample_value("covey_messages_purged_total") or 0.0


def configure(cluster: covey.Cluster) -> None:
    @cluster.job("doomed", retry=covey.Retry(max_attempts=1))
    async def doomed(job: covey.JobContext, entry: Entry) -> None:
        raise RuntimeError(f"{entry.key} always fails")

    @cluster.job("fine")
    async def fine(job: covey.JobContext, entry: Entry) -> str:
        return entry.key

    cluster.doomed = doomed  # type: ignore[attr-defined]
    cluster.fine = fine  # type: ignore[attr-defined]


def cluster(clock: TestClock, **storage: Any) -> TestCluster:
    tc = TestCluster(Ledger, runners=2, clock=clock, configure=configure)
    options = {"retention": RETENTION, "purge_interval": INTERVAL, **storage}
    tc.config = replace(tc.config, storage=replace(tc.config.storage, **options))
    return tc


def rows(tc: TestCluster) -> set[int]:
    store = tc.storage
    assert isinstance(store, InMemoryStorage)
    return set(store.messages.rows)


async def step(clock: TestClock, seconds: float, by: float = 0.25) -> None:
    """Advance time in small steps, letting the runners work in between."""
    for _ in range(round(seconds / by)):
        await clock.advance(by)
        for _ in range(10):
            await asyncio.sleep(0)


async def step_until(clock: TestClock, done: Any, seconds: float) -> None:
    """Advance time until ``done()`` holds; fail if it does not within ``seconds``."""
    for _ in range(round(seconds / 0.25)):
        if done():
            return
        await step(clock, 0.25)
    assert done(), f"condition not met within {seconds} s of test time"


async def seed(tc: TestCluster) -> tuple[set[int], set[int], int]:
    """Processed calls, a failed call, a finished job, a dead job, a delayed job.

    Returns (purgeable ids, kept ids, the finished job's id).
    """
    before = rows(tc)
    ledger = tc.client(Ledger, "l1")
    for n in range(3):
        assert await ledger.record(Entry(key=f"k{n}")) == f"k{n}"
    with pytest.raises(EntityError):
        await ledger.reject(Entry(key="x"))
    fine = await tc.client_member.fine.submit(Entry(key="f"))  # type: ignore[attr-defined]
    assert await fine.result(timeout=5) == "f"
    doomed = tc.client_member.doomed  # type: ignore[attr-defined]
    dead = await doomed.submit(Entry(key="d"))
    with pytest.raises(JobError):
        await dead.result(timeout=5)
    later = await doomed.submit(Entry(key="later"), delay=10 * 86400.0)
    kept = {dead.id, later.id}
    return rows(tc) - before - kept, kept, fine.id


async def test_processed_messages_are_purged_after_the_retention_and_counted() -> None:
    clock = TestClock()
    async with cluster(clock) as tc:
        jobs = tc.client_member.jobs
        purgeable, kept, fine_id = await seed(tc)
        assert len(purgeable) == 5  # three recorded, one rejected, one job done
        counted = purged_total()
        await step(clock, RETENTION - 1)
        assert rows(tc) >= purgeable | kept  # nothing purged before its time
        await step_until(clock, lambda: not rows(tc) & purgeable, 2 * INTERVAL)
        assert rows(tc) >= kept  # the dead letter and the delayed job stay
        assert purged_total() - counted == len(purgeable)
        # a purged primary key is free again: the same request runs again
        assert await tc.client(Ledger, "l1").record(Entry(key="k0")) == "k0"
        # a finished job is gone after the retention; a dead one stays inspectable
        with pytest.raises(JobError) as info:
            await jobs.status(fine_id)
        assert info.value.reason is Reason.JOB_NOT_FOUND
        assert [s.state for s in await jobs.dead_letters()] == ["dead"]


async def test_retention_zero_purges_everything_processed_at_the_next_interval() -> None:
    clock = TestClock()
    async with cluster(clock, retention=0.0) as tc:
        purgeable, kept, _ = await seed(tc)
        await step_until(clock, lambda: not rows(tc) & purgeable, 2 * INTERVAL)
        assert rows(tc) >= kept


async def test_a_failing_purge_is_logged_and_retried_at_the_next_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = TestClock()
    async with cluster(clock, retention=0.0) as tc:  # the first pass has work to do
        purgeable, _, _ = await seed(tc)
        store = tc.storage.messages
        real = store.purge
        calls: list[float] = []

        async def flaky(before: float, **options: Any) -> int:
            calls.append(clock.now())
            if len(calls) == 1:
                raise StorageError("database went away")
            return await real(before, **options)

        store.purge = flaky  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="covey.retention"):
            await step_until(clock, lambda: bool(calls), 2 * INTERVAL)
            assert rows(tc) >= purgeable  # that pass failed
            assert any("purg" in r.getMessage() and r.levelno == logging.WARNING
                       for r in caplog.records)
            # the runner keeps serving, and the next interval purges
            assert await tc.client(Ledger, "l2").record(Entry(key="after")) == "after"
            await step_until(clock, lambda: not rows(tc) & purgeable, 2 * INTERVAL)
        assert calls[1] - calls[0] == pytest.approx(INTERVAL, abs=0.5)


async def test_an_infinite_retention_keeps_everything() -> None:
    clock = TestClock()
    async with cluster(clock, retention=math.inf) as tc:
        purgeable, kept, _ = await seed(tc)
        await step(clock, 4 * INTERVAL)
        assert rows(tc) >= purgeable | kept


def test_retention_settings_come_from_the_environment() -> None:
    config = CoveyConfig.from_env({
        "COVEY_STORAGE_RETENTION": "0", "COVEY_STORAGE_PURGE_INTERVAL": "15",
        "COVEY_STORAGE_PURGE_BATCH": "250",
    })
    assert config.storage.retention == 0.0
    assert config.storage.purge_interval == 15.0
    assert config.storage.purge_batch == 250
    defaults = CoveyConfig().storage
    assert (defaults.retention, defaults.purge_interval, defaults.purge_batch) == (
        7 * 86400.0, 60.0, 1000)
    listed = CoveyConfig.variables()
    assert listed["COVEY_STORAGE_PURGE_INTERVAL"] == "60.0"
    assert listed["COVEY_STORAGE_PURGE_BATCH"] == "1000"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COVEY_STORAGE_RETENTION", "-1"),
        ("COVEY_STORAGE_RETENTION", "nan"),
        ("COVEY_STORAGE_PURGE_INTERVAL", "0"),
        ("COVEY_STORAGE_PURGE_INTERVAL", "-5"),
        ("COVEY_STORAGE_PURGE_INTERVAL", "inf"),
        ("COVEY_STORAGE_PURGE_INTERVAL", "nan"),
        ("COVEY_STORAGE_PURGE_BATCH", "0"),
        ("COVEY_STORAGE_PURGE_BATCH", "many"),
    ],
)
def test_bad_retention_settings_are_refused(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        CoveyConfig.from_env({variable: value})
    assert variable in str(info.value)
