"""``covey runners``: the registered runners, their state, shards and heartbeat age.

Reads the runner registry in storage (it joins nothing and registers nothing).
The shards shown are those the assignment gives each serving runner: every
runner computes the same assignment from the same live set (``docs/architecture.md``),
so this is what each one holds once rebalancing settles.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import click
from rich.table import Table

from covey.cli._output import console, emit, guarded, iso, json_option
from covey.core import CoveyConfig, ShardId
from covey.sharding.runtime import assign
from covey.storage import RunnerInfo, open_storage

#: registrations older than this are deleted by the next runner start anyway
#: (the machine-id expiry of every backend), so they are not worth listing
_HORIZON = 300.0


@dataclass(frozen=True)
class RunnerRow:
    """One runner as ``covey runners`` shows it.

    ``state``: ``serving`` (heartbeat fresh, serves shard groups), ``client``
    (a client-only member: routes calls, hosts nothing), ``stale`` (missed
    heartbeats for longer than ``COVEY_SHARDING_RUNNER_TTL``: dead or paused; it
    is expired by the next membership read of a live runner).
    """

    info: RunnerInfo
    state: str
    shards: tuple[ShardId, ...]
    heartbeat_age: float

    def document(self) -> dict[str, object]:
        return {
            "address": str(self.info.address),
            "state": self.state,
            "machine_id": self.info.machine_id,
            "groups": list(self.info.groups),
            "weight": self.info.weight,
            "shard_count": len(self.shards),
            "shards": [str(s) for s in self.shards],
            "last_heartbeat": iso(self.info.last_heartbeat),
            "heartbeat_age_s": round(self.heartbeat_age, 3),
        }


def runner_rows(runners: list[RunnerInfo], config: CoveyConfig, now: float) -> list[RunnerRow]:
    """State and assigned shards of each registered runner (by address)."""
    ttl = config.sharding.runner_ttl

    def state(r: RunnerInfo) -> str:
        if r.last_heartbeat < now - ttl:
            return "stale"
        return "serving" if r.weight > 0 and r.groups else "client"

    serving = [r for r in runners if state(r) == "serving"]
    groups = sorted({g for r in serving for g in r.groups})
    assignment = assign([ShardId(g, i) for g in groups for i in range(1, config.shards + 1)],
                        serving)
    rows = []
    for r in sorted(runners, key=lambda r: str(r.address)):
        shards = tuple(sorted(s for s, owner in assignment.items() if owner == r.address))
        rows.append(RunnerRow(r, state(r), shards, max(0.0, now - r.last_heartbeat)))
    return rows


async def _read(config: CoveyConfig) -> list[RunnerInfo]:
    async with open_storage(config) as storage:
        return await storage.runners.live_runners(max_age=_HORIZON)


def shard_ranges(shards: tuple[ShardId, ...], width: int = 48) -> str:
    """``default:1-4,9`` (per group, consecutive numbers as ranges), shortened to ``width``."""
    parts: list[str] = []
    by_group: dict[str, list[int]] = {}
    for s in shards:
        by_group.setdefault(s.group, []).append(s.id)
    for group, numbers in by_group.items():
        spans: list[str] = []
        start = prev = numbers[0]
        for n in [*numbers[1:], None]:
            if n is not None and n == prev + 1:
                prev = n
                continue
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            if n is not None:
                start = prev = n
        parts.append(f"{group}:{','.join(spans)}")
    text = " ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def runners_table(rows: list[RunnerRow], shards_per_group: int) -> Table:
    table = Table(title=f"runners ({len(rows)}; {shards_per_group} shards per group)")
    for column in ("address", "state", "machine id", "groups", "weight", "shards",
                   "shard ids", "last heartbeat"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in ("machine id", "weight", "shards") else
                         "left")
    for row in rows:
        table.add_row(str(row.info.address), row.state, str(row.info.machine_id),
                      ",".join(row.info.groups) or "-", str(row.info.weight),
                      str(len(row.shards)), shard_ranges(row.shards),
                      f"{row.heartbeat_age:.1f} s ago")
    return table


@click.command()
@json_option
def runners(as_json: bool) -> None:
    """Registered runners: state, assigned shards and heartbeat age.

    States: serving, client (client-only member) and stale (missed heartbeats
    for longer than COVEY_SHARDING_RUNNER_TTL).
    """
    config = guarded(CoveyConfig.from_env, as_json=as_json)
    found = guarded(lambda: asyncio.run(_read(config)), as_json=as_json)
    rows = runner_rows(found, config, time.time())
    if as_json:
        emit({"shards_per_group": config.shards, "runners": [r.document() for r in rows]})
    else:
        console().print(runners_table(rows, config.shards))
