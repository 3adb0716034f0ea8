"""``covey webhooks …``: endpoints, deliveries, their attempts and the dead-letter.

Every command joins the configured database (``COVEY_*``, ``COVEY_DATABASE_URL``
first) as a client-only member: it hosts nothing and needs none of the
application's declarations. All of them read or change storage, except ``dlq
replay``: it requeues through the runner that owns the delivery, so it needs
runners up. A secret is printed only by ``add`` and ``rotate``, which make it.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich.table import Table

from covey.cli._output import cell, console, emit, iso, json_option, short, with_member
from covey.webhooks import Attempt, Endpoint, WebhookDelivery, Webhooks

T = TypeVar("T")
Command = Callable[..., None]

_NO_RUNNER = "no runner answered: is one up? `covey run module:cluster`"


# ---- documents and tables -------------------------------------------------


def old_secrets_until(e: Endpoint, now: float) -> list[float]:
    """When each previous secret, still signing after a rotation, stops signing."""
    return [k.expires_at for k in e.keys[1:] if k.expires_at is not None and k.expires_at > now]


def endpoint_document(e: Endpoint) -> dict[str, Any]:
    """One endpoint for ``--json`` (every field but its secrets)."""
    return {
        "id": e.id, "url": e.url, "description": e.description, "types": list(e.types),
        "tenant": e.tenant, "enabled": e.enabled, "disabled_reason": e.disabled_reason,
        "disabled_at": iso(e.disabled_at), "failing_since": iso(e.failing_since),
        "headers": dict(e.headers), "schedule": list(e.schedule), "timeout": e.timeout,
        "allow_private": e.allow_private, "concurrency": e.concurrency,
        "created_at": iso(e.created_at),
        "old_secrets_until": [iso(t) for t in old_secrets_until(e, time.time())],
    }


def attempt_document(a: Attempt) -> dict[str, Any]:
    return {"number": a.number, "at": iso(a.at), "outcome": a.outcome, "status": a.status,
            "latency_ms": a.latency_ms, "response": a.response, "error": a.error}


def delivery_document(d: WebhookDelivery) -> dict[str, Any]:
    """One delivery for ``--json``, with every attempt (the id is a string)."""
    return {
        "id": str(d.id), "message_id": d.message_id, "endpoint_id": d.endpoint_id,
        "type": d.type, "state": d.state, "tenant": d.tenant, "created_at": iso(d.created_at),
        "finished_at": iso(d.finished_at), "next_attempt_at": iso(d.next_attempt_at),
        "attempts": [attempt_document(a) for a in d.attempts],
    }


def _types(e: Endpoint) -> str:
    return ", ".join(e.types) or "all"


def endpoints_table(found: Sequence[Endpoint]) -> Table:
    table = Table(title=f"webhook endpoints ({len(found)})")
    # when the terminal is narrow, the url, types, tenant and reason wrap
    for name in ("id", "url", "types", "tenant", "enabled", "disabled reason",
                 "failing since", "created"):
        table.add_column(name, no_wrap=name in ("id", "enabled", "failing since", "created"),
                         overflow="fold" if name in ("url", "types") else "ellipsis")
    for e in found:
        table.add_row(e.id, short(e.url), short(_types(e), 40), e.tenant or "-",
                      "yes" if e.enabled else "no", short(e.disabled_reason, 40),
                      cell(e.failing_since), cell(e.created_at))
    return table


def endpoint_table(e: Endpoint) -> Table:
    """Everything about one endpoint but its secrets, one field per row."""
    table = Table(title=f"webhook endpoint {e.id}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    schedule = ", ".join(f"{s:g} s" for s in e.schedule) or "none (one attempt)"
    timeout = f"{e.timeout:g} s" if e.timeout is not None else "default"
    rows = [("id", e.id), ("url", e.url), ("description", e.description or "-"),
            ("types", _types(e)), ("tenant", e.tenant or "-"),
            ("enabled", "yes" if e.enabled else "no")]
    if not e.enabled:
        rows += [("disabled reason", e.disabled_reason or "-"),
                 ("disabled at", cell(e.disabled_at))]
    rows += [("failing since", cell(e.failing_since)), ("retries", schedule),
             ("timeout", timeout), ("allow private", "yes" if e.allow_private else "no"),
             ("concurrency", str(e.concurrency)), ("created", cell(e.created_at))]
    rows += [("header" if n == 0 else "", f"{name}: {value}")
             for n, (name, value) in enumerate(e.headers)]
    rows += [("old secret signs until", cell(t)) for t in old_secrets_until(e, time.time())]
    for row in rows:
        table.add_row(*row)
    return table


def _last(d: WebhookDelivery) -> str:
    if not d.attempts:
        return "-"
    a = d.attempts[-1]
    return a.outcome if a.status is None else f"{a.outcome} {a.status}"


def deliveries_table(found: Sequence[WebhookDelivery], title: str) -> Table:
    """One row per delivery (its message id is in ``attempts`` and ``--json``)."""
    table = Table(title=f"{title} ({len(found)})")
    # when the terminal is narrow, the endpoint, type and outcome wrap
    for name in ("id", "endpoint", "type", "state", "attempts", "last outcome", "created",
                 "finished / next"):
        table.add_column(name, no_wrap=name in ("id", "state", "created", "finished / next"),
                         justify="right" if name == "attempts" else "left")
    for d in found:
        table.add_row(str(d.id), d.endpoint_id, d.type, d.state, str(len(d.attempts)),
                      _last(d), cell(d.created_at),
                      cell(d.finished_at if d.finished_at is not None else d.next_attempt_at))
    return table


def attempts_table(d: WebhookDelivery) -> Table:
    table = Table(title=f"delivery {d.id}: {d.message_id} ({d.type}) to {d.endpoint_id}, "
                        f"{d.state}; attempts ({len(d.attempts)})")
    for name in ("#", "at", "outcome", "status", "latency ms", "response", "error"):
        table.add_column(name, no_wrap=name not in ("response", "error"),
                         justify="right" if name in ("#", "status", "latency ms") else "left")
    for a in d.attempts:
        table.add_row(str(a.number), cell(a.at), a.outcome,
                      "-" if a.status is None else str(a.status),
                      "-" if a.latency_ms is None else f"{a.latency_ms:.1f}",
                      short(a.response), short(a.error))
    return table


# ---- option parsing -------------------------------------------------------


def parse_time(ctx: click.Context | None, param: click.Parameter | None,
               value: str | None) -> float | None:
    """``--since``/``--until``: Unix seconds, or ISO 8601 (UTC when no offset is given)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            raise click.BadParameter(f"{text!r} is neither an ISO 8601 time "
                                     "(2026-12-03T10:00:00Z) nor Unix seconds",
                                     ctx, param) from None
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    if not (math.isfinite(seconds) and seconds >= 0):
        raise click.BadParameter(f"{text!r} is not a time", ctx, param)
    return seconds


