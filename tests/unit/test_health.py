"""cluster.health: every state transition of the checks and the three probes.

The checks run in the background loop; these tests run a pass by hand
(``check_now``) so each transition is one step, except where the loop itself is
what is tested (lag, ticking, a real cluster's start and stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from covey import Cluster, CoveyConfig
from covey.core import ClusterError, ConfigError, HealthOptions, Reason, StorageError, TestClock
from covey.core.runtime import TaskSet
from covey.health import Health, Probe
from covey.health.runtime import HealthParts
from covey.singletons import SingletonContext
from covey.testing import TestCluster
from tests.unit._waiting import until

# a loop interval no test waits for: passes run when a test says so
IDLE = HealthOptions(interval=3600.0, timeout=0.2)


class FlakyStorage:
    """A storage whose round trip fails while ``down``."""

    backend = "fake"

    def __init__(self) -> None:
        self.down = False
        self.pings = 0

    async def ping(self) -> None:
        self.pings += 1
        if self.down:
            raise StorageError("connection refused", reason=Reason.STORAGE_UNAVAILABLE)


class FakeWakeups:
    """The lock (LISTEN) connection, switched by the test."""

    wakeups_connected = True


async def started(health: Health, storage: FlakyStorage | None = None,
                  **parts: Any) -> FlakyStorage:
    """Start ``health`` on a fake storage and wait for the loop's first pass."""
    storage = storage or FlakyStorage()
    fake: Any = storage  # only the round trip is used
    health.start(TaskSet("test-health"), HealthParts(fake, service="test", **parts))
    await until(lambda: not any(entry.get("output") == "not checked yet"
                                for entries in health.report().body["checks"].values()
                                for entry in entries))
    return storage


def check_entry(probe: Probe, key: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = probe.body["checks"][key]
    assert len(entries) == 1
    return entries[0]


@pytest.fixture
async def health() -> AsyncIterator[Health]:
    h = Health(IDLE)
    yield h
    await h._tasks.close()


# ---- add() -----------------------------------------------------------------


async def _ok() -> None:
    return None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "a:b:c"}, "name"),
    ({"name": 7}, "name"),
    ({"name": "postgres"}, "name"),  # covey's own storage check on PostgreSQL
    ({"name": "eventLoop:lag"}, "name"),
    ({"check": "not a function"}, "check"),
    ({"critical": "yes"}, "critical"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -1.0}, "timeout"),
    ({"timeout": math.nan}, "timeout"),
    ({"timeout": "1"}, "timeout"),
])
def test_add_refuses_bad_arguments_with_a_typed_error(kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"name": "smtp", "check": _ok, **kwargs}
    h = Health()
    with pytest.raises(ClusterError) as caught:
        h.add(args.pop("name"), args.pop("check"), **args)
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == field
    assert set(h.report().body["checks"]) == {"eventLoop:lag"}  # nothing was added


def test_add_refuses_a_duplicate_name() -> None:
    h = Health()
    h.add("smtp", _ok)
    with pytest.raises(ClusterError) as caught:
        h.add("smtp:responseTime", _ok)  # the same key
    assert caught.value.reason is Reason.INVALID_ARGUMENT
    assert caught.value.details["field"] == "name"


async def test_an_application_check_may_not_take_a_builtin_key(health: Health) -> None:
    health.add("fake:responseTime", _ok)
    with pytest.raises(ClusterError) as caught:
        await started(health)
    assert caught.value.details["field"] == "name"


# ---- readiness ---------------------------------------------------------------


def test_a_health_not_started_is_live_but_not_ready() -> None:
    h = Health()
    assert h.live().ok
    ready = h.ready()
    assert not ready.ok
    assert ready.body["status"] == "fail"
    assert ready.body["output"] == "not started"
    assert not h.report().ok


async def test_readiness_fails_after_two_missed_storage_checks_and_recovers_at_once(
        health: Health) -> None:
    storage = await started(health)
    assert health.ready().ok
    storage.down = True
    await health.check_now()
    assert health.ready().ok  # one miss is a blip
    entry = check_entry(health.report(), "fake:responseTime")
    assert entry["status"] == "warn"
    assert entry["output"] == "StorageError: connection refused"
    await health.check_now()
    ready = health.ready()
    assert not ready.ok
    assert ready.body["status"] == "fail"
    assert "fake:responseTime: StorageError: connection refused" in ready.body["output"]
    assert check_entry(ready, "fake:responseTime")["status"] == "fail"
    assert not health.report().ok
    assert health.live().ok  # liveness never depends on the database
    storage.down = False
    await health.check_now()
    assert health.ready().ok  # the first pass after it returns
    entry = check_entry(health.report(), "fake:responseTime")
    assert entry["status"] == "pass"
    assert "output" not in entry
    assert entry["lastError"] == "StorageError: connection refused"  # kept for operators
    assert entry["lastErrorTime"].endswith("Z")


