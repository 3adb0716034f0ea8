"""``covey run`` / ``covey status`` / ``covey migrate`` (and ``covey jobs``)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from covey.cli._jobs import jobs
from covey.cluster import Cluster
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


main.add_command(jobs)


@main.command()
def status() -> None:
    """Connect, apply pending migrations and show what the store holds."""
    _run(_info, show=True)


@main.command()
@click.argument("target")
@click.option("--log-level", default="INFO", show_default=True,
              help="Python logging level for covey's loggers.")
def run(target: str, log_level: str) -> None:
    """Run a runner: TARGET is 'module:attribute', a covey.Cluster or a function making one.

    Serves until SIGTERM or SIGINT, then leaves gracefully (deregisters first, lets
    in-flight handlers finish, releases its shards).
    """
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = _load_cluster(target)
    try:
        asyncio.run(_serve(cluster))
    except ClusterError as exc:
        Console(stderr=True).print(f"[red]error[/red] ({exc.reason.value}): {exc}")
        sys.exit(2)


async def _serve(cluster: Cluster) -> None:
    def announce(ready: Cluster) -> None:
        click.echo(f"covey runner {ready.address or 'client-only'} ready")
        sys.stdout.flush()

    await cluster.serve(on_ready=announce)


def _load_cluster(target: str) -> Cluster:
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter("expected 'module:attribute'", param_hint="TARGET")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}",
                                 param_hint="TARGET") from exc
    value = getattr(module, attribute, None)
    if callable(value) and not isinstance(value, Cluster):
        value = value()
    if not isinstance(value, Cluster):
        raise click.BadParameter(f"{target} is not a covey.Cluster", param_hint="TARGET")
    return value


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
