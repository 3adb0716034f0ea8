"""Replay a recorded journal against the workflow's current code (CI's safety net).

``covey.testing.replay(workflow, payload, journal)`` runs the workflow function
over a journal recorded from a real execution (``cluster.workflows.journal(id)``,
kept as a test fixture): every operation must find its entry, in order, with the
same key. Nothing acts: no step runs, nothing is stored; the replay stops where
the journal ends. A change that would strand in-flight executions (a step added
without ``ctx.patched``, renamed, reordered) fails here with ``nondeterminism``
instead of in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from covey.core import (
    EntityAddress,
    MsgpackCodec,
    Reason,
    ShardId,
    SystemClock,
    WorkflowError,
)
from covey.core.runtime import validate_value
from covey.storage import Fence, Message
from covey.workflows._definition import START_TAG, WORKFLOW_ENTITY, Workflow
from covey.workflows._execution import Execution, ReplayEnd
from covey.workflows._journal import Entry, Journal
from covey.workflows._workflows import JournalEntry


@dataclass(frozen=True)
class ReplayReport:
    """What a replay found.

    Attributes:
        outcome: ``completed`` or ``failed`` (the journal covers the whole run), or
            ``journal_end`` (the run goes on past the recorded journal: fine, a
            journal of an execution still under way).
        matched: journal entries the code reached, in order.
    """

    outcome: str
    matched: int


class _ReplayHost:
    """Stands in for a runner: a replay never writes, so nothing here is reached."""

    def __init__(self) -> None:
        self.clock = SystemClock()

    def __getattr__(self, name: str) -> Any:
        raise ReplayEnd()


def _entry(raw: JournalEntry | Mapping[str, Any]) -> tuple[int, Entry]:
    data = raw.__dict__ if isinstance(raw, JournalEntry) else dict(raw)
    error = data.get("error")
    parsed = None
    if isinstance(error, str):
        kind, _, message = error.partition(": ")
        parsed = {"error_type": kind, "message": message}
    elif isinstance(error, dict):
        parsed = {str(k): str(v) for k, v in error.items()}
    return int(data["seq"]), Entry(str(data["key"]), str(data["kind"]), str(data["status"]),
                                   data.get("result"), parsed, data.get("at"))


async def replay(workflow: Workflow, payload: Any,
                 journal: Sequence[JournalEntry | Mapping[str, Any]]) -> ReplayReport:
    """Run ``workflow``'s current code over a recorded ``journal`` (see the module).

    ``journal``: the entries ``cluster.workflows.journal(id)`` returned, or their
    dicts (``dataclasses.asdict``; JSON-friendly for a fixture file).

    Raises:
        WorkflowError: ``nondeterminism`` naming the entry that does not fit.
    """
    codec = MsgpackCodec()
    shard = ShardId("default", 1)
    start = Message(1, EntityAddress(WORKFLOW_ENTITY, "replay", shard), START_TAG,
                    codec.encode(validate_value(payload, workflow.payload_type)))
    execution = Execution(_ReplayHost(), workflow, start, Fence(shard, 0),  # type: ignore[arg-type]
                          asyncio.Lock(), codec)
    entries = dict(_entry(e) for e in journal)
    execution.journal = Journal(workflow.name, workflow.version, 1, 0.0, entries=dict(entries))
    execution.replay_only = True
    try:
        outcome = await execution._run_body()
    except ReplayEnd:
        return ReplayReport("journal_end", _reached(execution, entries))
    if outcome.state == "failed_nondeterministic" and outcome.error is not None:
        raise outcome.error
    if outcome.state == "waiting":
        return ReplayReport("journal_end", _reached(execution, entries))
    if outcome.error is not None and isinstance(outcome.error, WorkflowError) and \
            outcome.error.reason is Reason.INVALID_ARGUMENT:
        raise outcome.error
    return ReplayReport(outcome.state, _reached(execution, entries))


def _reached(execution: Execution, entries: Mapping[int, Entry]) -> int:
    return sum(1 for seq in entries if 0 < seq <= execution.seq)
