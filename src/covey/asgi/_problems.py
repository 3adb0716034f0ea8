"""covey's errors as HTTP answers: RFC 9457 ``application/problem+json``.

Every :class:`~covey.core.Reason` has one documented status in :data:`STATUS`::

    4xx  the caller can fix the request      payload_invalid 422, invalid_argument 400,
                                             message_not_found / job_not_found /
                                             workflow_not_found / webhook_endpoint_not_found /
                                             webhook_delivery_not_found 404,
                                             webhook_signature_invalid /
                                             webhook_timestamp_invalid 401,
                                             webhook_target_refused 400, token_invalid 403,
                                             idempotency_conflict / invalid_transition /
                                             already_processed / job_dead / job_cancelled /
                                             workflow_failed / workflow_cancelled /
                                             workflow_finished / nondeterminism 409,
                                             frame_too_large 413
    503  try again later (``Retry-After``)   storage_unavailable, peer_unavailable, not_owner,
                                             mailbox_full, shutting_down, version_conflict,
                                             fenced
    504  the call's deadline passed          timeout (also with ``Retry-After``)
    502  a peer failed while answering       remote_failure
    500  a fault of the server or its code   everything else (config, schema, handlers)

The body carries ``type`` (``urn:covey:reason:<reason>``), ``title``, ``status``,
``detail`` (the error's message), ``reason``, ``message``, ``details`` (the
error's structured facts) and ``request_id`` (a string, like every id covey puts
in JSON). For 500 and 502 the message and details stay in the server's log
unless the application opts in (``expose_internal=True``): they may describe
internals the caller has no business seeing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from covey.asgi._json import json_safe
from covey.core import ClusterError, Reason, current_context

log = logging.getLogger("covey.asgi")

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:covey:reason:"


@dataclass(frozen=True)
class HttpStatus:
    """How one reason is answered: the status, and ``Retry-After`` seconds if any."""

    status: int
    retry_after: int | None = None


_RETRY = 1  # seconds: ownership moves and restarts settle within about a second

STATUS: dict[Reason, HttpStatus] = {
    # the caller sent something covey refuses
    Reason.PAYLOAD_INVALID: HttpStatus(422),
    Reason.PAYLOAD_UNKNOWN_TYPE: HttpStatus(422),
    Reason.INVALID_ARGUMENT: HttpStatus(400),
    Reason.FRAME_TOO_LARGE: HttpStatus(413),
    # what the caller names does not exist
    Reason.MESSAGE_NOT_FOUND: HttpStatus(404),
    Reason.JOB_NOT_FOUND: HttpStatus(404),
    Reason.WORKFLOW_NOT_FOUND: HttpStatus(404),
    Reason.WEBHOOK_ENDPOINT_NOT_FOUND: HttpStatus(404),
    Reason.WEBHOOK_DELIVERY_NOT_FOUND: HttpStatus(404),
    # a forged or garbled awakeable token
    Reason.TOKEN_INVALID: HttpStatus(403),
    # a received webhook that does not verify; a target address covey refuses
    Reason.WEBHOOK_SIGNATURE_INVALID: HttpStatus(401),
    Reason.WEBHOOK_TIMESTAMP_INVALID: HttpStatus(401),
    Reason.WEBHOOK_TARGET_REFUSED: HttpStatus(400),
    # real-time: a refused stream or connection, a malformed cursor or frame
    Reason.STREAM_FORBIDDEN: HttpStatus(403),
    Reason.FORBIDDEN: HttpStatus(403),
    Reason.UNAUTHENTICATED: HttpStatus(401),
    Reason.CURSOR_INVALID: HttpStatus(400),
    Reason.FRAME_INVALID: HttpStatus(400),
    Reason.RATE_LIMITED: HttpStatus(429, _RETRY),
    Reason.SLOW_CONSUMER: HttpStatus(503, _RETRY),
    # the request conflicts with the current state
    Reason.IDEMPOTENCY_CONFLICT: HttpStatus(409),
    Reason.INVALID_TRANSITION: HttpStatus(409),
    Reason.ALREADY_PROCESSED: HttpStatus(409),
    Reason.JOB_DEAD: HttpStatus(409),
    Reason.JOB_CANCELLED: HttpStatus(409),
    Reason.WORKFLOW_FAILED: HttpStatus(409),
    Reason.WORKFLOW_CANCELLED: HttpStatus(409),
    Reason.WORKFLOW_FINISHED: HttpStatus(409),
    Reason.NONDETERMINISM: HttpStatus(409),
    # retryable: the same request may succeed shortly
    Reason.STORAGE_UNAVAILABLE: HttpStatus(503, 2),
    Reason.PEER_UNAVAILABLE: HttpStatus(503, _RETRY),
    Reason.NOT_OWNER: HttpStatus(503, _RETRY),
    Reason.MAILBOX_FULL: HttpStatus(503, _RETRY),
    Reason.SHUTTING_DOWN: HttpStatus(503, _RETRY),
    Reason.VERSION_CONFLICT: HttpStatus(503, _RETRY),
    Reason.FENCED: HttpStatus(503, _RETRY),
    Reason.TIMEOUT: HttpStatus(504, _RETRY),
    # a peer runner failed while answering
    Reason.REMOTE_FAILURE: HttpStatus(502),
    # the server's configuration, schema or code is at fault
    Reason.CONFIG_INVALID: HttpStatus(500),
    Reason.STORAGE_CORRUPT: HttpStatus(500),
    Reason.SHARD_COUNT_MISMATCH: HttpStatus(500),
    Reason.MIGRATION_FAILED: HttpStatus(500),
    Reason.AUTH_FAILED: HttpStatus(500),
    Reason.UNKNOWN_ENTITY_TYPE: HttpStatus(500),
    Reason.UNKNOWN_RPC: HttpStatus(500),
    Reason.HANDLER_FAILED: HttpStatus(500),
    Reason.STATE_VERSION_UNKNOWN: HttpStatus(500),
    Reason.STATE_READ_ONLY: HttpStatus(500),
    Reason.UNKNOWN_WORKFLOW: HttpStatus(500),
}
"""The HTTP status (and ``Retry-After``) of every reason; see the module docstring."""

_TITLES = {
    400: "Bad Request", 404: "Not Found", 409: "Conflict", 413: "Content Too Large",
    422: "Unprocessable Content", 500: "Internal Server Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}
_HIDDEN = "the server failed to answer this request; its log has the details"


@dataclass(frozen=True)
class Problem:
    """One error as an HTTP answer: status, headers and the problem+json body."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    def encode(self) -> bytes:
        """The body as JSON bytes (ids beyond 2^53 as strings, see ``json_safe``)."""
        return json.dumps(json_safe(self.body), default=str, ensure_ascii=False).encode()


