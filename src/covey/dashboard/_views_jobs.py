"""The jobs views: counts by name, one page of jobs, one job's attempts and errors.

The overview never builds a :class:`~covey.JobStatus` per job: the counts come
from ``storage.inspection.tag_counts`` (each capped) and the list is one page of
stored records (keyset ``before``), their state read from the record itself.
Only the page of one job asks ``cluster.jobs.status``.
"""

from __future__ import annotations

from typing import Any

from covey.core import MsgpackCodec
from covey.dashboard._render import COUNT_CAP, PAGE
from covey.dashboard._source import DashboardSource, inspection_of
from covey.dashboard._views import Params, View, choice, positive, text
from covey.jobs.runtime import JOB_ENTITY, error_history
from covey.storage import MessageRecord

STATES = ("queued", "running", "dead", "done")
_codec = MsgpackCodec()


def job_row(record: MessageRecord, now: float) -> dict[str, Any]:
    """A job as the list shows it, from its stored record alone (no round trip)."""
    m = record.message
    errors = error_history(record.last_error)
    attempts = max(m.starts, m.failures)
    if record.reply is not None:
        try:
            outcome: dict[str, Any] = _codec.decode(record.reply.payload, dict[str, Any])
        except Exception:
            outcome = {}
        attempts = int(outcome.get("attempt") or attempts)
        if record.reply.is_error:
            state = "dead"
            errors = [str(e) for e in outcome.get("errors") or [outcome.get("error")]]
        else:
            state = "cancelled" if outcome.get("state") == "cancelled" else "succeeded"
    elif (record.lease_until is not None and record.lease_until > now) or m.starts > m.failures:
        state = "running"  # leased, or a run began (pushed jobs take no lease) and is not over
    elif m.deliver_at is not None and m.deliver_at > now:
        state = "failed" if m.failures else "scheduled"
    else:
        state = "queued"
    return {"id": m.id, "name": m.tag, "state": state, "attempts": attempts,
            "error": errors[-1] if errors else None, "created": record.created_at,
            "finished": record.processed_at, "scheduled": m.deliver_at}


async def jobs(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """Queued / running / dead by name (capped counts) and one page of jobs."""
    name = text(params, "name")
    state = choice(params, "state", STATES)
    before = positive(params, "before")
    inspection = inspection_of(source.storage)
    counts = await inspection.tag_counts(JOB_ENTITY, now=now, cap=COUNT_CAP)
    if state in ("queued", "running"):
        records = await inspection.pending_messages(JOB_ENTITY, tag=name, limit=PAGE,
                                                    before_id=before)
    elif state == "dead":
        records = await inspection.dead_messages(JOB_ENTITY, tag=name, limit=PAGE,
                                                 before_id=before)
    else:
        records = await source.storage.messages.list_messages(
            JOB_ENTITY, state="processed" if state == "done" else None, tag=name, limit=PAGE,
            before_id=before)
    rows = [job_row(r, now) for r in records]
    if state in ("queued", "running"):  # a page of unprocessed ones, of that state
        rows = [r for r in rows if r["state"] == state
                or (state == "queued" and r["state"] in ("scheduled", "failed"))]
    older = records[-1].message.id if len(records) >= PAGE else None
    return {"title": "Jobs", "counts": counts, "cap": COUNT_CAP, "rows": rows,
            "filters": {"name": name or "", "state": state or ""}, "states": STATES,
            "older": older, "before": before}


async def job(source: DashboardSource, params: Params, now: float) -> dict[str, Any]:
    """One job: its state, attempts, every error, progress and result."""
    job_id = positive(params, "id")
    if job_id is None:
        return await jobs(source, params, now)
    status = await source.jobs.status(job_id)
    return {"title": f"Job {job_id}", "job": status,
            "errors": list(enumerate(status.errors, start=1)),
            "can_retry": status.state == "dead",
            "can_cancel": status.state in ("queued", "scheduled", "running", "failed")}


VIEWS = [View("jobs", "jobs", jobs), View("job", "jobs", job)]
