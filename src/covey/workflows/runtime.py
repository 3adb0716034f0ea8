"""What the assembly builds a runner's workflows from (not for applications)."""

from covey.workflows._definition import WORKFLOW_ENTITY, workflow_spec
from covey.workflows._replay import ReplayReport, replay
from covey.workflows._runner import WorkflowRunner

__all__ = ["ReplayReport", "WORKFLOW_ENTITY", "WorkflowRunner", "replay", "workflow_spec"]
