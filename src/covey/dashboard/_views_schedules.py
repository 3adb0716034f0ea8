"""The schedules view: every cron's last and next run, every singleton's beat.

Crons and singletons are declared in the application's code: the member serving
the dashboard knows those declared on it. A cron that is only found in storage
(``covey dashboard`` runs no application code) is listed from its stored ticks.
Reads are bounded: one page of stored ticks each way (:data:`TICK_PAGE`), one
state read per singleton, the shard table once.
"""

from __future__ import annotations

from typing import Any

from covey.core import MsgpackCodec
from covey.core.runtime import shard_for
from covey.dashboard._source import DashboardSource, inspection_of
from covey.dashboard._views import Params, View
from covey.singletons.runtime import CRON_ENTITY, CronSpec
from covey.storage import MessageRecord

#: stored ticks read per request, each way (pending and done)
TICK_PAGE = 500
#: a tick that has not run this long after it came due makes its cron "late"
LATE_AFTER = 60.0

_codec = MsgpackCodec()


def _scheduled(record: MessageRecord) -> float | None:
    try:
        tick: dict[str, Any] = _codec.decode(record.message.payload, dict[str, Any])
        return float(tick["scheduled"])
    except Exception:  # not a tick this code can read: show the row without it
        return None


def _outcome(record: MessageRecord) -> str:
    if record.reply is None:
        return "-"
    if record.reply.is_error:
        return "error"
    try:
        return str(_codec.decode(record.reply.payload, Any))
    except Exception:
        return "?"


def _cron_row(name: str, spec: CronSpec | None, done: MessageRecord | None,
              pending: float | None, now: float) -> dict[str, Any]:
    last_scheduled = None if done is None else _scheduled(done)
    outcome = "-" if done is None else _outcome(done)
    next_run = spec.after(now) if spec is not None else pending
    health = "ok"
    if outcome in ("failed", "error"):
        health = "failing"
    elif spec is not None:
        previous = float(spec.ticks(now).get_prev(float))
        if now - previous > LATE_AFTER and (last_scheduled is None
                                            or last_scheduled < previous - 0.001):
            health = "no runs yet" if done is None else "late"
    elif done is None:
        health = "no runs yet"
    return {"name": name, "expression": "-" if spec is None else spec.expression,
            "tz": "-" if spec is None else str(spec.tz), "declared": spec is not None,
            "last_run": None if done is None else done.processed_at,
            "last_scheduled": last_scheduled, "outcome": outcome, "next_run": next_run,
            "health": health}


async def schedules(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Crons (last run, outcome, next run, health) and singletons (beat, health, where)."""
    declared = source.declarations()
    messages = source.storage.messages
    specs = {s.name: s for s in declared.crons}
    done: dict[str, MessageRecord] = {}
    for record in await messages.list_messages(CRON_ENTITY, state="processed", tag="tick",
                                               limit=TICK_PAGE):
        done.setdefault(record.message.address.entity_id, record)  # newest first
    pending: dict[str, float] = {}
    for record in await messages.list_messages(CRON_ENTITY, state="unprocessed", tag="tick",
                                               limit=TICK_PAGE):
        at = _scheduled(record)
        name = record.message.address.entity_id
        if at is not None and (name not in pending or at < pending[name]):
            pending[name] = at
    names = sorted(set(specs) | set(done) | set(pending))
    crons = [_cron_row(n, specs.get(n), done.get(n), pending.get(n), now) for n in names]
    owners = {(r.group, r.shard): r.owner for r in await inspection_of(source.storage).shards()}
    singletons = []
    for spec in sorted(declared.singletons, key=lambda s: s.name):
        stored = await source.storage.state.get(spec.beat_key)
        last = None if stored is None else float(_codec.decode(stored.value, float))
        if spec.expected_interval is None:
            health = "ok (no beat expected)"
        elif last is not None and now - last <= 2 * spec.expected_interval:
            health = "ok"
        else:
            health = "stuck"
        shard = shard_for(f"covey.singleton/{spec.name}", source.config.shards, spec.group)
        singletons.append({"name": spec.name, "interval": spec.expected_interval,
                           "last_beat": last, "health": health,
                           "runner": owners.get((shard.group, shard.id), "-"),
                           "shard": str(shard)})
    return {"title": "Schedules", "crons": crons, "singletons": singletons}


VIEWS = [View("schedules", "schedules", schedules)]
