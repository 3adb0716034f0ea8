"""The mutations an operator can make, each through the public Python API.

Every action names its fields; the app checks them (a bad one: 400), shows
:meth:`Action.describe` on a confirmation page, and only with ``confirm=yes``
calls :meth:`Action.perform`, whose outcome (or covey error) becomes the flash
message and the audit line.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from covey.dashboard._source import DashboardSource
from covey.dashboard._views import bad

Fields = Mapping[str, Any]


@dataclass(frozen=True)
class Action:
    """One mutation.

    Attributes:
        name: ``POST <root>/actions/<name>``.
        fields: field -> parser (raises ``ClusterError`` ``invalid_argument``);
            a parser given ``None`` returns the default of an optional field.
        describe: what will happen, in one sentence (the confirmation page).
        target: what it acts on (the audit line).
        perform: does it; returns the outcome (the flash message).
        back: the page to show afterwards, below the mount point.
    """

    name: str
    fields: Mapping[str, Callable[[str | None], Any]]
    describe: Callable[[Fields], str]
    target: Callable[[Fields], str]
    perform: Callable[[DashboardSource, Fields], Awaitable[str]]
    back: Callable[[Fields], str]

    def parse(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The checked fields of ``form`` (unknown fields are ignored)."""
        return {name: parse(form.get(name) or None) for name, parse in self.fields.items()}


def _id(field: str) -> Callable[[str | None], int]:
    def parse(value: str | None) -> int:
        if value is None or not value.isascii() or not value.isdigit() \
                or not 0 < int(value) < 2**63:
            raise bad(field, f"{field} must be a positive integer id")
        return int(value)
    return parse


def _name(field: str, *, optional: bool = False) -> Callable[[str | None], str | None]:
    def parse(value: str | None) -> str | None:
        if value is None:
            if optional:
                return None
            raise bad(field, f"{field} is required")
        if len(value) > 200:
            raise bad(field, f"{field} is longer than 200 characters")
        return value
    return parse


