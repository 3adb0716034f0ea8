"""Durable workflows and sagas: journaled steps, durable sleep, signals, children.

A workflow is an ``async`` function of a :class:`WorkflowContext` and a
payload, declared with ``@cluster.workflow(name, version=...)``. An execution
is a persisted message to the entity ``covey.Workflow/<workflow id>`` whose
reply is its outcome, plus a journal in the state store: the function re-runs
from the top whenever its execution runs (after a crash, a pod move, a durable
wait) and every step it already took returns its journaled result without
acting again. See ``docs/workflows.md``.
"""

from covey.workflows._context import Awakeable, ChildHandle, StepCall, WorkflowContext
from covey.workflows._definition import Workflow
from covey.workflows._workflows import (
    JournalEntry,
    WorkflowHandle,
    Workflows,
    WorkflowStatus,
)

__all__ = [
    "Awakeable",
    "ChildHandle",
    "JournalEntry",
    "StepCall",
    "Workflow",
    "WorkflowContext",
    "WorkflowHandle",
    "WorkflowStatus",
    "Workflows",
]
