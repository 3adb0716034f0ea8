"""``covey workflows …``: list and inspect workflow executions, cancel and resume them.

Every command joins the configured database (``COVEY_*``, ``COVEY_DATABASE_URL``
first) as a client-only member: it hosts nothing and needs no workflow
declarations. ``ls`` and ``show`` read storage (an execution's start message
and its journal); ``cancel`` and ``resume`` message the runner that owns the
execution, so they need runners up. An unknown id is the facade's typed error
(``workflow_not_found``): exit 2 with the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click
from rich.table import Table

from covey.cli._output import cell, console, emit, iso, json_option, short, with_member
from covey.workflows import JournalEntry, Workflows, WorkflowStatus

T = TypeVar("T")

STATES = ("pending", "running", "waiting", "completed", "compensated", "failed", "cancelled",
          "failed_nondeterministic")

_NEEDS_RUNNERS = (
    "It messages the runner that owns the execution, so at least one runner "
    "declaring the workflow must be up (`covey run …`); without one it fails "
    "with a peer_unavailable or timeout error."
)


# ---- documents (--json: stable keys) ------------------------------------------


def workflow_document(s: WorkflowStatus) -> dict[str, Any]:
    """One execution for ``--json``."""
    return {
        "id": s.workflow_id,
        "name": s.name,
        "version": s.version,
        "state": s.state,
        "steps": s.steps,
        "created_at": iso(s.created_at),
        "updated_at": iso(s.updated_at),
        "error": s.error,
        "waiting_for": s.waiting_for,
    }


def entry_document(e: JournalEntry) -> dict[str, Any]:
    """One journal entry for ``--json`` (``result``: the journaled value, as data)."""
    return {
        "seq": e.seq,
        "key": e.key,
        "kind": e.kind,
        "status": e.status,
        "result": e.result,
        "error": e.error,
        "at": iso(e.at),
    }


# ---- tables ---------------------------------------------------------------------


def _detail(s: WorkflowStatus) -> str:
    """The error of a failed execution, or what a waiting one waits for."""
    return short(s.error or s.waiting_for)


def workflows_table(found: Sequence[WorkflowStatus], title: str = "workflows") -> Table:
    """One row per execution: id, name, version, state, steps, updated, error or wait."""
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    table.add_column("name", no_wrap=True)
    table.add_column("version", justify="right")
    table.add_column("state", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("updated", no_wrap=True)
    table.add_column("error / waiting for", no_wrap=True, overflow="ellipsis")
    for s in found:
        table.add_row(s.workflow_id, s.name, str(s.version), s.state, str(s.steps),
                      cell(s.updated_at or s.created_at), _detail(s))
    return table


def status_table(s: WorkflowStatus) -> Table:
    """Everything known about one execution, one field per row."""
    table = Table(title=f"workflow {s.workflow_id}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("id", s.workflow_id)
    table.add_row("name", s.name)
    table.add_row("version", str(s.version))
    table.add_row("state", s.state)
    table.add_row("steps", str(s.steps))
    table.add_row("created", cell(s.created_at))
    table.add_row("updated", cell(s.updated_at))
    if s.waiting_for:
        table.add_row("waiting for", s.waiting_for)
    table.add_row("error", s.error or "-")
    return table


def _result_cell(e: JournalEntry) -> str:
    if e.status != "done":
        return "-"
    if e.kind == "now" and isinstance(e.result, float):  # journaled as Unix seconds
        return cell(e.result)
    return short(repr(e.result), 40)


def journal_table(entries: Sequence[JournalEntry]) -> Table:
    """The journal: steps in call order, then compensations, then finalizers."""
    table = Table(title=f"journal ({len(entries)})")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("key", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("result", no_wrap=True, overflow="ellipsis")
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    table.add_column("at", no_wrap=True)
    for e in entries:
        table.add_row(str(e.seq), e.key, e.kind, e.status, _result_cell(e), short(e.error),
                      cell(e.at))
    return table


# ---- running against a client-only member -------------------------------------


def _with_workflows(action: Callable[[Workflows], Awaitable[T]], *, as_json: bool,
                    control: bool = False) -> T:
    """Run ``action`` against a client-only member's workflows; a ClusterError exits 2."""
    return with_member(lambda cluster: action(cluster.workflows), as_json=as_json,
                       control_hint="a runner declaring the workflow must be up: "
                       "`covey run module:cluster`" if control else None)


