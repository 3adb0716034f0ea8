"""``covey jobs …``: list, inspect, cancel and dead-letter jobs from a shell.

Every command joins the configured database (``COVEY_*``, ``COVEY_DATABASE_URL``
first) as a client-only member: it hosts nothing and needs no job declarations.
Listing and status read storage; ``cancel`` and ``dlq retry`` send a control
message to the runner that owns the job, so they need runners up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich.table import Table

from covey.cli._output import cell, console, emit, iso, json_option, short, with_member
from covey.jobs import Jobs, JobStatus

T = TypeVar("T")

#: user-facing state -> the storage state that holds it (only dead jobs are error
#: replies: a cancelled job's reply is a plain one, see JobRunner._final)
_STORAGE_STATE: dict[str, str] = {
    "queued": "unprocessed",
    "scheduled": "unprocessed",
    "running": "unprocessed",
    "failed": "unprocessed",
    "succeeded": "processed",
    "cancelled": "processed",
    "dead": "error",
}
#: jobs read per page when several user states share a storage state
_PAGE = 500
STATES = tuple(_STORAGE_STATE)

_NEEDS_RUNNERS = (
    "It sends a control message to the runner that owns the job, so at least one "
    "runner must be up (`covey run …`); without one it fails after a few seconds "
    "with a timeout error."
)


def job_document(s: JobStatus) -> dict[str, Any]:
    """One job for ``--json`` (stable keys; the id is a string)."""
    return {
        "id": str(s.id),
        "name": s.name,
        "state": s.state,
        "attempts": s.attempts,
        "last_error": s.last_error,
        "errors": list(s.errors),
        "tenant": s.tenant,
        "created_at": iso(s.created_at),
        "scheduled_for": iso(s.scheduled_for),
        "finished_at": iso(s.finished_at),
        "progress": s.progress,
        "progress_note": s.progress_note,
        "heartbeat_at": iso(s.heartbeat_at),
        "result": s.result,
    }


def jobs_table(found: Sequence[JobStatus], title: str = "jobs") -> Table:
    """One row per job: id, name, state, attempts, last error, created, finished."""
    table = Table(title=title)
    table.add_column("id", no_wrap=True, min_width=19)
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("attempts", justify="right")
    table.add_column("last error", no_wrap=True, overflow="ellipsis")
    table.add_column("created", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    for s in found:
        table.add_row(str(s.id), s.name, s.state, str(s.attempts), short(s.last_error),
                      cell(s.created_at), cell(s.finished_at))
    return table


def status_table(s: JobStatus) -> Table:
    """Everything known about one job, one field per row."""
    table = Table(title=f"job {s.id}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("id", str(s.id))
    table.add_row("name", s.name)
    table.add_row("state", s.state)
    table.add_row("tenant", s.tenant if s.tenant is not None else "-")
    table.add_row("attempts", str(s.attempts))
    table.add_row("created", cell(s.created_at))
    if s.scheduled_for is not None:
        table.add_row("scheduled for", cell(s.scheduled_for))
    table.add_row("finished", cell(s.finished_at))
    table.add_row("last error", s.last_error or "-")
    history = s.errors if s.errors != (s.last_error,) else ()
    for n, error in enumerate(history):
        table.add_row("error history" if n == 0 else "", error)
    if s.state == "succeeded":
        table.add_row("result", short(repr(s.result), 200))
    return table


def _with_jobs(action: Callable[[Jobs], Awaitable[T]], *, as_json: bool,
               control: bool = False) -> T:
    """Run ``action`` against a client-only member's jobs; a ClusterError exits 2."""
    return with_member(lambda cluster: action(cluster.jobs), as_json=as_json,
                       control_hint="no runner answered: is one up? `covey run module:cluster`"
                       if control else None)


@click.group()
def jobs() -> None:
    """Background jobs: list, inspect, cancel, and the dead-letter."""


