"""Views of the cluster itself: runners, the shard map, entities, health."""

from __future__ import annotations

from typing import Any

from covey.dashboard._runners import HORIZON, runner_rows, shard_ranges
from covey.dashboard._source import DashboardSource, inspection_of
from covey.dashboard._views import Params, View
from covey.health.runtime import read_entity_counts

#: a shard acquired this recently counts as a move on the shard map
MOVES_WINDOW = 600.0


async def runners(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Every registered runner: state, address, shards held and assigned, age, heartbeat."""
    storage = source.storage
    found = await storage.runners.live_runners(max_age=HORIZON)
    rows = runner_rows(found, source.config, now)
    held: dict[str, int] = {}
    for shard in await inspection_of(storage).shards():
        held[shard.owner] = held.get(shard.owner, 0) + 1
    reports = {r.runner: r for r in await read_entity_counts(
        storage.state, [str(r.info.address) for r in rows])}
    out = []
    for row in rows:
        address = str(row.info.address)
        report = reports.get(address)
        out.append({
            "address": address, "state": row.state, "machine_id": row.info.machine_id,
            "groups": ",".join(row.info.groups) or "-", "weight": row.info.weight,
            "held": held.get(address, 0), "assigned": len(row.shards),
            "ranges": shard_ranges(row.shards),
            "started": None if report is None else report.started,
            "entities": None if report is None else sum(report.entities.values()),
            "heartbeat": row.info.last_heartbeat,
        })
    return {"title": "Runners", "runners": out, "shards_per_group": source.config.shards,
            "ttl": source.config.sharding.runner_ttl}


async def shards(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Owner and epoch of every acquired shard; the moves of the last minutes."""
    rows = await inspection_of(source.storage).shards()
    moves = sorted((r for r in rows if r.acquired_at is not None
                    and r.acquired_at >= now - MOVES_WINDOW),
                   key=lambda r: r.acquired_at or 0.0, reverse=True)
    owners = sorted({r.owner for r in rows})
    groups = sorted({r.group for r in rows})
    return {"title": "Shards", "shards": rows, "moves": moves[:50], "move_count": len(moves),
            "owners": owners, "groups": groups, "window": MOVES_WINDOW,
            "shards_per_group": source.config.shards}


async def entities(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Active entity instances by type, summed over the live runners' last reports."""
    storage = source.storage
    live = await storage.runners.live_runners(max_age=source.config.sharding.runner_ttl)
    reports = await read_entity_counts(storage.state, sorted(str(r.address) for r in live))
    totals: dict[str, int] = {}
    where: dict[str, list[tuple[str, int]]] = {}
    for report in reports:
        for kind, n in report.entities.items():
            totals[kind] = totals.get(kind, 0) + n
            where.setdefault(kind, []).append((report.runner, n))
    types = [{"type": kind, "active": totals[kind], "runners": sorted(where[kind])}
             for kind in sorted(totals)]
    return {"title": "Entities", "types": types, "reports": reports,
            "unreported": len(live) - len(reports)}


async def health(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """This member's health report (every check), and the runners' liveness in short."""
    report = source.health.report()
    body = report.body
    checks = [{"name": name, **entry} for name, entries in sorted(
        (body.get("checks") or {}).items()) for entry in entries]
    found = await source.storage.runners.live_runners(max_age=HORIZON)
    states: dict[str, int] = {}
    for row in runner_rows(found, source.config, now):
        states[row.state] = states.get(row.state, 0) + 1
    return {"title": "Health", "status": body.get("status", "?"),
            "output": body.get("output"), "service": body.get("serviceId", "-"),
            "checks": checks, "ready": source.health.ready().ok, "live": source.health.live().ok,
            "runner_states": sorted(states.items())}


VIEWS = [View("runners", "runners", runners), View("shards", "shards", shards),
         View("entities", "entities", entities), View("health", "health", health)]
