"""``covey run`` / ``serve-metrics`` / ``status`` / ``migrate`` / ``runners`` (and ``covey
jobs``, ``covey events``, ``covey workflows``).

Every command that prints accepts ``--json`` (one document on stdout, stable
keys, ids as strings; see :mod:`covey.cli._output` and ``docs/cli.md``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
from rich.table import Table

from covey.cli._dashboard import dashboard
from covey.cli._events import events, group_lags, lag_table, status_group_document
from covey.cli._jobs import jobs
from covey.cli._output import cell, console, emit, fail, guarded, json_option
from covey.cli._runners import runners
from covey.cli._webhooks import webhooks
from covey.cli._worker_http import WorkerEndpoint
from covey.cli._workflows import workflows
from covey.cluster import Cluster
from covey.core import ClusterError, CoveyConfig, configure_logging
from covey.events import GroupStats
from covey.realtime.runtime import ConnectionCounts, read_connections
from covey.storage import StorageInfo, open_storage

T = TypeVar("T")

DEFAULT_METRICS_PORT = 9100


async def _info(config: CoveyConfig) -> StorageInfo:
    async with open_storage(config) as storage:
        return await storage.info()


async def _status(config: CoveyConfig
                  ) -> tuple[StorageInfo, list[GroupStats], list[ConnectionCounts]]:
    """What the store holds, the real-time connections of each live runner, and the
    lag of every event group (if there are any: only then does it join as a
    client-only member to measure it)."""
    async with open_storage(config) as storage:
        info = await storage.info()
        has_groups = bool(await storage.events.groups())
        live = await storage.runners.live_runners(config.sharding.runner_ttl)
        connections = await read_connections(storage.state, sorted(str(r.address) for r in live))
    return info, (await group_lags(config) if has_groups else []), connections


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


def info_document(info: StorageInfo,
                  event_groups: list[GroupStats] | None = None) -> dict[str, object]:
    """``covey status --json``."""
    return {
        "backend": info.backend,
        "location": info.location,
        "schema_version": info.schema_version,
        "shards": info.shards,
        "runners": info.runners,
        "messages_total": info.messages_total,
        "messages_unprocessed": info.messages_unprocessed,
        "event_groups": [status_group_document(s) for s in event_groups or []],
    }


@click.group()
def main() -> None:
    """covey: sharded entities, durable messages, singletons, cron, jobs and events."""


main.add_command(dashboard)
main.add_command(events)
main.add_command(jobs)
main.add_command(runners)
main.add_command(webhooks)
main.add_command(workflows)


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Connect, apply pending migrations and show what the store holds.

    Also the open real-time connections (SSE, WebSocket, users, streams) of each
    live runner, and with event groups each group's lag (events and seconds) and
    dead letters.
    """
    info, lags, connections = _run(_status, as_json=as_json)
    if as_json:
        emit({**info_document(info, lags),
              "connections": [dataclasses.asdict(c) for c in connections]})
    else:
        console().print(info_table(info))
        if connections:
            console().print(connections_table(connections))
        if lags:
            console().print(lag_table(lags, title="event groups"))


def connections_table(found: list[ConnectionCounts]) -> Table:
    """The real-time connections of each live runner (as it last reported them)."""
    table = Table(title="real-time connections")
    for column in ("runner", "sse", "websocket", "users", "streams", "reported"):
        table.add_column(column, justify="left" if column in ("runner", "reported") else "right")
    for c in found:
        table.add_row(c.runner, str(c.sse), str(c.websocket), str(c.users), str(c.streams),
                      cell(c.at))
    return table


@main.command()
@json_option
def migrate(as_json: bool) -> None:
    """Apply pending schema migrations (also done by every runner at start).

    Run it as its own step before a deploy (a Kubernetes Job, a Helm hook).
    """
    info = _run(_info, as_json=as_json)
    if as_json:
        emit({"schema_version": info.schema_version, "up_to_date": True})
    else:
        click.echo(f"schema is up to date (version {info.schema_version})")


def _run(action: Callable[[CoveyConfig], Coroutine[Any, Any, T]], *, as_json: bool) -> T:
    config = guarded(CoveyConfig.from_env, as_json=as_json)
    return guarded(lambda: asyncio.run(action(config)), as_json=as_json)


