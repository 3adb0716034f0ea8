"""The one error tree of covey.

Every error covey raises is a :class:`ClusterError`. Callers match on
``error.reason`` (a :class:`Reason`), never on the message text. The subclasses
exist so ``except`` clauses can be narrow where that reads better::

    ClusterError                     reason
    ├── ConfigError                  config_invalid
    ├── SerializationError           payload_invalid, payload_unknown_type
    ├── StorageError                 storage_unavailable, storage_corrupt,
    │                                invalid_argument (the database refused the data)
    │   ├── ShardCountMismatch       shard_count_mismatch
    │   ├── MigrationError           migration_failed
    │   ├── FencedOut                fenced
    │   ├── MessageNotFound          message_not_found
    │   ├── AlreadyProcessed         already_processed
    │   └── VersionConflict          version_conflict
    ├── TransportError               peer_unavailable, timeout, frame_too_large,
    │                                auth_failed, remote_failure
    ├── EntityError                  unknown_entity_type, unknown_rpc, not_owner,
    │                                mailbox_full, handler_failed, shutting_down,
    │                                timeout, idempotency_conflict, invalid_transition,
    │                                state_version_unknown, state_read_only
    ├── JobError                     job_not_found, job_dead, job_cancelled
    ├── WorkflowError                workflow_not_found, workflow_failed,
    │                                workflow_cancelled, workflow_finished,
    │                                unknown_workflow, nondeterminism, token_invalid
    ├── WebhookError                 webhook_endpoint_not_found, webhook_delivery_not_found,
    │                                webhook_target_refused, webhook_signature_invalid,
    │                                webhook_timestamp_invalid
    └── RealtimeError                stream_forbidden, cursor_invalid, slow_consumer,
                                     unauthenticated, forbidden, rate_limited, frame_invalid
                                     (and unknown_rpc, frame_too_large, invalid_argument)

``retryable`` tells a caller whether trying the same call again later may succeed.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a :class:`ClusterError` was raised. Stable: callers match on it."""

    CONFIG_INVALID = "config_invalid"
    PAYLOAD_INVALID = "payload_invalid"
    PAYLOAD_UNKNOWN_TYPE = "payload_unknown_type"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    STORAGE_CORRUPT = "storage_corrupt"
    SHARD_COUNT_MISMATCH = "shard_count_mismatch"
    MIGRATION_FAILED = "migration_failed"
    FENCED = "fenced"
    MESSAGE_NOT_FOUND = "message_not_found"
    ALREADY_PROCESSED = "already_processed"
    VERSION_CONFLICT = "version_conflict"
    INVALID_ARGUMENT = "invalid_argument"
    PEER_UNAVAILABLE = "peer_unavailable"
    TIMEOUT = "timeout"
    FRAME_TOO_LARGE = "frame_too_large"
    AUTH_FAILED = "auth_failed"
    REMOTE_FAILURE = "remote_failure"
    UNKNOWN_ENTITY_TYPE = "unknown_entity_type"
    UNKNOWN_RPC = "unknown_rpc"
    NOT_OWNER = "not_owner"
    MAILBOX_FULL = "mailbox_full"
    HANDLER_FAILED = "handler_failed"
    SHUTTING_DOWN = "shutting_down"
    JOB_NOT_FOUND = "job_not_found"
    JOB_DEAD = "job_dead"
    JOB_CANCELLED = "job_cancelled"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    INVALID_TRANSITION = "invalid_transition"
    STATE_VERSION_UNKNOWN = "state_version_unknown"
    STATE_READ_ONLY = "state_read_only"
    WORKFLOW_NOT_FOUND = "workflow_not_found"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    WORKFLOW_FINISHED = "workflow_finished"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    NONDETERMINISM = "nondeterminism"
    TOKEN_INVALID = "token_invalid"
    WEBHOOK_ENDPOINT_NOT_FOUND = "webhook_endpoint_not_found"
    WEBHOOK_DELIVERY_NOT_FOUND = "webhook_delivery_not_found"
    WEBHOOK_TARGET_REFUSED = "webhook_target_refused"
    WEBHOOK_SIGNATURE_INVALID = "webhook_signature_invalid"
    WEBHOOK_TIMESTAMP_INVALID = "webhook_timestamp_invalid"
    STREAM_FORBIDDEN = "stream_forbidden"
    CURSOR_INVALID = "cursor_invalid"
    SLOW_CONSUMER = "slow_consumer"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    FRAME_INVALID = "frame_invalid"


_RETRYABLE = frozenset({
    Reason.STORAGE_UNAVAILABLE,
    Reason.VERSION_CONFLICT,
    Reason.PEER_UNAVAILABLE,
    Reason.TIMEOUT,
    Reason.NOT_OWNER,
    Reason.MAILBOX_FULL,
    Reason.SHUTTING_DOWN,
    Reason.RATE_LIMITED,
    Reason.SLOW_CONSUMER,
})