def _timeout_option(default: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option("--timeout", default=default, show_default=True,
                        type=click.FloatRange(0, min_open=True), metavar="SECONDS",
                        help="How long to wait for the runner that owns the execution.")


# ---- commands -------------------------------------------------------------------


@click.group()
def workflows() -> None:
    """Workflow executions: list, show the journal, cancel, resume."""


@workflows.command("ls")
@click.option("--state", type=click.Choice(STATES), help="Only executions in this state.")
@click.option("--name", help="Only executions of this workflow.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000),
              help="At most this many executions.")
@json_option
def ls(state: str | None, name: str | None, limit: int, as_json: bool) -> None:
    """Executions, newest first: state, steps, and their error or what they wait for."""
    async def action(w: Workflows) -> list[WorkflowStatus]:
        return await w.list(state=state, name=name, limit=limit)

    found = _with_workflows(action, as_json=as_json)
    if as_json:
        emit({"workflows": [workflow_document(s) for s in found]})
    else:
        console().print(workflows_table(found, title=f"workflows ({len(found)})"))


@workflows.command()
@click.argument("workflow_id")
@json_option
def show(workflow_id: str, as_json: bool) -> None:
    """Where execution WORKFLOW_ID stands, and its journal (exit 2 with
    workflow_not_found if there is none)."""

    async def action(w: Workflows) -> tuple[WorkflowStatus, list[JournalEntry]]:
        return await w.status(workflow_id), await w.journal(workflow_id)

    status, journal = _with_workflows(action, as_json=as_json)
    if as_json:
        emit({**workflow_document(status), "journal": [entry_document(e) for e in journal]})
    else:
        console().print(status_table(status))
        console().print(journal_table(journal))


@workflows.command(short_help="Cancel an execution (needs a runner up).", help=(
    "Cancel execution WORKFLOW_ID: it stops at its next step or wait, the "
    "compensations of the steps it started and its finalizers run, and its "
    "children (not detached) are cancelled too. An ended execution is left as is. "
    "Waits (up to --timeout) for it to end, then prints its state. " + _NEEDS_RUNNERS
    + " A cancel no runner answered in time stays stored: it takes effect once a "
    "runner serves the execution."))
@click.argument("workflow_id")
@_timeout_option(30.0)
@json_option
def cancel(workflow_id: str, timeout: float, as_json: bool) -> None:
    final = _with_workflows(lambda w: w.cancel(workflow_id, timeout=timeout),
                            as_json=as_json, control=True)
    if as_json:
        emit(workflow_document(final))
    else:
        click.echo(f"workflow {workflow_id} ({final.name}) is {final.state}")


@workflows.command(short_help="Run a parked execution again (needs a runner up).", help=(
    "Run parked execution WORKFLOW_ID (failed_nondeterministic: its journal did "
    "not fit the code) again from its journal, with the code the runners have "
    "now. Any other state exits 2 with invalid_transition. " + _NEEDS_RUNNERS))
@click.argument("workflow_id")
@_timeout_option(10.0)
@json_option
def resume(workflow_id: str, timeout: float, as_json: bool) -> None:
    status = _with_workflows(lambda w: w.resume(workflow_id, timeout=timeout),
                             as_json=as_json, control=True)
    if as_json:
        emit(workflow_document(status))
    else:
        click.echo(f"workflow {workflow_id} ({status.name}) resumed: it is {status.state}")