def _schedule(ctx: click.Context, param: click.Parameter,
              value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: seconds, comma-separated (5,300,1800)",
                                 ctx, param) from None


def _headers(ctx: click.Context, param: click.Parameter,
             value: tuple[str, ...]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for item in value:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or name.strip() in headers:
            raise click.BadParameter(f"{item!r}: NAME=VALUE, each name once", ctx, param)
        headers[name.strip()] = text
    return headers or None


def _filters(command: Command) -> Command:
    """``--endpoint``, ``--since``, ``--until``: which dead deliveries."""
    for option in reversed((
            click.option("--endpoint", metavar="ID", help="Only deliveries to this endpoint."),
            click.option("--since", metavar="TIME", callback=parse_time,
                         help="Only deliveries sent at or after TIME (ISO 8601 or Unix s)."),
            click.option("--until", metavar="TIME", callback=parse_time,
                         help="Only deliveries sent at or before TIME."))):
        command = option(command)
    return command


def _check_range(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since > until:
        raise click.UsageError("--since is after --until")


def _with_webhooks(action: Callable[[Webhooks], Awaitable[T]], *, as_json: bool,
                   control: bool = False) -> T:
    """Run ``action`` against a client-only member's webhooks; a ClusterError exits 2."""
    return with_member(lambda cluster: action(cluster.webhooks), as_json=as_json,
                       control_hint=_NO_RUNNER if control else None)


def _confirm(what: str, *, yes: bool, as_json: bool) -> None:
    if as_json and not yes:
        raise click.UsageError("--json asks nothing: add --yes")
    if not yes:
        click.confirm(f"{what}?", abort=True)


# ---- endpoints ------------------------------------------------------------


@click.group()
def webhooks() -> None:
    """Outgoing webhooks: endpoints, deliveries, attempts and the dead-letter."""


@webhooks.command(short_help="Every endpoint (never its secret).")
@click.option("--tenant", help="Only endpoints of this tenant.")
@json_option
def endpoints(tenant: str | None, as_json: bool) -> None:
    """Every endpoint, oldest first (never its secret)."""
    found = _with_webhooks(lambda w: w.endpoints(tenant=tenant), as_json=as_json)
    if as_json:
        emit({"endpoints": [endpoint_document(e) for e in found]})
    else:
        console().print(endpoints_table(found))


@webhooks.command(short_help="Register an endpoint; prints its secret once.")
@click.argument("url")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="A message type it wants (invoice.paid, invoice.*, *); repeat it. "
                   "Default: every type.")
@click.option("--tenant", help="The tenant that owns it (it gets only that tenant's messages).")
@click.option("--description", default="", help="What it is, for people.")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", callback=_headers,
              help="A header sent with every delivery; repeat it.")