def status_of(reason: Reason) -> HttpStatus:
    """The documented answer to ``reason`` (500 for a reason without one)."""
    return STATUS.get(reason, HttpStatus(500))


def problem_for(error: ClusterError, *, request_id: str | None = None,
                expose_internal: bool = False) -> Problem:
    """The RFC 9457 answer to ``error``.

    Args:
        error: any covey error.
        request_id: the request's id; default the current request context's.
        expose_internal: also show the message and details of 500 and 502
            answers (development).
    """
    answer = status_of(error.reason)
    if request_id is None:
        request_id = current_context().request_id
    hidden = answer.status in (500, 502) and not expose_internal
    message = _HIDDEN if hidden else str(error)
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + error.reason.value,
        "title": _TITLES.get(answer.status, "Error"),
        "status": answer.status,
        "detail": message,
        "reason": error.reason.value,
        "message": message,
        "details": {} if hidden else dict(error.details),
        "request_id": request_id,
    }
    headers = {"content-type": PROBLEM_CONTENT_TYPE, "cache-control": "no-store"}
    if answer.retry_after is not None:
        headers["retry-after"] = str(answer.retry_after)
    return Problem(answer.status, headers, body)


def log_problem(error: ClusterError, problem: Problem) -> None:
    """Server faults with their traceback; retryable answers briefly; caller errors not."""
    if problem.status in (500, 502):
        log.error("request %s failed: %s (%s)", problem.body["request_id"], error,
                  error.reason.value, exc_info=error)
    elif problem.status >= 503:
        log.info("request %s answered %d: %s (%s)", problem.body["request_id"],
                 problem.status, error, error.reason.value)