def _json(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as exc:
        raise bad("payload", f"the payload is not JSON: {exc}") from None


def _position(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise bad("from_position", "from_position must be an integer >= 0")
    return int(value)


def _time(value: str | None) -> float | None:
    """Unix seconds, or an ISO date and time (UTC unless it says otherwise)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad("from_time", "from_time must be Unix seconds or an ISO date and time") \
            from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _q(value: object) -> str:
    return quote(str(value), safe="")


# ---- jobs --------------------------------------------------------------------


async def _cancel_job(source: DashboardSource, f: Fields) -> str:
    status = await source.jobs.cancel(f["job_id"])
    return f"job {status.id} is {status.state}"


async def _retry_job(source: DashboardSource, f: Fields) -> str:
    handle = await source.jobs.retry_dead(f["job_id"])
    return f"job {handle.id} ({handle.name}) requeued from the dead-letter"


async def _purge_jobs(source: DashboardSource, f: Fields) -> str:
    n = await source.jobs.purge_dead(name=f["name"])
    return f"{n} dead job(s) deleted"


# ---- workflows ---------------------------------------------------------------


async def _signal(source: DashboardSource, f: Fields) -> str:
    await source.workflows.send(f["workflow_id"], f["topic"], f["payload"])
    return f"sent to {f['workflow_id']} on topic {f['topic']!r}"


async def _cancel_workflow(source: DashboardSource, f: Fields) -> str:
    status = await source.workflows.cancel(f["workflow_id"])
    return f"workflow {status.workflow_id} is {status.state}"


async def _resume(source: DashboardSource, f: Fields) -> str:
    status = await source.workflows.resume(f["workflow_id"])
    return f"workflow {status.workflow_id} resumed: {status.state}"


# ---- events and webhooks -----------------------------------------------------


async def _retry_event(source: DashboardSource, f: Fields) -> str:
    await source.events.retry_dead(f["message_id"])
    return f"delivery {f['message_id']} runs again"


async def _replay(source: DashboardSource, f: Fields) -> str:
    if (f["from_position"] is None) == (f["from_time"] is None):
        raise bad("from_position", "give from_position or from_time (one of them)")
    rows = await source.events.replay(f["group"], from_position=f["from_position"],
                                      from_time=f["from_time"])
    return f"group {f['group']} replays {len(rows)} topic(s)"


async def _purge_events(source: DashboardSource, f: Fields) -> str:
    n = await source.events.purge_dead(f["group"])
    return f"{n} dead deliveries of group {f['group']} deleted"


async def _replay_delivery(source: DashboardSource, f: Fields) -> str:
    delivery = await source.webhooks.replay(f["delivery_id"])
    return f"delivery {delivery.id} is {delivery.state}"


async def _purge_deliveries(source: DashboardSource, f: Fields) -> str:
    n = await source.webhooks.purge_dead(endpoint=f["endpoint_id"])
    return f"{n} dead deliveries of {f['endpoint_id']} deleted"


async def _enable(source: DashboardSource, f: Fields) -> str:
    found = await source.webhooks.enable(f["endpoint_id"])
    return f"endpoint {found.id} enabled"


async def _disable(source: DashboardSource, f: Fields) -> str:
    found = await source.webhooks.disable(f["endpoint_id"], reason="disabled from the dashboard")
    return f"endpoint {found.id} disabled"


def _jobs_page(f: Fields) -> str:
    return "/jobs?" + urlencode({"state": "dead", **({"name": f["name"]} if f["name"] else {})})


JOB, WF, EP = _id("job_id"), _name("workflow_id"), _name("endpoint_id")
ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("cancel-job", {"job_id": JOB},
           lambda f: f"Cancel job {f['job_id']}: if queued it never runs; if running it is "
                     "interrupted (cluster.jobs.cancel).",
           lambda f: f"job {f['job_id']}", _cancel_job, lambda f: f"/jobs/{f['job_id']}"),
    Action("retry-job", {"job_id": JOB},
           lambda f: f"Requeue dead job {f['job_id']} with its attempts reset "
                     "(cluster.jobs.retry_dead; a webhook delivery is replayed through "
                     "cluster.webhooks.replay, which keeps its earlier attempts).",
           lambda f: f"job {f['job_id']}", _retry_job, lambda f: f"/jobs/{f['job_id']}"),
    Action("purge-jobs", {"name": _name("name", optional=True)},
           lambda f: "Delete every dead job" + (f" named {f['name']!r}" if f["name"] else "")
                     + " for good (cluster.jobs.purge_dead; dead webhook deliveries through "
                       "cluster.webhooks.purge_dead).",
           lambda f: f"dead jobs {f['name'] or '(all names)'}", _purge_jobs, _jobs_page),
    Action("signal-workflow", {"workflow_id": WF, "topic": _name("topic"), "payload": _json},
           lambda f: f"Send {json.dumps(f['payload'])} to workflow {f['workflow_id']!r} on "
                     f"topic {f['topic']!r} (cluster.workflows.send).",
           lambda f: f"workflow {f['workflow_id']} topic {f['topic']}", _signal,
           lambda f: f"/workflows/{_q(f['workflow_id'])}"),
    Action("cancel-workflow", {"workflow_id": WF},
           lambda f: f"Cancel workflow {f['workflow_id']!r}: it stops at its next step or "
                     "wait; its compensations and finalizers run (cluster.workflows.cancel).",
           lambda f: f"workflow {f['workflow_id']}", _cancel_workflow,
           lambda f: f"/workflows/{_q(f['workflow_id'])}"),
    Action("resume-workflow", {"workflow_id": WF},
           lambda f: f"Run parked workflow {f['workflow_id']!r} again from its journal with "
                     "the code deployed now (cluster.workflows.resume).",
           lambda f: f"workflow {f['workflow_id']}", _resume,
           lambda f: f"/workflows/{_q(f['workflow_id'])}"),
    Action("retry-event", {"message_id": _id("message_id"), "group": _name("group")},
           lambda f: f"Run dead delivery {f['message_id']} of group {f['group']!r} again, "
                     "its attempts starting over (cluster.events.retry_dead).",
           lambda f: f"event delivery {f['message_id']}", _retry_event,
           lambda f: f"/events/{_q(f['group'])}"),
    Action("replay-group", {"group": _name("group"), "from_position": _position,
                            "from_time": _time},
           lambda f: f"Deliver again to group {f['group']!r} every retained event " + (
               f"after position {f['from_position']}" if f["from_position"] is not None
               else f"published from {f['from_time']}") + " (cluster.events.replay).",
           lambda f: f"event group {f['group']}", _replay,
           lambda f: f"/events/{_q(f['group'])}"),
    Action("purge-events", {"group": _name("group")},
           lambda f: f"Delete every dead delivery of group {f['group']!r} for good "
                     "(cluster.events.purge_dead).",
           lambda f: f"event group {f['group']}", _purge_events,
           lambda f: f"/events/{_q(f['group'])}"),
    Action("replay-delivery", {"delivery_id": _id("delivery_id"), "endpoint_id": EP},
           lambda f: f"Send dead webhook delivery {f['delivery_id']} again, same webhook-id, "
                     "a fresh schedule (cluster.webhooks.replay).",
           lambda f: f"webhook delivery {f['delivery_id']}", _replay_delivery,
           lambda f: f"/webhooks/{_q(f['endpoint_id'])}"),
    Action("purge-deliveries", {"endpoint_id": EP},
           lambda f: f"Delete every dead delivery of endpoint {f['endpoint_id']} for good "
                     "(cluster.webhooks.purge_dead).",
           lambda f: f"webhook endpoint {f['endpoint_id']}", _purge_deliveries,
           lambda f: f"/webhooks/{_q(f['endpoint_id'])}"),
    Action("enable-endpoint", {"endpoint_id": EP},
           lambda f: f"Send to endpoint {f['endpoint_id']} again (cluster.webhooks.enable).",
           lambda f: f"webhook endpoint {f['endpoint_id']}", _enable,
           lambda f: f"/webhooks/{_q(f['endpoint_id'])}"),
    Action("disable-endpoint", {"endpoint_id": EP},
           lambda f: f"Stop sending to endpoint {f['endpoint_id']}: new messages skip it, "
                     "pending retries are dead-lettered (cluster.webhooks.disable).",
           lambda f: f"webhook endpoint {f['endpoint_id']}", _disable,
           lambda f: f"/webhooks/{_q(f['endpoint_id'])}"),
)}
