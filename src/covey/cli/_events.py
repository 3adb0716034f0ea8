"""``covey events …``: the event log, its subscriber groups, their lag and dead-letters.

Every command joins the configured database (``COVEY_*``, ``COVEY_DATABASE_URL``
first) as a client-only member: it hosts nothing and needs no event classes or
subscriptions. Everything but ``dlq retry`` reads or writes storage; ``dlq
retry`` asks the runner that owns the delivery's key to run it again, so it
needs runners up. Unknown groups are the facade's typed error
(``invalid_argument``, ``details["not_found"]``): exit 2 with the message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich.table import Table

from covey.cli._output import cell, console, emit, iso, json_option, short, with_member
from covey.cluster import Cluster
from covey.core import CoveyConfig
from covey.events import DeadLetter, EventGroup, Events, GroupStats, TopicInfo

T = TypeVar("T")

_NEEDS_RUNNERS = (
    "It asks the runner that owns the event's key to run the delivery again, so at "
    "least one runner subscribing the group must be up (`covey run …`); without one "
    "it fails with peer_unavailable (or a timeout error after a few seconds)."
)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


# ---- documents (--json: stable keys, ids as strings) ----------------------


def topic_document(t: TopicInfo) -> dict[str, Any]:
    """One topic for ``--json``."""
    return {
        "topic": t.topic,
        "events": t.events,
        "first_position": t.first_position,
        "last_position": t.last_position,
        "last_published_at": iso(t.last_published_at),
        "unsequenced": t.unsequenced,
    }


def group_document(g: EventGroup) -> dict[str, Any]:
    """One (group, topic) row for ``--json``; ``replay_until`` is 0 when no replay
    is under way, ``replays`` counts the replays asked for."""
    return {
        "group": g.group,
        "topic": g.topic,
        "start": g.start,
        "created_at": iso(g.created_at),
        "cursor": g.cursor,
        "replay_until": g.replay_until,
        "replaying": g.replay_until > g.cursor,
        "replays": g.replay,
    }


def lag_document(s: GroupStats) -> dict[str, Any]:
    """One group's lag for ``--json``."""
    return {
        "group": s.group,
        "topics": list(s.topics),
        "lag": s.lag,
        "pending": s.pending,
        "unfanned": s.unfanned,
        "lag_seconds": round(s.lag_seconds, 3),
        "dead_letters": s.dead_letters,
    }


def status_group_document(s: GroupStats) -> dict[str, Any]:
    """One group in ``covey status --json`` (``event_groups``)."""
    return {"group": s.group, "lag": s.lag, "lag_seconds": round(s.lag_seconds, 3),
            "dead_letters": s.dead_letters}


def dead_letter_document(d: DeadLetter) -> dict[str, Any]:
    """One dead delivery for ``--json`` (its ids as strings)."""
    return {
        "message_id": str(d.message_id),
        "group": d.group,
        "topic": d.topic,
        "type": d.type,
        "event_id": str(d.event_id),
        "key": d.key,
        "attempts": d.attempts,
        "error": d.error,
        "errors": list(d.errors),
        "failed_at": iso(d.failed_at),
    }


# ---- tables ---------------------------------------------------------------


def topics_table(found: Sequence[TopicInfo]) -> Table:
    table = Table(title=f"topics ({len(found)})")
    for name in ("topic", "events", "first position", "last position", "last published",
                 "unsequenced"):
        table.add_column(name, no_wrap=True,
                         justify="left" if name in ("topic", "last published") else "right")
    for t in found:
        table.add_row(t.topic, str(t.events), _num(t.first_position), _num(t.last_position),
                      cell(t.last_published_at), str(t.unsequenced))
    return table


def groups_table(found: Sequence[EventGroup], title: str = "groups") -> Table:
    table = Table(title=f"{title} ({len(found)})")
    for name in ("group", "topic", "start", "created", "cursor", "replay", "replays"):
        table.add_column(name, no_wrap=True,
                         justify="right" if name in ("cursor", "replays") else "left")
    for g in found:
        replay = f"until {g.replay_until}" if g.replay_until > g.cursor else "-"
        table.add_row(g.group, g.topic, g.start, cell(g.created_at), str(g.cursor), replay,
                      str(g.replay))
    return table