@jobs.command("ls")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--name", help="Only jobs of this name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many jobs.")
@json_option
def ls(state: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs, newest first."""

    async def action(j: Jobs) -> list[JobStatus]:
        if state is None:
            return await j.recent(name=name, limit=limit)
        # several user states share a storage state (succeeded and cancelled jobs
        # are both processed): page back through it until enough match
        found: list[JobStatus] = []
        before: int | None = None
        while len(found) < limit:
            page = await j.recent(state=_STORAGE_STATE[state], name=name, limit=_PAGE,
                                  before_id=before)
            found += [s for s in page if s.state == state]
            if len(page) < _PAGE:
                break
            before = page[-1].id
        return found[:limit]

    found = _with_jobs(action, as_json=as_json)
    if as_json:
        emit({"jobs": [job_document(s) for s in found]})
    else:
        console().print(jobs_table(found, title=f"jobs ({len(found)})"))


@jobs.command()
@click.argument("job_id", type=int)
@json_option
def status(job_id: int, as_json: bool) -> None:
    """Where job JOB_ID stands (exit 2 with job_not_found if there is none)."""

    async def action(j: Jobs) -> JobStatus:
        return await j.status(job_id)

    found = _with_jobs(action, as_json=as_json)
    if as_json:
        emit(job_document(found))
    else:
        console().print(status_table(found))


@jobs.command(short_help="Cancel a job (needs a runner up).", help=(
    "Cancel job JOB_ID: a queued or scheduled job never runs; a running one is "
    "interrupted (its handler sees CancelledError). A finished job is left as is. "
    + _NEEDS_RUNNERS))
@click.argument("job_id", type=int)
@json_option
def cancel(job_id: int, as_json: bool) -> None:
    async def action(j: Jobs) -> JobStatus:
        return await j.cancel(job_id)

    final = _with_jobs(action, as_json=as_json, control=True)
    if as_json:
        emit(job_document(final))
    else:
        click.echo(f"job {job_id} ({final.name}) is {final.state}")


@jobs.group()
def dlq() -> None:
    """The dead-letter: jobs that used up their attempts (or gave up)."""


@dlq.command("ls")
@click.option("--name", help="Only dead jobs of this name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many jobs.")
@json_option
def dlq_ls(name: str | None, limit: int, as_json: bool) -> None:
    """Dead jobs, newest first, with their last error."""

    async def action(j: Jobs) -> list[JobStatus]:
        return await j.dead_letters(name=name, limit=limit)

    found = _with_jobs(action, as_json=as_json)
    if as_json:
        emit({"jobs": [job_document(s) for s in found]})
    else:
        console().print(jobs_table(found, title=f"dead jobs ({len(found)})"))


@dlq.command("retry", short_help="Requeue a dead job (needs a runner up).", help=(
    "Requeue dead job JOB_ID with its attempts reset (same id). " + _NEEDS_RUNNERS))
@click.argument("job_id", type=int)
@json_option
def dlq_retry(job_id: int, as_json: bool) -> None:
    async def action(j: Jobs) -> Any:
        return await j.retry_dead(job_id)

    handle = _with_jobs(action, as_json=as_json, control=True)
    if as_json:
        emit({"id": str(job_id), "name": handle.name, "requeued": True})
    else:
        click.echo(f"job {job_id} ({handle.name}) requeued")


@dlq.command("purge")
@click.option("--name", help="Only dead jobs of this name.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def dlq_purge(name: str | None, yes: bool, as_json: bool) -> None:
    """Delete dead jobs (all, or those of --name) for good (--json needs --yes)."""
    what = f"dead jobs named {name!r}" if name else "all dead jobs"
    if as_json and not yes:
        raise click.UsageError("--json asks nothing: add --yes to purge")
    if not yes:
        click.confirm(f"Delete {what}?", abort=True)

    async def action(j: Jobs) -> int:
        return await j.purge_dead(name=name)

    purged = _with_jobs(action, as_json=as_json)
    if as_json:
        emit({"purged": purged})
    else:
        click.echo(f"purged {purged} dead job(s)")
