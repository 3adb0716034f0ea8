"""``covey runners``: the registered runners, their state, shards and heartbeat age.

Reads the runner registry in storage (it joins nothing and registers nothing).
The shards shown are those the assignment gives each serving runner: every
runner computes the same assignment from the same live set (``docs/architecture.md``),
so this is what each one holds once rebalancing settles (the rows are computed by
:mod:`covey.dashboard`'s runners view, which shows the same).
"""

from __future__ import annotations

import asyncio
import time

import click
from rich.table import Table

from covey.cli._output import console, emit, guarded, iso, json_option
from covey.core import CoveyConfig
from covey.dashboard.runtime import HORIZON, RunnerRow, runner_rows, shard_ranges
from covey.storage import RunnerInfo, open_storage


def document(row: RunnerRow) -> dict[str, object]:
    """One runner in ``covey runners --json``."""
    return {
        "address": str(row.info.address),
        "state": row.state,
        "machine_id": row.info.machine_id,
        "groups": list(row.info.groups),
        "weight": row.info.weight,
        "shard_count": len(row.shards),
        "shards": [str(s) for s in row.shards],
        "last_heartbeat": iso(row.info.last_heartbeat),
        "heartbeat_age_s": round(row.heartbeat_age, 3),
    }


async def _read(config: CoveyConfig) -> list[RunnerInfo]:
    async with open_storage(config) as storage:
        return await storage.runners.live_runners(max_age=HORIZON)


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
        emit({"shards_per_group": config.shards, "runners": [document(r) for r in rows]})
    else:
        console().print(runners_table(rows, config.shards))
