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

After downtime a ``from_previous`` cron resumes from the last tick stored for
it (the manager reads the unprocessed ticks on acquisition): the missed ticks
younger than ``skip_if_older_than`` — at most :data:`MAX_CATCH_UP`, the newest —
are stored and run late, in order; the older ones are counted as skipped and
never stored. Without ``from_previous`` the schedule continues from now.

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
    metrics,
)
from covey.core.runtime import TaskSet, check_text, inject_trace, internal_span, shard_for
from covey.entities import Entity, rpc
from covey.sharding.runtime import Envelope, Messenger
from covey.singletons._checks import check_name, check_seconds, invalid
from covey.storage import Message, MessageStorage

log = logging.getLogger("covey.cron")

CRON_ENTITY = "covey.Cron"
_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

MAX_CATCH_UP = 1000
"""After downtime, a ``from_previous`` cron stores at most this many missed ticks
(the newest); older missed ticks are skipped and counted."""
_MAX_AHEAD = 100  # ticks stored per call beyond the due ones (the look-ahead window)
_COUNT_LIMIT = 100_000  # skipped ticks counted one by one (~30 µs each) per gap, at most
_PAGE, _MAX_PAGES = 500, 100  # listing the unprocessed ticks of every cron on acquisition


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
        skip = check_seconds("skip_if_older_than", self.skip_if_older_than, positive=True,
                             infinite=True)
        object.__setattr__(self, "skip_if_older_than", skip)  # a timedelta becomes seconds
        if not callable(self.fn):
            raise invalid("fn", f"{self.fn!r} is not an async function")

    def after(self, instant: float) -> float:
        """The first scheduled instant strictly after ``instant`` (Unix seconds)."""
        start = dt.datetime.fromtimestamp(instant, self.tz)
        it = croniter(self.expression, start,
                      second_at_beginning=len(self.expression.split()) == 6)
        return float(it.get_next(float))

    def ticks(self, instant: float) -> Any:
        """A croniter positioned at ``instant``: ``get_next``/``get_prev`` walk from it."""
        return croniter(self.expression, dt.datetime.fromtimestamp(instant, self.tz),
                        second_at_beginning=len(self.expression.split()) == 6)


