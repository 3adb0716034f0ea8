"""The workflows views: executions with filters, one execution's journal as a timeline.

The list is one page of start messages (keyset ``before``), newest first, each
execution's status read from its journal (one state read per row). A filter
scans at most :data:`FILTER_SCAN` starts per page.
"""

from __future__ import annotations

from typing import Any

from covey.core import ClusterError
from covey.dashboard._render import PAGE
from covey.dashboard._source import DashboardSource
from covey.dashboard._views import Params, View, choice, positive, text
from covey.workflows.runtime import WORKFLOW_ENTITY

STATES = ("pending", "running", "waiting", "completed", "compensated", "failed", "cancelled",
          "failed_nondeterministic")
#: as covey.workflows stores an execution's start (tests check they agree)
START_TAG = "start"
NAME_HEADER = "covey-workflow"
#: start messages read, at most, for one filtered page
FILTER_SCAN = 4 * PAGE


async def workflows(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """A page of executions (newest first), optionally of one name and state."""
    name = text(params, "name")
    state = choice(params, "state", STATES)
    before = positive(params, "before")
    filtered = name is not None or state is not None
    rows: list[Any] = []
    scanned = 0
    older = None
    cursor = before
    while len(rows) < PAGE and scanned < (FILTER_SCAN if filtered else PAGE):
        records = await source.storage.messages.list_messages(
            WORKFLOW_ENTITY, tag=START_TAG, limit=PAGE, before_id=cursor)
        for record in records:
            scanned += 1
            cursor = record.message.id
            if name is not None and record.message.headers.get(NAME_HEADER) != name:
                continue
            try:
                status = await source.workflows.status(record.message.address.entity_id)
            except ClusterError:
                continue  # purged meanwhile
            if state is None or status.state == state:
                rows.append(status)
            if len(rows) >= PAGE:
                break
        older = cursor if len(records) >= PAGE or len(rows) >= PAGE else None
        if len(records) < PAGE:
            break
    return {"title": "Workflows", "rows": rows, "states": STATES, "older": older,
            "filters": {"name": name or "", "state": state or ""}, "before": before}


async def workflow(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """One execution: status, its journal as a timeline, signal / cancel / resume."""
    workflow_id = params.get("id", "")
    status = await source.workflows.status(workflow_id)
    journal = await source.workflows.journal(workflow_id)
    first = min((e.at for e in journal if e.at is not None), default=None)
    return {"title": f"Workflow {workflow_id}", "workflow": status, "journal": journal,
            "first": first, "can_cancel": not status.done,
            "can_resume": status.state == "failed_nondeterministic"}


VIEWS = [View("workflows", "workflows", workflows),
         View("workflow", "workflows", workflow, forms="forms/workflow.html")]

