"""``covey status`` / ``covey migrate``: storage-level operations."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from covey.core import ClusterError, CoveyConfig
from covey.storage import StorageInfo, open_storage


async def _info(config: CoveyConfig) -> StorageInfo:
    async with open_storage(config) as storage:
        return await storage.info()


def info_table(info: StorageInfo, title: str = "covey storage") -> Table:
    """A two-column table of what a store holds."""
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("backend", info.backend)
    table.add_row("location", info.location)
    table.add_row("schema version", str(info.schema_version))
    table.add_row("shards per group", str(info.shards))
    table.add_row("registered runners", str(info.runners))
    table.add_row("messages", f"{info.messages_total} ({info.messages_unprocessed} unprocessed)")
    return table


@click.group()
def main() -> None:
    """covey: sharded entities, durable messages, singletons, cron and jobs."""


@main.command()
def status() -> None:
    """Connect, apply pending migrations and show what the store holds."""
    _run(_info, show=True)


@main.command()
def migrate() -> None:
    """Apply pending schema migrations (also done by every runner at start)."""
    _run(_info, show=False)
    click.echo("schema is up to date")


def _run(
    action: Callable[[CoveyConfig], Coroutine[Any, Any, StorageInfo]], *, show: bool
) -> None:
    console = Console()
    try:
        config = CoveyConfig.from_env()
        info = asyncio.run(action(config))
    except ClusterError as exc:
        console.print(f"[red]error[/red] ({exc.reason.value}): {exc}")
        sys.exit(2)
    if show:
        console.print(info_table(info))