@click.option("--schedule", metavar="S,S,…", callback=_schedule,
              help="Seconds before each retry ('' for none). Default: 5,300,1800.")
@click.option("--timeout", type=float, help="Seconds per attempt. Default: the cluster's.")
@click.option("--allow-private", is_flag=True,
              help="It may be a loopback or private address (development).")
@click.option("--concurrency", default=20, show_default=True, type=int,
              help="Its attempts in flight at once on one runner.")
@json_option
def add(url: str, types: tuple[str, ...], tenant: str | None, description: str,
        headers: dict[str, str] | None, schedule: list[float] | None, timeout: float | None,
        allow_private: bool, concurrency: int, as_json: bool) -> None:
    """Register an endpoint at URL; prints its id and its secret (shown only now)."""

    async def action(w: Webhooks) -> Endpoint:
        return await w.add_endpoint(
            url, types=list(types) or None, tenant=tenant, description=description,
            headers=headers, schedule=schedule, timeout=timeout, allow_private=allow_private,
            concurrency=concurrency)

    endpoint = _with_webhooks(action, as_json=as_json)
    if as_json:
        emit({**endpoint_document(endpoint), "secret": str(endpoint.secret)})
    else:
        click.echo(f"endpoint {endpoint.id} added ({endpoint.url})\n"
                   f"secret {endpoint.secret}\n"
                   "Give the secret to the receiver now: it is not shown again "
                   f"(`covey webhooks rotate {endpoint.id}` makes a new one).")


@webhooks.command()
@click.argument("endpoint_id", metavar="ID")
@json_option
def show(endpoint_id: str, as_json: bool) -> None:
    """Every field of endpoint ID (not its secret)."""
    endpoint = _with_webhooks(lambda w: w.endpoint(endpoint_id), as_json=as_json)
    if as_json:
        emit(endpoint_document(endpoint))
    else:
        console().print(endpoint_table(endpoint))


@webhooks.command(short_help="Stop sending to an endpoint.")
@click.argument("endpoint_id", metavar="ID")
@click.option("--reason", default="disabled by an operator", show_default=True,
              help="Why (shown by `endpoints` and `show`).")
@json_option
def disable(endpoint_id: str, reason: str, as_json: bool) -> None:
    """Stop sending to ID: new messages skip it, pending retries go to the dead-letter."""
    endpoint = _with_webhooks(lambda w: w.disable(endpoint_id, reason), as_json=as_json)
    if as_json:
        emit(endpoint_document(endpoint))
    else:
        click.echo(f"endpoint {endpoint.id} disabled: {endpoint.disabled_reason}")


@webhooks.command()
@click.argument("endpoint_id", metavar="ID")
@json_option
def enable(endpoint_id: str, as_json: bool) -> None:
    """Send to ID again (its failing clock starts over)."""
    endpoint = _with_webhooks(lambda w: w.enable(endpoint_id), as_json=as_json)
    if as_json:
        emit(endpoint_document(endpoint))
    else:
        click.echo(f"endpoint {endpoint.id} enabled")


@webhooks.command(short_help="A new signing secret for an endpoint.")
@click.argument("endpoint_id", metavar="ID")
@click.option("--overlap", default=86_400.0, show_default=True, type=float,
              help="Seconds the old secret keeps signing beside the new one.")
@json_option
def rotate(endpoint_id: str, overlap: float, as_json: bool) -> None:
    """A new signing secret for ID, printed once; the old one signs for --overlap s more."""
    endpoint = _with_webhooks(lambda w: w.rotate_secret(endpoint_id, overlap=overlap),
                              as_json=as_json)
    if as_json:
        emit({**endpoint_document(endpoint), "secret": str(endpoint.secret)})
        return
    click.echo(f"endpoint {endpoint.id}: new secret {endpoint.secret}")
    for until in old_secrets_until(endpoint, time.time()):
        click.echo(f"an old secret signs beside it until {iso(until)}")


