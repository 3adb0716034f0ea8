"""Cluster cron: each tick runs once, whatever the number of runners.

A tick is a persisted message to the entity ``covey.Cron/<name>`` whose primary
key is the scheduled instant (UTC, ISO) and whose ``deliver_at`` is that instant,
so however many times it is scheduled — by several runners, after restarts —
one copy exists and it runs once. The owner of the cron's shard keeps a short
look-ahead of upcoming ticks stored (so a runner dying between ticks loses none),
extends it before running each tick (so the chain never stops, even if the
function hangs or fails) and again whenever it acquires the shard.

A tick that comes due more than ``skip_if_older_than`` late (all runners were
down) is skipped — logged and counted — instead of run, so a backlog never runs
in a burst (``inf``: never skipped). A function that raises is logged and
counted; the tick is not retried (that would run it twice).

A declaration is checked when it is made (:func:`check_expression`,
:func:`time_zone`, :class:`CronSpec`): a bad name, expression, time zone or
``skip_if_older_than`` is refused with ``invalid_argument`` naming the option.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from croniter import CroniterError, croniter
from pydantic import BaseModel

from covey.core import (
    MAX_NAME_BYTES,
    Clock,
    ClusterError,
    EntityAddress,
    MsgpackCodec,
    ShardId,
    SnowflakeGenerator,
    check_text,
    metrics,
    shard_for,
)
from covey.entities import Entity, rpc
from covey.sharding import Envelope, Messenger
from covey.singletons._checks import check_name, check_seconds, invalid
from covey.storage import Message

log = logging.getLogger("covey.cron")

CRON_ENTITY = "covey.Cron"
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class CronTick:
    """What a cron function receives.

    Attributes:
        name: the cron's name.
        scheduled: the instant this tick was scheduled for (timezone-aware, in the
            cron's time zone).
        lateness: seconds between ``scheduled`` and the moment the run started.
    """

    name: str
    scheduled: dt.datetime
    lateness: float


CronFn = Callable[[CronTick], Awaitable[None]]


def check_expression(expression: object) -> str:
    """A cron expression: 5 fields, or 6 with seconds first, that fires at all.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "expression"``)
            for anything croniter does not accept, and for a valid-looking
            expression no date matches (``"0 0 30 2 *"``: 30 February), which
            would otherwise fail each time the next tick is computed.
    """
    text = check_text("expression", expression, max_bytes=MAX_NAME_BYTES)
    six = len(text.split()) == 6
    if len(text.split()) not in (5, 6) or not croniter.is_valid(text, second_at_beginning=six):
        raise invalid("expression", f"{text!r} is not a cron expression (5 fields, or 6 "
                                    "with seconds first)")
    try:  # from a fixed instant: whether it ever fires does not depend on when we ask
        croniter(text, _EPOCH, second_at_beginning=six).get_next(float)
    except (CroniterError, ValueError) as exc:
        raise invalid("expression", f"{text!r} never fires ({exc})") from None
    return text


def time_zone(tz: object) -> zoneinfo.ZoneInfo:
    """The IANA time zone named ``tz``.

    Raises:
        ClusterError: ``invalid_argument`` (``details["field"] == "tz"``) for a
            name that is not a ``str`` or names no zone (a path, a directory of
            the zone database, NUL, ...).
    """
    name = check_text("tz", tz, max_bytes=MAX_NAME_BYTES)
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: "Europe" is a directory of the zone database, not a zone
        raise invalid("tz", f"unknown time zone {name!r}") from None


@dataclass(frozen=True)
class CronSpec:
    """A declared cron.

    Every field is checked when the spec is made (``invalid_argument`` naming
    it); ``skip_if_older_than`` is seconds > 0, ``inf`` for never.
    """

    name: str
    expression: str
    fn: CronFn
    tz: zoneinfo.ZoneInfo
    skip_if_older_than: float
    from_previous: bool
    lookahead: float = 10.0

    def __post_init__(self) -> None:
        check_name(self.name)
        check_expression(self.expression)
        if not isinstance(self.tz, dt.tzinfo):
            raise invalid("tz", f"{self.tz!r} is not a time zone")
        skip = check_seconds("skip_if_older_than", self.skip_if_older_than, infinite=True)
        object.__setattr__(self, "skip_if_older_than", skip)  # a timedelta becomes seconds
        if not callable(self.fn):
            raise invalid("fn", f"{self.fn!r} is not an async function")

    def after(self, instant: float) -> float:
        """The first scheduled instant strictly after ``instant`` (Unix seconds)."""
        start = dt.datetime.fromtimestamp(instant, self.tz)
        it = croniter(self.expression, start,
                      second_at_beginning=len(self.expression.split()) == 6)
        return float(it.get_next(float))


def cron_spec(name: str, expression: str, fn: CronFn, *, tz: str,
              skip_if_older_than: dt.timedelta | float, from_previous: bool) -> CronSpec:
    """A checked :class:`CronSpec` from what an application declares: a zone
    name, and ``skip_if_older_than`` as seconds or a ``timedelta``."""
    return CronSpec(check_name(name), check_expression(expression), fn, time_zone(tz),
                    check_seconds("skip_if_older_than", skip_if_older_than, infinite=True),
                    from_previous)


class TickRequest(BaseModel):
    """The payload of a tick message."""

    scheduled: float


def tick_key(instant: float) -> str:
    """The deterministic primary key of a tick: its instant in UTC, ISO, ms."""
    return dt.datetime.fromtimestamp(instant, dt.UTC).isoformat(timespec="milliseconds")


class CronManager:
    """Keeps every cron's upcoming ticks stored and runs them when they come due."""

    def __init__(self, messenger: Messenger, snowflake: SnowflakeGenerator, clock: Clock,
                 shards: int) -> None:
        self._messenger = messenger
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self._codec = MsgpackCodec()
        self.specs: dict[str, CronSpec] = {}
        self._horizon: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.entity_type = self._make_entity()

    def add(self, spec: CronSpec) -> None:
        if spec.name in self.specs:
            raise invalid("name", f"cron {spec.name!r} is declared twice")
        self.shard_of(spec.name)  # a name no shard can be computed for is refused now
        self.specs[spec.name] = spec

    def shard_of(self, name: str) -> ShardId:
        return shard_for(name, self._shards)

    # ---- ShardListener ---------------------------------------------------

    async def shards_acquired(self, shards: dict[ShardId, int]) -> None:
        for spec in self.specs.values():
            if self.shard_of(spec.name) in shards:
                self._horizon.pop(spec.name, None)  # whatever we knew may be stale
                self._spawn(self.ensure(spec, None))

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        for spec in self.specs.values():
            if self.shard_of(spec.name) in shards:
                self._horizon.pop(spec.name, None)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    # ---- scheduling ------------------------------------------------------

    async def ensure(self, spec: CronSpec, last: float | None) -> None:
        """Store the ticks from ``last`` (or now) up to the look-ahead window."""
        now = self._clock.now()
        if last is None:
            base = now
        elif spec.from_previous:
            base = max(last, now - spec.skip_if_older_than)
            skipped = self._count(spec, last, base)
            if skipped:
                log.warning("cron %s: %d ticks older than %.0f s skipped", spec.name,
                            skipped, spec.skip_if_older_than)
                metrics.CRON_TICKS.labels(spec.name, "skipped").inc(skipped)
        else:
            base = max(last, now)
        base = max(base, self._horizon.get(spec.name, base))
        instant = spec.after(base)
        for _ in range(100):
            await self._schedule(spec, instant)
            self._horizon[spec.name] = instant
            if instant > now + spec.lookahead:
                break
            instant = spec.after(instant)

    def _count(self, spec: CronSpec, start: float, end: float) -> int:
        count, instant = 0, spec.after(start)
        while instant <= end and count < 100_000:
            count += 1
            instant = spec.after(instant)
        return count

    async def _schedule(self, spec: CronSpec, instant: float) -> None:
        message = Message(
            id=self._snowflake.next_id(),
            address=EntityAddress(CRON_ENTITY, spec.name, self.shard_of(spec.name)),
            tag="tick",
            payload=self._codec.encode(TickRequest(scheduled=instant)),
            primary_key=tick_key(instant),
            deliver_at=instant,
        )
        await self._messenger.call(Envelope(message, persisted=True), timeout=30, discard=True)

    # ---- running ---------------------------------------------------------

    async def run_tick(self, name: str, scheduled: float) -> str:
        spec = self.specs.get(name)
        if spec is None:
            log.warning("tick for undeclared cron %r dropped", name)
            return "unknown"
        try:
            await self.ensure(spec, scheduled)  # first: the chain must not depend on fn
        except ClusterError as exc:
            log.warning("cron %s: scheduling the next ticks failed (%s); "
                        "the shard owner retries on acquisition", name, exc)
        lateness = self._clock.now() - scheduled
        when = dt.datetime.fromtimestamp(scheduled, spec.tz)
        if lateness > spec.skip_if_older_than:
            log.warning("cron %s: tick %s skipped, %.1f s late (skip_if_older_than=%.0f s)",
                        name, when.isoformat(), lateness, spec.skip_if_older_than)
            metrics.CRON_TICKS.labels(name, "skipped").inc()
            return "skipped"
        metrics.CRON_LATENESS.labels(name).observe(max(lateness, 0.0))
        try:
            await spec.fn(CronTick(name, when, lateness))
        except Exception:
            log.exception("cron %s: tick %s failed", name, when.isoformat())
            metrics.CRON_TICKS.labels(name, "failed").inc()
            return "failed"
        metrics.CRON_TICKS.labels(name, "run").inc()
        return "run"

    def _make_entity(self) -> type[Entity]:
        manager = self

        class CronEntity(Entity, type=CRON_ENTITY, max_idle=300.0):
            @rpc(persisted=True, primary_key=lambda t: tick_key(t.scheduled))
            async def tick(self, request: TickRequest) -> str:
                return await manager.run_tick(self.ctx.entity_id, request.scheduled)

        return CronEntity

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