async def test_a_check_that_hangs_past_its_timeout_fails_and_is_cancelled(
        health: Health) -> None:
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    health.add("payments", hangs, timeout=0.05)
    await started(health)
    await until(cancelled.is_set)
    await health.check_now()
    entry = check_entry(health.ready(), "payments:responseTime")
    assert entry["status"] == "fail"
    assert entry["output"] == "timed out after 0.05 s"
    assert entry["latencyMs"] >= 50.0
    assert not health.ready().ok


async def test_a_check_that_ignores_cancellation_keeps_failing_until_it_ends(
        health: Health) -> None:
    release = asyncio.Event()
    runs = 0

    async def stubborn() -> None:
        nonlocal runs
        runs += 1
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # a badly written check
                await release.wait()

    health.add("legacy", stubborn, timeout=0.05)
    await started(health)
    await health.check_now()  # not run again while the first run is still going
    assert runs == 1
    entry = check_entry(health.ready(), "legacy:responseTime")
    assert entry["output"] == ("the previous run is still running after it was cancelled "
                               "(the check ignores cancellation)")
    assert not health.ready().ok
    release.set()
    await until(lambda: runs == 1 and not any(
        t.get_name().endswith("legacy:responseTime") for t in asyncio.all_tasks()))
    await health.check_now()
    assert runs == 2
    assert health.ready().ok


async def test_a_check_that_raises_fails_with_its_error_text(health: Health) -> None:
    async def raises() -> None:
        raise RuntimeError("boom")

    health.add("cache", raises)
    await started(health)
    await health.check_now()
    assert not health.ready().ok
    entry = check_entry(health.report(), "cache:responseTime")
    assert entry["output"] == "RuntimeError: boom"
    assert entry["consecutiveFailures"] == 2


async def test_a_check_returning_false_fails(health: Health) -> None:
    async def says_no() -> bool:
        return False

    health.add("queue", says_no, timeout=0.5)
    await started(health)
    assert check_entry(health.report(), "queue:responseTime")["output"] == \
        "the check returned False"


async def test_a_check_that_is_not_async_fails_without_crashing(health: Health) -> None:
    health.add("sync", lambda: None)  # type: ignore[arg-type,return-value]
    await started(health)
    await health.check_now()
    entry = check_entry(health.report(), "sync:responseTime")
    assert entry["output"] == "the check returned NoneType, not an awaitable"
    assert not health.ready().ok


async def test_a_failing_non_critical_check_warns_but_stays_ready(health: Health) -> None:
    async def smtp() -> None:
        raise ConnectionRefusedError("smtp down")

    health.add("smtp", smtp, critical=False)
    await started(health)
    for _ in range(3):
        await health.check_now()
    assert health.ready().ok
    assert "smtp:responseTime" not in health.ready().body["checks"]  # not a gate
    report = health.report()
    assert report.ok
    assert report.body["status"] == "warn"
    entry = check_entry(report, "smtp:responseTime")
    assert entry["status"] == "warn"
    assert entry["critical"] is False


async def test_draining_fails_readiness_at_once_and_keeps_liveness(health: Health) -> None:
    await started(health)
    assert not health.draining
    health.start_draining()
    assert health.draining
    ready = health.ready()
    assert not ready.ok
    assert ready.body["output"] == "draining"
    assert health.live().ok
    report = health.report()
    assert not report.ok
    assert report.body["status"] == "fail"


async def test_a_lost_lock_connection_fails_readiness_without_waiting_for_a_pass(
        health: Health) -> None:
    wakeups = FakeWakeups()
    await started(health, wakeups=wakeups)
    assert check_entry(health.ready(), "fake:lockConnection")["status"] == "pass"
    wakeups.wakeups_connected = False
    ready = health.ready()
    assert not ready.ok
    assert "lock (LISTEN) connection is down" in ready.body["output"]
    assert check_entry(ready, "fake:lockConnection")["status"] == "fail"
    assert health.live().ok
    wakeups.wakeups_connected = True
    assert health.ready().ok


# ---- the report ----------------------------------------------------------------