@webhooks.command(short_help="Remove an endpoint.")
@click.argument("endpoint_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(endpoint_id: str, yes: bool, as_json: bool) -> None:
    """Remove endpoint ID; its pending deliveries end in the dead-letter (--json needs --yes)."""
    _confirm(f"Delete webhook endpoint {endpoint_id}", yes=yes, as_json=as_json)
    _with_webhooks(lambda w: w.delete(endpoint_id), as_json=as_json)
    if as_json:
        emit({"id": endpoint_id, "deleted": True})
    else:
        click.echo(f"endpoint {endpoint_id} deleted")


# ---- deliveries -----------------------------------------------------------


@webhooks.command(short_help="Recent deliveries and their state.")
@click.option("--endpoint", metavar="ID", help="Only deliveries to this endpoint.")
@click.option("--state", type=click.Choice(["unprocessed", "processed", "error"]),
              help="unprocessed (pending or retrying), processed (delivered or cancelled), "
                   "error (dead).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many deliveries.")
@json_option
def deliveries(endpoint: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Recent deliveries, newest first: state, attempts, last outcome."""
    found = _with_webhooks(lambda w: w.deliveries(endpoint=endpoint, state=state, limit=limit),
                           as_json=as_json)
    if as_json:
        emit({"deliveries": [delivery_document(d) for d in found]})
    else:
        console().print(deliveries_table(found, "webhook deliveries"))


@webhooks.command(short_help="Every attempt of one delivery.")
@click.argument("delivery_id", type=int)
@json_option
def attempts(delivery_id: int, as_json: bool) -> None:
    """Every attempt of delivery DELIVERY_ID: when, outcome, status, latency, response."""
    found = _with_webhooks(lambda w: w.delivery(delivery_id), as_json=as_json)
    if as_json:
        emit(delivery_document(found))
    else:
        console().print(attempts_table(found))


@webhooks.group()
def dlq() -> None:
    """The dead-letter: deliveries whose last attempt failed."""


@dlq.command("ls", short_help="Dead deliveries, newest first.")
@_filters
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="At most this many deliveries.")
@json_option
def dlq_ls(endpoint: str | None, since: float | None, until: float | None, limit: int,
           as_json: bool) -> None:
    """Dead deliveries, newest first (--since/--until: when they were sent)."""
    _check_range(since, until)
    found = _with_webhooks(lambda w: w.dead_letters(endpoint=endpoint, since=since,
                                                    until=until, limit=limit), as_json=as_json)
    if as_json:
        emit({"deliveries": [delivery_document(d) for d in found]})
    else:
        console().print(deliveries_table(found, "dead webhook deliveries"))


@dlq.command("replay", short_help="Send dead deliveries again (needs a runner up).")
@click.argument("delivery_id", type=int, required=False)
@_filters
@json_option
def dlq_replay(delivery_id: int | None, endpoint: str | None, since: float | None,
               until: float | None, as_json: bool) -> None:
    """Send dead delivery DELIVERY_ID again, or every dead one the filters select
    (same webhook-id, a fresh schedule).

    It asks the runner that owns each delivery, so at least one runner must be
    up (`covey run …`); without one it fails with a timeout error.
    """
    filtered = endpoint is not None or since is not None or until is not None
    if (delivery_id is None) == (not filtered):
        raise click.UsageError("give a DELIVERY_ID, or --endpoint/--since/--until (not both)")
    _check_range(since, until)
    if delivery_id is not None:
        one = delivery_id
        replayed = _with_webhooks(lambda w: w.replay(one), as_json=as_json, control=True)
        if as_json:
            emit({"replayed": 1, "delivery": delivery_document(replayed)})
        else:
            click.echo(f"delivery {one} ({replayed.message_id} to {replayed.endpoint_id}) "
                       "requeued")
        return
    count = _with_webhooks(lambda w: w.replay_dead(endpoint=endpoint, since=since, until=until),
                           as_json=as_json, control=True)
    if as_json:
        emit({"replayed": count})
    else:
        click.echo(f"requeued {count} dead deliver{'y' if count == 1 else 'ies'}")


@dlq.command("purge", short_help="Delete dead deliveries for good.")
@_filters
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def dlq_purge(endpoint: str | None, since: float | None, until: float | None, yes: bool,
              as_json: bool) -> None:
    """Delete dead deliveries (all, or those the filters select) for good (--json needs --yes)."""
    _check_range(since, until)
    scope = "".join([f" to {endpoint}" if endpoint else "",
                     f" sent from {iso(since)}" if since is not None else "",
                     f" sent until {iso(until)}" if until is not None else ""])
    _confirm(f"Delete {'all ' if not scope else ''}dead webhook deliveries{scope}", yes=yes,
             as_json=as_json)
    count = _with_webhooks(lambda w: w.purge_dead(endpoint=endpoint, since=since, until=until),
                           as_json=as_json)
    if as_json:
        emit({"purged": count})
    else:
        click.echo(f"purged {count} dead deliver{'y' if count == 1 else 'ies'}")
