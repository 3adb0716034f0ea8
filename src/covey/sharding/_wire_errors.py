"""Errors as data: the one encoding of an error that leaves its process.

An error crosses a process boundary in three containers: the answer to a failed
request between messengers, a transport ``err`` frame, and a stored error reply
(a handler's failure, kept with its message). All three carry the same three
fields -- a reason, a message and plain details -- written by
:func:`error_fields` and read back by :func:`error_from_fields`. Only the
containers' key names differ, and they stay as they are: stored replies outlive
a version, and runners talk to each other while a cluster rolls.
"""

from __future__ import annotations

import contextlib
from typing import Any

from covey.core import ClusterError, EntityError, Reason, SerializationError, WorkflowError

#: the message of an error whose sender gave none (or no text)
NO_MESSAGE = "the peer reported an error without a message"


def error_fields(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """``(reason, message, details)`` of ``exc``, each plain enough for msgpack.

    A :class:`ClusterError` keeps its reason and details (values that are not
    plain become their text); any other exception is a ``handler_failed``
    without details.
    """
    if isinstance(exc, ClusterError):
        return exc.reason.value, str(exc), _plain(exc.details)
    return Reason.HANDLER_FAILED.value, str(exc), {}


def error_from_fields(
    reason: Any,
    message: Any,
    details: Any,
    *,
    fallback: Reason,
    kind: type[ClusterError] | None = None,
    **facts: Any,
) -> ClusterError:
    """The typed error :func:`error_fields` described (the fields come from outside).

    A reason this version does not know (or that is not text) becomes
    ``fallback``, a message that is not text a generic one, and details that are
    not a map are dropped.

    Args:
        reason: the reason's value.
        message: the error's text.
        details: its details.
        fallback: the reason when ``reason`` is unknown.
        kind: the class to raise; by default the one that goes with the reason
            (see :func:`error_for`).
        facts: details the receiver adds (e.g. the peer); the sender's win.
    """
    parsed = fallback
    if type(reason) is str:
        with contextlib.suppress(ValueError):
            parsed = Reason(reason)
    text = message if type(message) is str else NO_MESSAGE
    error = (kind or _class_for(parsed))(text, reason=parsed, **facts)
    if isinstance(details, dict):
        # Set after construction: a "reason" detail would clash with the
        # constructor's parameter of that name.
        error.details.update((str(k), v) for k, v in details.items())
    return error


def error_for(reason: Reason, message: str, details: dict[str, Any]) -> ClusterError:
    """The :class:`ClusterError` subclass that goes with ``reason``, built."""
    return error_from_fields(reason.value, message, details, fallback=reason)


def _class_for(reason: Reason) -> type[ClusterError]:
    if reason in (Reason.PAYLOAD_INVALID, Reason.PAYLOAD_UNKNOWN_TYPE):
        return SerializationError
    if reason in _WORKFLOW_REASONS:
        return WorkflowError
    return EntityError


_WORKFLOW_REASONS = frozenset({
    Reason.WORKFLOW_NOT_FOUND, Reason.WORKFLOW_FAILED, Reason.WORKFLOW_CANCELLED,
    Reason.WORKFLOW_FINISHED, Reason.UNKNOWN_WORKFLOW, Reason.NONDETERMINISM,
    Reason.TOKEN_INVALID,
})


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in details.items():
        if isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str | int) for v in value):
            out[key] = list(value)
        else:
            out[key] = str(value)
    return out
