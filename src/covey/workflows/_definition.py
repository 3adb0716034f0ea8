"""A declared workflow: its name, version, function and the types it takes and returns.

``@cluster.workflow(name, version=...)`` checks the declaration when it is made
(a bad one accepted here would only fail when the first execution runs).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from covey.core import MAX_ENTITY_ID_BYTES, MAX_NAME_BYTES, Reason, WorkflowError
from covey.core.runtime import check_text, invalid_argument, state_version

#: the entity type of every workflow execution (its id is the workflow id)
WORKFLOW_ENTITY = "covey.Workflow"
#: the tag of the message that is an execution (its reply is the outcome)
START_TAG = "start"
#: header of the start message: the workflow's name and version
NAME_HEADER = "covey-workflow"
VERSION_HEADER = "covey-workflow-version"
PARENT_HEADER = "covey-workflow-parent"
#: only on the copy of a start message its starter pushes right after storing it:
#: the execution cannot have a journal yet, so its runner does not read one first
FRESH_HEADER = "covey-workflow-fresh"
#: the payload model's version (``covey_version``) the start message was written with:
#: an older payload is brought up to date by the model's upcasters when it is read
PAYLOAD_VERSION_HEADER = "covey-workflow-payload-version"


@dataclass(frozen=True)
class Workflow:
    """A declared workflow (what ``@cluster.workflow`` returns).

    Attributes:
        name: unique in the cluster.
        version: an explicit version (an int >= 1), recorded with each execution.
        fn: ``async def fn(ctx: covey.WorkflowContext, payload) -> result``.
        payload_type: the payload's annotation (``Any`` without one).
        result_type: the return annotation (``Any`` without one).
    """

    name: str
    version: int
    fn: Callable[..., Awaitable[Any]]
    payload_type: Any
    result_type: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Call the function itself (a workflow is still a plain coroutine function)."""
        return self.fn(*args, **kwargs)


def check_workflow_name(name: object) -> str:
    """A workflow name: a non-empty string of at most 255 UTF-8 bytes, no NUL."""
    return check_text("name", name, max_bytes=MAX_NAME_BYTES)


def check_workflow_id(workflow_id: object) -> str:
    """A workflow id: a non-empty string of at most 1024 UTF-8 bytes, no NUL."""
    return check_text("workflow_id", workflow_id, max_bytes=MAX_ENTITY_ID_BYTES)


def workflow_spec(name: str, version: int, fn: Callable[..., Awaitable[Any]]) -> Workflow:
    """A checked :class:`Workflow`.

    Raises:
        ClusterError: ``invalid_argument`` naming the option (``details["field"]``)
            for a bad name, a version that is not an int >= 1, or a function that
            is not ``async def fn(ctx, payload)``.
    """
    check_workflow_name(name)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise invalid_argument("version", f"{version!r} is not an int >= 1")
    if not inspect.iscoroutinefunction(fn):
        raise invalid_argument("fn", f"workflow {name!r}: {fn!r} is not an async function")
    params = list(inspect.signature(fn).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) != 2 or any(p.kind not in positional for p in params):
        raise invalid_argument("fn", f"workflow {name!r}: the function takes (ctx, payload)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # an annotation that does not resolve
        raise invalid_argument("fn", f"workflow {name!r}: its annotations do not resolve: "
                               f"{exc}") from exc
    payload_type = hints.get(params[1].name, Any)
    state_version(payload_type)  # a bad covey_version is refused now
    return Workflow(name, version, fn, payload_type, hints.get("return", Any))


def payload_version(workflow: Workflow) -> int:
    """The version of ``workflow``'s payload model (1 for a type without one)."""
    return state_version(workflow.payload_type)


def unknown_workflow(name: str) -> WorkflowError:
    """No workflow of that name is declared here."""
    return WorkflowError(f"no workflow named {name!r} is declared",
                         reason=Reason.UNKNOWN_WORKFLOW, name=name)
