"""How every command prints: a rich table for people, or ``--json`` for programs.

The JSON form is one document on stdout, with stable keys (documented in
``docs/cli.md``). Ids (snowflakes) are always strings: JavaScript and ``jq``
read numbers as doubles, which round integers beyond 2^53; any other integer
beyond ±2^53 inside a value (a job's result) is a string too. Times are UTC
ISO 8601 strings (``2026-01-02T03:04:05Z``). An error is
``{"error": {"reason", "message", "details"}}`` on stdout, exit status 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from covey.cluster import Cluster
from covey.core import ClusterError, CoveyConfig, Reason

T = TypeVar("T")

MAX_SAFE_INTEGER = 2**53 - 1

json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print one JSON document (stable keys, ids as strings) instead of a table.")


def iso(ts: float | None) -> str | None:
    """Unix seconds as a UTC ISO 8601 string (``None`` stays ``None``)."""
    if ts is None:
        return None
    stamp = dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")
    return stamp.replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data; integers beyond ±2^53 become strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if abs(value) <= MAX_SAFE_INTEGER else str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if hasattr(value, "model_dump"):  # a pydantic model
        return plain(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def emit(document: Any) -> None:
    """Print ``document`` as JSON on stdout."""
    click.echo(json.dumps(plain(document), ensure_ascii=False, sort_keys=False))


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, width=max(Console().width, 160), highlight=False)


def fail(exc: ClusterError, *, as_json: bool, hint: str = "") -> NoReturn:
    """Report a covey error (as JSON on stdout with ``--json``) and exit 2."""
    if as_json:
        emit({"error": {"reason": exc.reason.value, "message": f"{exc}{hint}",
                        "details": plain(dict(exc.details))}})
    else:
        console(stderr=True).print(
            f"[red]error[/red] ({exc.reason.value}): {escape(f'{exc}{hint}')}", soft_wrap=True)
    sys.exit(2)


def guarded(action: Callable[[], T], *, as_json: bool,
            hint: Callable[[ClusterError], str] = lambda exc: "") -> T:
    """Run ``action``; a :class:`ClusterError` is reported (:func:`fail`) and exits 2."""
    try:
        return action()
    except ClusterError as exc:
        fail(exc, as_json=as_json, hint=hint(exc))


def cell(ts: float | None) -> str:
    """A time for a table cell (``-`` when there is none)."""
    return iso(ts) or "-"


def short(text: str | None, width: int = 60) -> str:
    """One line of ``text`` for a table cell, cut at ``width``."""
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def with_member(action: Callable[[Cluster], Awaitable[T]], *, as_json: bool,
                control_hint: str | None = None) -> T:
    """Run ``action`` against a client-only member joined from the ``COVEY_*``
    settings; a ClusterError exits 2.

    ``control_hint``: the action messages a runner; said when none answers.
    """

    async def go() -> T:
        async with Cluster(CoveyConfig.from_env(), client_only=True) as cluster:
            return await action(cluster)

    def hint(exc: ClusterError) -> str:
        if control_hint and exc.reason in (Reason.TIMEOUT, Reason.NOT_OWNER,
                                           Reason.PEER_UNAVAILABLE):
            return f" ({control_hint})"
        return ""

    return guarded(lambda: asyncio.run(go()), as_json=as_json, hint=hint)