def cron_spec(name: str, expression: str, fn: CronFn, *, tz: str,
              skip_if_older_than: dt.timedelta | float, from_previous: bool) -> CronSpec:
    """A checked :class:`CronSpec` from what an application declares: a zone
    name, and ``skip_if_older_than`` as seconds or a ``timedelta``."""
    return CronSpec(check_name(name), check_expression(expression), fn, time_zone(tz),
                    check_seconds("skip_if_older_than", skip_if_older_than, positive=True,
                                  infinite=True),
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
                 shards: int, *, messages: MessageStorage, tasks: TaskSet) -> None:
        self._messenger = messenger
        self._messages = messages
        self._snowflake = snowflake
        self._clock = clock
        self._shards = shards
        self._codec = MsgpackCodec()
        self.specs: dict[str, CronSpec] = {}
        # per cron: every tick up to this instant is stored, or was counted as skipped
        self._horizon: dict[str, float] = {}
        # per cron: the newest stored tick already due when the schedule resumed;
        # later due ticks are stored only when it runs, so the late ticks run in order
        self._backlog: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = tasks  # the look-ahead top-ups after an acquisition
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
        if self._tasks.closed:  # stopped: the next owner schedules
            return
        for spec in self.specs.values():
            if self.shard_of(spec.name) in shards:
                self._horizon.pop(spec.name, None)  # whatever we knew may be stale
                self._backlog.pop(spec.name, None)
                self._tasks.spawn(self._top_up(spec), name=f"covey-cron-{spec.name}")

    async def shards_lost(self, shards: set[ShardId], *, graceful: bool) -> None:
        for spec in self.specs.values():
            if self.shard_of(spec.name) in shards:
                self._horizon.pop(spec.name, None)
                self._backlog.pop(spec.name, None)

    async def stop(self) -> None:
        """Cancel the schedule top-ups under way."""
        await self._tasks.cancel_all()

    # ---- scheduling ------------------------------------------------------

    async def _top_up(self, spec: CronSpec) -> None:
        try:
            await self.ensure(spec, None)
        except ClusterError as exc:  # the stored ticks still run, and retry the resume
            log.warning("cron %s: scheduling after acquisition failed (%s)", spec.name, exc)

    async def ensure(self, spec: CronSpec, last: float | None) -> None:
        """Store the ticks after the last one stored, up to the look-ahead window.

        ``last`` is a tick known to be stored (the one running), or ``None``.
        Serialized per cron, so the first call after an acquisition (this one or
        a stored tick's) learns where the schedule stands before any other.
        """
        async with self._locks.setdefault(spec.name, asyncio.Lock()):
            now = self._clock.now()
            base = self._horizon.get(spec.name)
            if base is None:
                base = await self._resume_from(spec, last, now)
                self._horizon[spec.name] = base
                if spec.from_previous and base < now and base != last:
                    self._backlog[spec.name] = base
            backlog = self._backlog.get(spec.name)
            if backlog is not None:
                if last is None or last < backlog:
                    return  # stored due ticks run first; the newest one goes on from here
                del self._backlog[spec.name]
            if spec.from_previous:
                start = max(base, now - spec.skip_if_older_than)
                if start < now:  # a backlog: bound it
                    start = self._catch_up_floor(spec, start, now)
                if start > base:
                    await self._skip(spec, base, start)
            else:
                start = max(base, now)
            self._horizon[spec.name] = start  # the skipped ones are accounted for
            instant = spec.after(start)
            # due ticks after start: at most MAX_CATCH_UP; then the look-ahead
            for _ in range(MAX_CATCH_UP + _MAX_AHEAD):
                await self._schedule(spec, instant)
                self._horizon[spec.name] = instant
                if instant > now + spec.lookahead:
                    break
                instant = spec.after(instant)

    async def _resume_from(self, spec: CronSpec, last: float | None, now: float) -> float:
        """Where the schedule stands when nothing is known: now, or with
        ``from_previous`` the last tick stored (now if none is: first start)."""
        if not spec.from_previous:
            return now
        # Each stored tick's handler stores the next ones before it completes, so
        # the newest tick stored is unprocessed (or is ``last``, running now).
        stored = await self._last_stored(spec.name)
        known = [t for t in (stored, last) if t is not None]
        return max(known) if known else now

    async def _last_stored(self, name: str) -> float | None:
        """The newest unprocessed tick stored for cron ``name``."""
        newest: float | None = None
        before: int | None = None
        for _ in range(_MAX_PAGES):
            records = await self._messages.list_messages(
                CRON_ENTITY, state="unprocessed", tag="tick", limit=_PAGE, before_id=before)
            for record in records:
                if record.message.address.entity_id != name:
                    continue
                try:
                    tick: TickRequest = self._codec.decode(record.message.payload, TickRequest)
                except Exception:  # not ours to judge here: the handler refuses it
                    continue
                newest = tick.scheduled if newest is None else max(newest, tick.scheduled)
            if len(records) < _PAGE:
                return newest
            before = records[-1].message.id
        log.warning("cron %s: more than %d unprocessed ticks; resuming from the newest "
                    "of the first %d", name, _PAGE * _MAX_PAGES, _PAGE * _MAX_PAGES)
        return newest

    @staticmethod
    def _catch_up_floor(spec: CronSpec, start: float, now: float) -> float:
        """``start``, or later if more than :data:`MAX_CATCH_UP` ticks are due after
        it: then the instant after which the newest :data:`MAX_CATCH_UP` lie."""
        ticks = spec.ticks(spec.after(now))  # from the first tick after now, backwards
        for _ in range(MAX_CATCH_UP):
            if ticks.get_prev(float) <= start:
                return start
        return max(start, float(ticks.get_prev(float)))

    async def _skip(self, spec: CronSpec, start: float, end: float) -> None:
        """Count and log (once) the ticks in ``(start, end]``, which are never stored."""
        ticks, count = spec.ticks(start), 0
        while count < _COUNT_LIMIT and ticks.get_next(float) <= end:
            count += 1
            if count % 1000 == 0:
                await asyncio.sleep(0)  # a week of 1-second ticks: let the runner breathe
        if count:
            more = "at least " if count == _COUNT_LIMIT else ""
            log.warning("cron %s: %s%d missed ticks skipped (older than %.0f s, or beyond "
                        "the %d newest)", spec.name, more, count, spec.skip_if_older_than,
                        MAX_CATCH_UP)
            metrics.CRON_TICKS.labels(spec.name, "skipped").inc(count)

    async def _schedule(self, spec: CronSpec, instant: float) -> None:
        message = Message(
            id=self._snowflake.next_id(),
            address=EntityAddress(CRON_ENTITY, spec.name, self.shard_of(spec.name)),
            tag="tick",
            payload=self._codec.encode(TickRequest(scheduled=instant)),
            primary_key=tick_key(instant),
            deliver_at=instant,
            headers=inject_trace({}),  # the tick's span links to the one that scheduled it
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
        with internal_span(f"run cron {name}", attributes=lambda: {
            "covey.cron.name": name, "covey.cron.scheduled": when.isoformat(),
            "covey.cron.lateness_s": round(lateness, 3),
        }) as span:
            try:
                await spec.fn(CronTick(name, when, lateness))
            except Exception as exc:
                log.exception("cron %s: tick %s failed", name, when.isoformat())
                metrics.CRON_TICKS.labels(name, "failed").inc()
                span.fail(f"the tick failed: {type(exc).__name__}", exc)
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
