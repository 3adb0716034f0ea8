"""What covey's own layers build with; not for applications.

Argument checks, shard hashing, payload validation, the clock helpers, the
upcaster chains of stored versions (:func:`state_version`, :func:`upcast`,
:func:`check_upcasters`), the :class:`TaskSet` that owns a runner's
background tasks and the OpenTelemetry helpers (:func:`producer_span`,
:func:`consumer_span`, :func:`inject_trace`, … — see ``docs/tracing.md``).
Everything an application writes is in :mod:`covey.core` (and :mod:`covey`).
"""

from covey.core._checks import check_seconds, invalid_argument
from covey.core._clock import being_cancelled, sleep_or_wake
from covey.core._ids import check_text, shard_for, stable_hash
from covey.core._lifespan import answer_lifespan
from covey.core._logs import configure_from_options, log_context, note_runner
from covey.core._serialization import codec_for, to_plain, validate, validate_value
from covey.core._tasks import TaskSet
from covey.core._tracing import (
    SpanHandle,
    consumer_span,
    extract_trace,
    http_span,
    inject_trace,
    internal_span,
    producer_span,
    traced_context,
    tracing_enabled,
    use_tracer_provider,
)
from covey.core._upcasting import check_upcasters, state_version, upcast

__all__ = [
    "SpanHandle",
    "TaskSet",
    "answer_lifespan",
    "being_cancelled",
    "check_seconds",
    "check_text",
    "check_upcasters",
    "codec_for",
    "configure_from_options",
    "consumer_span",
    "extract_trace",
    "http_span",
    "inject_trace",
    "internal_span",
    "invalid_argument",
    "log_context",
    "note_runner",
    "producer_span",
    "shard_for",
    "sleep_or_wake",
    "stable_hash",
    "state_version",
    "to_plain",
    "traced_context",
    "tracing_enabled",
    "upcast",
    "use_tracer_provider",
    "validate",
    "validate_value",
]