async def test_the_report_is_health_json_with_latency_percentile_and_time(
        health: Health) -> None:
    health.add("smtp", _ok, critical=False)
    await started(health)
    for _ in range(4):
        await health.check_now()
    report = health.report()
    assert report.ok
    body = json.loads(json.dumps(report.body))  # JSON-ready as it is
    assert body["status"] == "pass"
    assert body["serviceId"] == "test"
    assert set(body["checks"]) == {"fake:responseTime", "smtp:responseTime", "eventLoop:lag"}
    entry = body["checks"]["fake:responseTime"][0]
    assert entry["componentType"] == "datastore"
    assert entry["observedUnit"] == "ms"
    assert entry["latencyMs"] >= 0.0
    assert entry["latencyP50Ms"] >= 0.0
    assert entry["time"].endswith("Z")


# ---- liveness ------------------------------------------------------------------


async def test_a_runner_loop_that_stops_ticking_fails_liveness() -> None:
    clock = TestClock()
    health = Health(HealthOptions(interval=1.0, timeout=0.2), clock=clock)
    loops = TaskSet("runner")
    loops.tick("covey-heartbeat", 1.0, clock.monotonic())
    await started(health, loops=loops)
    try:
        assert health.live().ok
        await clock.advance(2.5)
        assert health.live().ok  # within 3 intervals
        await clock.advance(1.0)
        live = health.live()
        assert not live.ok
        loop = next(e for e in live.body["checks"]["runnerLoops:ticking"]
                    if e["componentId"] == "covey-heartbeat")
        assert loop["status"] == "fail"
        assert "no tick for 3.5 s" in loop["output"]
        assert health.ready().ok  # readiness is about dependencies
        loops.tick("covey-heartbeat", 1.0, clock.monotonic())
        assert health.live().ok
    finally:
        await loops.close()
        await health._tasks.close()  # the health loop


async def test_a_loop_waiting_on_storage_is_not_stalled() -> None:
    clock = TestClock()
    health = Health(HealthOptions(interval=1.0, timeout=0.2), clock=clock)
    loops = TaskSet("runner")
    loops.tick("covey-heartbeat", 1.0, clock.monotonic())
    loops.busy("covey-heartbeat", clock.monotonic())
    await started(health, loops=loops)
    try:
        await clock.advance(30.0)  # a database that does not answer
        assert health.live().ok
        loop = next(e for e in health.report().body["checks"]["runnerLoops:ticking"]
                    if e["componentId"] == "covey-heartbeat")
        assert loop["status"] == "warn"
        assert loop["output"] == "busy for 30.0 s"
    finally:
        await loops.close()
        await health._tasks.close()  # the health loop


async def test_event_loop_lag_over_the_limit_for_three_checks_fails_liveness() -> None:
    health = Health(HealthOptions(interval=0.02, timeout=0.2, lag_limit=0.05, lag_checks=3))
    loops = TaskSet("runner")
    await started(health, loops=loops)

    async def block_the_loop() -> None:
        while True:
            time.sleep(0.1)  # noqa: ASYNC251 -- the blocking handler this test is about
            await asyncio.sleep(0)

    try:
        assert health.live().ok
        blocker = loops.spawn(block_the_loop())
        await until(lambda: not health.live().ok, timeout=10)
        lag = check_entry(health.live(), "eventLoop:lag")
        assert lag["status"] == "fail"
        assert "lagged over 0.05 s" in lag["output"]
        blocker.cancel()
        await until(lambda: health.live().ok, timeout=10)
    finally:
        await loops.close()
        await health._tasks.close()  # the health loop


# ---- a real cluster -------------------------------------------------------------


async def test_a_cluster_starts_its_health_checks_and_drains_on_stop() -> None:
    cluster = Cluster(CoveyConfig(database_url="memory://", shards=4,
                                  health=HealthOptions(interval=0.05)))
    assert not cluster.health.ready().ok
    async with cluster:
        await until(lambda: cluster.health.ready().ok
                    and "runnerLoops:ticking" in cluster.health.report().body["checks"])
        report = cluster.health.report()
        assert report.body["serviceId"] == str(cluster.address)
        checks = report.body["checks"]
        assert {"memory:responseTime", "shards:owned", "eventLoop:lag",
                "runnerLoops:ticking"} <= set(checks)
        await until(lambda: check_entry(cluster.health.report(),
                                        "shards:owned")["observedValue"] == 4)
        loops = {e["componentId"] for e in checks["runnerLoops:ticking"]}
        assert {"covey-heartbeat", "covey-membership", "covey-health"} <= loops
        assert cluster.health.live().ok
    assert not cluster.health.ready().ok
    assert cluster.health.draining