def lag_table(found: Sequence[GroupStats], title: str = "group lag") -> Table:
    """One row per group: lag in events and seconds, and its dead-letters."""
    table = Table(title=f"{title} ({len(found)})")
    table.add_column("group", no_wrap=True)
    table.add_column("topics", no_wrap=True)
    for name in ("lag (events)", "pending", "not fanned out", "oldest pending (s)",
                 "dead letters"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in found:
        table.add_row(s.group, ", ".join(s.topics), str(s.lag), str(s.pending),
                      str(s.unfanned), f"{s.lag_seconds:.1f}", str(s.dead_letters))
    return table


def dead_letters_table(found: Sequence[DeadLetter], group: str) -> Table:
    table = Table(title=f"dead letters of {group} ({len(found)})")
    table.add_column("message id", no_wrap=True, min_width=19)
    for name in ("topic", "type", "event id", "key"):
        table.add_column(name, no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    table.add_column("failed", no_wrap=True)
    for d in found:
        table.add_row(str(d.message_id), d.topic, d.type, str(d.event_id), d.key,
                      str(d.attempts), short(d.error), cell(d.failed_at))
    return table


# ---- running against a client-only member --------------------------------


def _with_events(action: Callable[[Events], Awaitable[T]], *, as_json: bool,
                 control: bool = False) -> T:
    """Run ``action`` against a client-only member's events; a ClusterError exits 2."""
    return with_member(lambda cluster: action(cluster.events), as_json=as_json,
                       control_hint="a runner subscribing the group must be up: "
                       "`covey run module:cluster`" if control else None)


async def group_lags(config: CoveyConfig) -> list[GroupStats]:
    """Every group's lag, from a client-only member (``covey status``)."""
    async with Cluster(config, client_only=True) as cluster:
        return list((await cluster.events.lag()).values())


def replay_from(ctx: click.Context | None, param: click.Parameter | None,
                value: str) -> tuple[str, float | int]:
    """``--from``: a position (an integer >= 0) or an ISO 8601 time (UTC when no
    offset is given), as ``("position", int)`` or ``("time", Unix seconds)``.

    A click callback rather than a ``ParamType`` (generic only from click 8.2).
    """
    text = value.strip()
    try:
        position = int(text)
    except ValueError:
        pass
    else:
        if position < 0:
            raise click.BadParameter(f"{text!r}: a position is an integer >= 0", ctx, param)
        return ("position", position)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a position (an integer) nor an ISO 8601 time "
            "(e.g. 2026-12-03T10:00:00Z)", ctx, param) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return ("time", when.timestamp())


# ---- commands -------------------------------------------------------------


@click.group()
def events() -> None:
    """Domain events: topics, groups, lag, the dead-letter and replay."""


@events.command(short_help="Topics in the log.")
@json_option
def topics(as_json: bool) -> None:
    """Topics in the log: events, first/last position, last published, unsequenced."""
    found = _with_events(lambda e: e.topics(), as_json=as_json)
    if as_json:
        emit({"topics": [topic_document(t) for t in found]})
    else:
        console().print(topics_table(found))


@events.command(short_help="Subscriber groups: start, cursor, replay.")
@click.argument("group", required=False)
@json_option
def groups(group: str | None, as_json: bool) -> None:
    """Subscriber groups (of GROUP), one row per topic: start, cursor, replay."""
    found = _with_events(lambda e: e.groups(group), as_json=as_json)
    if as_json:
        emit({"groups": [group_document(g) for g in found]})
    else:
        console().print(groups_table(found))


@events.command(short_help="Each group's lag (events, seconds) and dead letters.")
@click.argument("group", required=False)
@json_option
def lag(group: str | None, as_json: bool) -> None:
    """How far behind each group (or GROUP) is: events, seconds, dead letters.

    The lag is the group's deliveries not completed yet plus the events after
    its cursor with no delivery yet; its age is that of the oldest pending
    delivery.
    """
    found = list(_with_events(lambda e: e.lag(group), as_json=as_json).values())
    if as_json:
        emit({"groups": [lag_document(s) for s in found]})
    else:
        console().print(lag_table(found))


@events.command(short_help="Deliver a group's events again from a position or time.")
@click.argument("group")
@click.option("--from", "start", required=True, metavar="POSITION|TIME", callback=replay_from,
              help="A position (deliver every event after it again) or an ISO 8601 time "
                   "(every event published from then on), e.g. 2026-12-03T10:00:00Z.")
@json_option
def replay(group: str, start: tuple[str, float | int], as_json: bool) -> None:
    """Deliver GROUP's retained events again, from a position or a time (all its topics).

    Runners of the group re-deliver them in the background, per key in order.
    """
    kind, value = start

    async def action(e: Events) -> list[EventGroup]:
        if kind == "position":
            return await e.replay(group, from_position=int(value))
        return await e.replay(group, from_time=float(value))

    rows = _with_events(action, as_json=as_json)
    if as_json:
        emit({"groups": [group_document(g) for g in rows]})
        return
    for g in rows:
        if g.replay_until > g.cursor:
            click.echo(f"group {g.group}: replaying {g.topic} positions "
                       f"{g.cursor + 1}..{g.replay_until}")
        else:
            click.echo(f"group {g.group}: nothing of {g.topic} to replay after "
                       f"position {g.cursor}")


@events.group()
def dlq() -> None:
    """A group's dead-letter: deliveries that used up their attempts."""


@dlq.command("ls")
@click.argument("group")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many dead letters.")
@json_option
def dlq_ls(group: str, limit: int, as_json: bool) -> None:
    """GROUP's dead deliveries, newest first, with their last error."""
    found = _with_events(lambda e: e.dead_letters(group, limit=limit), as_json=as_json)
    if as_json:
        emit({"dead_letters": [dead_letter_document(d) for d in found]})
    else:
        console().print(dead_letters_table(found, group))


@dlq.command("retry", short_help="Run a dead delivery again (needs a runner up).", help=(
    "Run dead delivery MESSAGE_ID (from `covey events dlq ls`) again, its attempts "
    "starting over. " + _NEEDS_RUNNERS))
@click.argument("message_id", type=int)
@json_option
def dlq_retry(message_id: int, as_json: bool) -> None:
    _with_events(lambda e: e.retry_dead(message_id), as_json=as_json, control=True)
    if as_json:
        emit({"message_id": str(message_id), "requeued": True})
    else:
        click.echo(f"dead letter {message_id} requeued")


@dlq.command("purge")
@click.argument("group")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def dlq_purge(group: str, yes: bool, as_json: bool) -> None:
    """Delete GROUP's dead deliveries for good (--json needs --yes)."""
    if as_json and not yes:
        raise click.UsageError("--json asks nothing: add --yes to purge")
    if not yes:
        _with_events(lambda e: e.groups(group), as_json=as_json)  # no prompt for a typo
        click.confirm(f"Delete the dead letters of group {group!r}?", abort=True)
    purged = _with_events(lambda e: e.purge_dead(group), as_json=as_json)
    if as_json:
        emit({"group": group, "purged": purged})
    else:
        click.echo(f"purged {purged} dead letter(s) of group {group}")