class ClusterError(Exception):
    """Base of every error covey raises.

    Attributes:
        reason: the machine-readable cause; match on this.
        details: extra structured facts (field names, ids, expected values).
    """

    default_reason: Reason = Reason.INVALID_ARGUMENT

    def __init__(
        self, message: str, /, *, reason: Reason | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.reason: Reason = reason if reason is not None else self.default_reason
        self.details: dict[str, Any] = details

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed if tried again later."""
        return self.reason in _RETRYABLE

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, reason={self.reason.value!r})"


class ConfigError(ClusterError):
    """A setting is missing, malformed or contradicts another one."""

    default_reason = Reason.CONFIG_INVALID


class SerializationError(ClusterError):
    """A payload could not be encoded or decoded into its declared type.

    ``details["fields"]`` lists the offending field paths (``"items.0.amount"``)
    when the payload was structurally valid but failed validation.
    """

    default_reason = Reason.PAYLOAD_INVALID


class StorageError(ClusterError):
    """The storage backend failed or refused an operation."""

    default_reason = Reason.STORAGE_UNAVAILABLE


class ShardCountMismatch(StorageError):
    """The configured shard count differs from the one recorded in storage."""

    default_reason = Reason.SHARD_COUNT_MISMATCH


class MigrationError(StorageError):
    """A schema migration could not be applied."""

    default_reason = Reason.MIGRATION_FAILED


class FencedOut(StorageError):
    """A completion write carried a shard epoch that is no longer current.

    The shard was acquired by another runner (or re-acquired) since; the writer
    must stop serving the shard. Nothing was written.
    """

    default_reason = Reason.FENCED


class MessageNotFound(StorageError):
    """No stored message has the given id."""

    default_reason = Reason.MESSAGE_NOT_FOUND


class AlreadyProcessed(StorageError):
    """The message already has a reply; a second one is refused."""

    default_reason = Reason.ALREADY_PROCESSED


class VersionConflict(StorageError):
    """A compare-and-set found another version than the one expected."""

    default_reason = Reason.VERSION_CONFLICT


class TransportError(ClusterError):
    """A runner-to-runner call failed below the application level.

    ``peer_unavailable`` (connection refused or lost; retryable), ``timeout``,
    ``frame_too_large`` (the frame exceeds the configured limit), ``auth_failed``
    (the peer's cluster secret differs), ``remote_failure`` (the peer's handler
    crashed while answering).
    """

    default_reason = Reason.PEER_UNAVAILABLE


class EntityError(ClusterError):
    """An entity call failed.

    ``details`` carries ``entity_type``, ``entity_id`` and, for a handler that
    raised, ``error_type`` (the remote exception's class name) and the message.
    """

    default_reason = Reason.HANDLER_FAILED


class JobError(ClusterError):
    """A job could not be found, was dead-lettered or was cancelled.

    ``details`` carries ``job_id`` and, for a dead job, ``error`` (the last failure).
    """

    default_reason = Reason.JOB_NOT_FOUND


class WorkflowError(ClusterError):
    """A workflow could not be found, failed, was cancelled or does not fit its journal.

    ``details`` carries ``workflow_id``; a failed one also ``error_type``,
    ``message``, ``compensation_errors`` and ``state``; a nondeterministic one
    ``expected`` (what the journal holds) and ``found`` (what the code did).
    """

    default_reason = Reason.WORKFLOW_NOT_FOUND


class WebhookError(ClusterError):
    """A webhook endpoint or delivery is unknown, a target address is refused, or a
    received webhook does not verify.

    ``webhook_target_refused``: the endpoint's address is loopback, private,
    link-local, a metadata address (or resolves to one) and private targets are
    not allowed; ``details`` carries ``address`` and ``url`` (when a URL was
    checked) or ``host`` (when a connection was about to be made).
    ``webhook_signature_invalid`` / ``webhook_timestamp_invalid``: a received
    webhook's headers are missing or malformed, no signature matches, or its
    timestamp is outside the tolerance.
    """

    default_reason = Reason.WEBHOOK_ENDPOINT_NOT_FOUND


class RealtimeError(ClusterError):
    """A stream, SSE or WebSocket request is refused, or a client fell behind.

    ``stream_forbidden``: the authorization hook refused the stream (HTTP 403,
    WebSocket close 4403). ``cursor_invalid``: a ``Last-Event-ID`` / ``after``
    cursor is malformed. ``slow_consumer``: a subscriber's bounded buffer
    overflowed; it was closed and resumes from its last id. ``unauthenticated``
    (HTTP 401, close 4401) / ``forbidden`` (HTTP 403, close 4403): the auth
    middleware refused the connection. ``rate_limited``: a connection sent more
    than its rate limit. ``frame_invalid``: a WebSocket frame could not be decoded
    or does not match the contract (an error frame; the socket stays open).
    ``unknown_rpc``: the frame names no method of the contract. ``frame_too_large``:
    a frame exceeds the size limit. ``invalid_argument``: a stream name or option is
    malformed.
    """

    default_reason = Reason.INVALID_ARGUMENT
