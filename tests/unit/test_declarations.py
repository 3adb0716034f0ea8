"""Cron and singleton declarations: a bad one is refused when it is made.

Each refusal is a ``ClusterError`` with reason ``invalid_argument`` whose
``details["field"]`` names the option, raised by ``cluster.cron(...)`` /
``cluster.singleton(...)`` (or, for a repeated name, by the decorator) — never
at ``start()``, and nothing refused is registered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import zoneinfo
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import covey
from covey.core import ClusterError, CoveyConfig, Reason, TestClock
from covey.singletons.runtime import CronSpec, SingletonSpec
from covey.testing import TestCluster

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z

NUL = "a\x00b"
SURROGATE = "a\ud800b"
HUGE = "x" * (100 * 1024)


async def _fn(_: Any) -> None:
    return None


def _cluster() -> covey.Cluster:
    return covey.Cluster(CoveyConfig(database_url="memory://"))


def _refused(declare: Callable[[], object], field: str) -> ClusterError:
    with pytest.raises(ClusterError) as info:
        declare()
    error = info.value
    assert error.reason is Reason.INVALID_ARGUMENT, error
    assert not error.retryable
    assert error.details.get("field") == field, error
    return error


BAD_NAMES = [("empty", ""), ("NUL", NUL), ("lone surrogate", SURROGATE), ("100 KB", HUGE),
             ("int", 42)]


@pytest.mark.parametrize(("label", "name"), BAD_NAMES, ids=[n for n, _ in BAD_NAMES])
def test_bad_cron_and_singleton_names_are_refused(label: str, name: Any) -> None:
    cluster = _cluster()
    _refused(lambda: cluster.cron("* * * * *", name=name)(_fn), "name")
    _refused(lambda: cluster.singleton(name)(_fn), "name")


def test_an_empty_cron_name_does_not_fall_back_to_the_function_name() -> None:
    cluster = _cluster()
    _refused(lambda: cluster.cron("* * * * *", name=""), "name")
    cluster.cron("* * * * *")(_fn)  # no name: the function's name, as documented


SKIPS: list[tuple[str, object]] = [
    ("nan", math.nan), ("-inf", -math.inf), ("-1", -1), ("0", 0), ("str", "soon"),
    ("bool", True), ("None", None), ("timedelta(-1 s)", dt.timedelta(seconds=-1)),
    ("timedelta(0)", dt.timedelta(0)),
]


@pytest.mark.parametrize(("label", "value"), SKIPS, ids=[n for n, _ in SKIPS])
def test_bad_skip_if_older_than_is_refused(label: str, value: object) -> None:
    cluster = _cluster()
    _refused(lambda: cluster.cron("* * * * *", name="c", skip_if_older_than=value),  # type: ignore[arg-type]
             "skip_if_older_than")


TIME_ZONES: list[tuple[str, object]] = [
    ("int", 42), ("None", None), ("unknown", "Mars/Olympus"), ("empty", ""), ("NUL", "\x00"),
    ("absolute", "/etc/localtime"), ("a directory", "Europe"), ("100 KB", HUGE),
    ("lone surrogate", SURROGATE), ("a ZoneInfo", zoneinfo.ZoneInfo("UTC")),
]


@pytest.mark.parametrize(("label", "tz"), TIME_ZONES, ids=[n for n, _ in TIME_ZONES])
def test_bad_time_zones_are_refused(label: str, tz: object) -> None:
    _refused(lambda: _cluster().cron("* * * * *", name="c", tz=tz), "tz")  # type: ignore[arg-type]


EXPRESSIONS: list[tuple[str, object]] = [
    ("empty", ""), ("3 fields", "* * *"), ("minute 61", "61 * * * *"), ("words", "not a cron"),
    ("7 fields", "* * * * * * *"), ("step 0", "*/0 * * * *"), ("NUL", "\x00 * * * *"),
    ("never fires (30 February)", "0 0 30 2 *"), ("int", 42), ("None", None),
]


@pytest.mark.parametrize(("label", "expression"), EXPRESSIONS, ids=[n for n, _ in EXPRESSIONS])
def test_bad_expressions_are_refused_when_declared(label: str, expression: object) -> None:
    # refused by cluster.cron(...) itself, before a function is given
    _refused(lambda: _cluster().cron(expression, name="c"), "expression")  # type: ignore[arg-type]


INTERVALS: list[tuple[str, object]] = [
    ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("-1", -1), ("0", 0),
    ("str", "soon"), ("bool", True),
]


@pytest.mark.parametrize(("label", "value"), INTERVALS, ids=[n for n, _ in INTERVALS])
def test_bad_expected_interval_is_refused(label: str, value: object) -> None:
    _refused(lambda: _cluster().singleton("s", expected_interval=value),  # type: ignore[arg-type]
             "expected_interval")


def test_other_bad_singleton_options_are_refused() -> None:
    cluster = _cluster()
    _refused(lambda: cluster.singleton("s", shard_group=NUL), "shard_group")
    _refused(lambda: cluster.singleton("s", state=42), "state")  # type: ignore[arg-type]
    _refused(lambda: cluster.singleton("s")(42), "fn")  # type: ignore[arg-type]
    _refused(lambda: cluster.cron("* * * * *", name="c")(42), "fn")  # type: ignore[arg-type]


def test_specs_built_directly_are_checked_too() -> None:
    utc = zoneinfo.ZoneInfo("UTC")
    _refused(lambda: CronSpec(NUL, "* * * * *", _fn, utc, 60.0, False), "name")
    _refused(lambda: CronSpec("c", "* * * * *", _fn, utc, math.nan, False), "skip_if_older_than")
    _refused(lambda: SingletonSpec("", _fn, None, None), "name")
    _refused(lambda: SingletonSpec("s", _fn, None, -1.0), "expected_interval")


def test_repeated_names_are_refused_when_declared() -> None:
    cluster = _cluster()
    cluster.cron("* * * * *", name="twice")(_fn)
    _refused(lambda: cluster.cron("*/2 * * * *", name="twice")(_fn), "name")
    cluster.singleton("twice")(_fn)
    _refused(lambda: cluster.singleton("twice")(_fn), "name")


async def test_refused_declarations_register_nothing_and_the_cluster_serves() -> None:
    ran = asyncio.Event()

    def configure(cluster: covey.Cluster) -> None:
        for declare in (lambda: cluster.cron("0 0 30 2 *", name="feb30")(_fn),
                        lambda: cluster.cron("* * * * *", name=NUL)(_fn),
                        lambda: cluster.cron("* * * * *", name="nan", skip_if_older_than=math.nan),
                        lambda: cluster.singleton(NUL)(_fn),
                        lambda: cluster.singleton("nan", expected_interval=math.nan)(_fn)):
            with pytest.raises(ClusterError):
                declare()

        @cluster.singleton("good", expected_interval=1.0)
        async def good(ctx: covey.SingletonContext[None]) -> None:
            ctx.beat()
            ran.set()

    async with TestCluster(runners=1, configure=configure) as tc:
        await asyncio.wait_for(ran.wait(), 10)
        assert list(tc.runners[0].singletons.specs) == ["good"]
        assert tc.runners[0].crons is None


async def test_skip_if_older_than_inf_never_skips() -> None:
    """``inf``: a tick that comes due however late still runs (once)."""
    clock = TestClock(START + 0.5)
    ran: list[float] = []

    def configure(cluster: covey.Cluster) -> None:
        @cluster.cron("* * * * * *", name="tick", skip_if_older_than=math.inf)
        async def tick(t: covey.CronTick) -> None:
            ran.append(t.scheduled.timestamp())

    async def step(seconds: float) -> None:
        for _ in range(round(seconds / 0.25)):
            await clock.advance(0.25)
            for _ in range(20):
                await asyncio.sleep(0)

    async with TestCluster(runners=1, clock=clock, configure=configure) as tc:
        await step(2)
        await tc.stop_runner(0)  # the whole cluster is down for an hour, with the
        await clock.advance(3600)  # next 10 s of ticks stored (the look-ahead)
        await tc.add_runner()
        await step(2)
    counts = Counter(ran)
    assert max(counts.values()) == 1
    stored_before = [START + i for i in range(1, 14)]
    assert sorted(t for t in counts if t < START + 3600) == stored_before  # ran an hour late
    assert any(t > START + 3600 for t in counts)  # and the schedule goes on from now