async def test_a_runner_whose_background_task_crashed_is_not_live() -> None:
    cluster = Cluster(CoveyConfig(database_url="memory://", shards=4))
    async with cluster:
        assert cluster.health.live().ok

        async def broken() -> None:
            raise RuntimeError("membership bug")

        cluster.sharding.refresh_membership = broken  # type: ignore[method-assign]
        cluster.sharding.wake()  # the membership loop reads now, and crashes
        await until(lambda: cluster.crashed is not None)
        live = cluster.health.live()
        assert not live.ok  # an embedded runner that died: restart the pod
        crashed = check_entry(live, "runner:crashed")
        assert crashed["output"].endswith("RuntimeError: membership bug")
        assert not cluster.health.ready().ok


async def test_the_sqlite_round_trip_is_checked(tmp_path: Path) -> None:
    config = CoveyConfig(database_url=f"sqlite:///{tmp_path / 'covey.db'}", shards=4)
    async with Cluster(config) as cluster:
        await cluster.health.check_now()
        entry = check_entry(cluster.health.report(), "sqlite:responseTime")
        assert entry["status"] == "pass"
        assert entry["latencyMs"] > 0.0


async def test_a_client_only_member_has_the_storage_check_only() -> None:
    async with TestCluster(runners=1, shards=4) as cluster:
        client = cluster.client_member
        await until(lambda: client.health.ready().ok)
        assert set(client.health.report().body["checks"]) == {"memory:responseTime",
                                                              "eventLoop:lag"}


async def test_a_runner_owning_fewer_shards_than_assigned_warns() -> None:
    # a test clock: no loop runs unless told, so nothing re-acquires the shard
    async with TestCluster(runners=1, shards=4, clock=TestClock()) as cluster:
        runner = cluster.runners[0]
        await runner.health.check_now()
        assert check_entry(runner.health.report(), "shards:owned")["status"] == "pass"
        taken = next(iter(runner.sharding.owned))
        del runner.sharding.owned[taken]  # as while a peer still holds it
        await runner.health.check_now()
        entry = check_entry(runner.health.report(), "shards:owned")
        assert entry["status"] == "warn"
        assert entry["observedValue"] == 3
        assert entry["assigned"] == 4
        assert "owns 3 of the 4 shards" in entry["output"]
        assert runner.health.ready().ok
        runner.sharding.owned[taken] = 1


async def test_a_singleton_that_stops_beating_trips_its_dead_mans_switch() -> None:
    beating = asyncio.Event()
    beating.set()

    def declare(cluster: Cluster) -> None:
        @cluster.singleton("reporter", expected_interval=0.05)
        async def reporter(ctx: SingletonContext[None]) -> None:
            while True:
                await beating.wait()
                ctx.beat()
                await asyncio.sleep(0.01)

    async with TestCluster(runners=1, shards=4, configure=declare) as cluster:
        runner = cluster.runners[0]
        await until(lambda: "reporter" in runner.singletons.running())
        await runner.health.check_now()
        assert check_entry(runner.health.report(), "singletons:running")["status"] == "pass"
        beating.clear()

        async def tripped() -> bool:
            await runner.health.check_now()
            status: str = check_entry(runner.health.report(), "singletons:running")["status"]
            return status == "warn"

        await until(tripped)
        entry = check_entry(runner.health.report(), "singletons:running")
        assert "reporter has not beaten for" in entry["output"]
        assert runner.health.ready().ok  # a warning, not a readiness failure


# ---- settings -------------------------------------------------------------------


def test_health_settings_come_from_the_environment() -> None:
    config = CoveyConfig.from_env({"COVEY_HEALTH_INTERVAL": "0.5",
                                   "COVEY_HEALTH_FAILURES": "3"})
    assert config.health.interval == 0.5
    assert config.health.failures == 3
    assert "COVEY_HEALTH_TIMEOUT" in CoveyConfig.variables()


@pytest.mark.parametrize("env", [
    {"COVEY_HEALTH_INTERVAL": "0"}, {"COVEY_HEALTH_TIMEOUT": "nan"},
    {"COVEY_HEALTH_FAILURES": "0"}, {"COVEY_HEALTH_LAG_LIMIT": "inf"},
    {"COVEY_HEALTH_WINDOW": "soon"},
])
def test_bad_health_settings_are_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        CoveyConfig.from_env(env)
    assert caught.value.reason is Reason.CONFIG_INVALID