_ready_json_option = click.option(
    "--json", "as_json", is_flag=True,
    help='Announce readiness as one JSON line ({"event": "ready", "runner": ..., '
         '"metrics": ...}) and errors as JSON.')

_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)


def _logging_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--log-format", type=click.Choice(["text", "json"]), envvar="COVEY_LOG_FORMAT",
        default="text", show_default=True,
        help="Readable lines, or one JSON object per line with tenant, request id, trace "
             "id, runner and shard [env COVEY_LOG_FORMAT].")(command)
    return click.option(
        "--log-level", type=_LEVELS, envvar="COVEY_LOG_LEVEL", default="INFO",
        show_default=True, help="Level of the process's logs [env COVEY_LOG_LEVEL].")(command)


@main.command()
@click.argument("target")
@_logging_options
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics, /livez, /readyz and /health on this port (worker pods; "
                   "0 picks a free one). Default: not served.")
@click.option("--metrics-host", default="0.0.0.0", show_default=True,
              help="The interface of --metrics-port.")
@_ready_json_option
def run(target: str, log_level: str, log_format: str, metrics_port: int | None,
        metrics_host: str, as_json: bool) -> None:
    """Run a runner: TARGET is 'module:attribute', a covey.Cluster or a function making one.

    Serves until SIGTERM or SIGINT, then leaves gracefully (readiness fails,
    deregisters first, lets in-flight handlers finish, releases its shards).
    Once it serves it prints `covey runner ADDRESS ready` (with --json: a JSON
    line {"event": "ready", "runner": ..., "metrics": ...}).
    """
    _serve_target(target, log_level, log_format, metrics_port, metrics_host, as_json)


@main.command("serve-metrics")
@click.argument("target")
@_logging_options
@click.option("--host", default="0.0.0.0", show_default=True, help="Interface to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_METRICS_PORT,
              show_default=True, help="Port of /metrics and the probes.")
@_ready_json_option
def serve_metrics(target: str, log_level: str, log_format: str, host: str, port: int,
                  as_json: bool) -> None:
    """Run TARGET's runner with /metrics and the probes on HOST:PORT (worker pods).

    The same as `covey run TARGET --metrics-port PORT --metrics-host HOST`:
    Prometheus scrapes the runner's own metrics (covey_*, process_*, python_*);
    Kubernetes probes /livez and /readyz.
    """
    _serve_target(target, log_level, log_format, port, host, as_json)


def _serve_target(target: str, log_level: str, log_format: str, metrics_port: int | None,
                  metrics_host: str, as_json: bool) -> None:
    configure_logging(log_level, json=log_format == "json", root=True)
    cluster = guarded(lambda: _load_cluster(target), as_json=as_json)
    endpoint = None if metrics_port is None else WorkerEndpoint(cluster, metrics_host,
                                                                metrics_port)
    try:
        asyncio.run(_serve(cluster, endpoint, as_json=as_json))
    except ClusterError as exc:
        fail(exc, as_json=as_json)
    except OSError as exc:  # the metrics port is taken
        click.echo(f"error: cannot serve metrics on {metrics_host}:{metrics_port}: {exc}",
                   err=True)
        sys.exit(2)


async def _serve(cluster: Cluster, endpoint: WorkerEndpoint | None, *, as_json: bool) -> None:
    def announce(ready: Cluster) -> None:
        metrics = None if endpoint is None else f"{_host_of(endpoint)}:{endpoint.port}"
        if as_json:
            emit({"event": "ready", "runner": None if ready.address is None
                  else str(ready.address), "metrics": metrics})
        else:
            where = "" if metrics is None else f" (metrics on http://{metrics}/metrics)"
            click.echo(f"covey runner {ready.address or 'client-only'} ready{where}")
        sys.stdout.flush()

    if endpoint is not None:
        await endpoint.start()  # probes answer (not ready) while the runner joins
    try:
        await cluster.serve(on_ready=announce)
    finally:
        if endpoint is not None:
            await endpoint.close()


def _host_of(endpoint: WorkerEndpoint) -> str:
    host = endpoint.host  # the interface asked for
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


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
